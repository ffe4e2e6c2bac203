"""Regression tests for problems found in review, each against a real database."""

from __future__ import annotations

import copy
import logging

import pytest

from backends import Backend, query
from flask_dbpool import ConfigError, Pool, PooledConnection, PoolError

# ------------------------------------------------------------------ passwords in URLs


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:Zm9v/YmFy@127.0.0.1:1/prod",  # '/' as in base64 passwords
        "postgresql://app:ab#cd@127.0.0.1:1/prod",
        "postgresql://app:12?cd@127.0.0.1:1/prod",
        "mysql://app:Zm9v/YmFy@127.0.0.1:1/prod",
    ],
)
def test_unescaped_special_characters_in_password_are_rejected_without_leaking(url: str) -> None:
    secret = url.split(":")[2].split("@")[0]
    with pytest.raises(ConfigError, match="percent-encode") as info:
        Pool(url)
    assert secret not in str(info.value)


def test_secret_query_options_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        pool = Pool("postgresql://u:pw1@127.0.0.1:1/db?sslpassword=TOPSECRET&password=PW2")
        text = repr(pool) + pool.target
        pool.close()
    text += caplog.text
    for secret in ("TOPSECRET", "PW2", "pw1"):
        assert secret not in text
    assert "sslpassword=***" in text


# ------------------------------------------------------------------ failed transactions


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_error_inside_with_block_rolls_back_even_if_flag_says_idle(
    backend: Backend, make_pool: type[Pool]
) -> None:
    """A failed INSERT opens a transaction (and row locks) that some drivers' flags miss."""
    table = backend.new_table()
    backend.admin_query(f"INSERT INTO {table} (id, v) VALUES (1, 'x')")
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    with pytest.raises(Exception, match=r"(?i)duplicate"), pool.connection() as conn:
        query(conn, backend.sql(f"INSERT INTO {table} (id, v) VALUES (2, 'y')"))
        query(conn, backend.sql(f"INSERT INTO {table} (id, v) VALUES (1, 'dup')"))
    # The uncommitted row 2 must be gone, and no lock left: an admin insert of 2 succeeds.
    backend.admin_query(f"INSERT INTO {table} (id, v) VALUES (2, 'admin')")
    assert backend.count_rows(table) == 2


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_pymysql_failed_statement_after_commit_is_rolled_back_on_release(
    backend: Backend, make_pool: type[Pool]
) -> None:
    table = backend.new_table()
    backend.admin_query(f"INSERT INTO {table} (id, v) VALUES (1, 'x')")
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    conn = pool.acquire()
    query(conn, f"INSERT INTO {table} (id, v) VALUES (2, 'y')")
    conn.commit()
    with pytest.raises(Exception, match="Duplicate"):
        query(conn, f"INSERT INTO {table} (id, v) VALUES (1, 'dup')")
    pool.release(conn)  # caught by the caller: the pool sees no exception
    # Had the transaction stayed open, the S-lock on row 1 would block this update.
    backend.admin_query("SET SESSION innodb_lock_wait_timeout = 2")
    backend.admin_query(f"UPDATE {table} SET v = 'z' WHERE id = 1")


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_aborted_transaction_is_rolled_back_even_without_reset_on_return(
    backend: Backend, make_pool: type[Pool]
) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, reset_on_return=False)
    conn = pool.acquire()
    with pytest.raises(Exception, match="division by zero"):
        query(conn, "SELECT 1/0")
    conn.close()
    with pool.connection() as conn:
        assert query(conn, "SELECT 1") == [(1,)]


# ------------------------------------------------------------------ handles made by hand


def test_hand_made_handle_is_refused_cleanly(sqlite_url: str) -> None:
    with Pool(sqlite_url) as pool:
        stray = PooledConnection()
        with pytest.raises(PoolError):
            pool.release(stray)
        with pytest.raises(PoolError):
            stray.cursor()
        with pool.connection() as conn:
            assert not hasattr(conn, "__deepcopy__")  # special names are never forwarded
            with pytest.raises(TypeError):  # refuses to copy, instead of recursing
                copy.copy(conn)


# ------------------------------------------------------------------ options checked up front


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "0"])
def test_mysql_timeout_options_must_be_positive(value: str) -> None:
    with pytest.raises(ConfigError, match="connect_timeout"):
        Pool(f"mysql://root@127.0.0.1/test?connect_timeout={value}")
