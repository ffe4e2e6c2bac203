"""Regression tests for problems found in review, each against a real database."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import pytest

from backends import Backend, query
from flask_dbpool import ConfigError, Pool, PooledConnection, PoolError, PoolTimeout

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


# ------------------------------------------------------------------ warm_up's own error


def test_warm_up_raises_its_own_connect_error_when_another_connect_succeeds_meanwhile(
    tmp_path: Path,
) -> None:
    """warm_up() used to read the pool's last connection error after its attempt failed; a
    concurrent successful connect clears it first, and warm_up failed with AssertionError
    (or ``raise None``) instead of the driver's error (issue 10 item 8)."""
    import sqlite3
    import threading

    path = str(tmp_path / "race.db")
    calls = {"n": 0}
    calls_lock = threading.Lock()

    def connect() -> sqlite3.Connection:
        with calls_lock:
            calls["n"] += 1
            first = calls["n"] == 1
        if first:
            raise sqlite3.OperationalError("first attempt refused")
        return sqlite3.connect(path, check_same_thread=False)

    other_connected = threading.Event()
    pool = Pool(connect, pool_size=2)

    def hold_failure_log(record: logging.LogRecord) -> bool:
        """Holds warm_up's thread right after its failure was recorded (the pool logs it
        there) until another caller has connected and cleared the pool's last error. A
        logger filter, not a handler: handlers serialise emit() with a lock the other
        caller's own log line would wait for."""
        if "first attempt refused" in record.getMessage():
            other_connected.wait(10)
        return True

    def other() -> None:
        conn = pool.acquire(timeout=10)
        other_connected.set()
        pool.release(conn)

    pool_logger = logging.getLogger("flask_dbpool.pool")
    pool_logger.addFilter(hold_failure_log)
    thread = threading.Thread(target=other)
    try:
        # Start the other caller once warm_up's attempt is under way: it waits for the
        # back-off, then connects while warm_up is held in the log handler.
        threading.Timer(0.05, thread.start).start()
        with pytest.raises(sqlite3.OperationalError, match="first attempt refused"):
            pool.warm_up()
        thread.join(10)
        assert other_connected.is_set()
    finally:
        pool_logger.removeFilter(hold_failure_log)
        pool.close()


def test_an_observer_raising_on_create_costs_no_slot(sqlite_url: str) -> None:
    """The books are done before observers run: one that raises on "create" leaves the new
    connection in the pool, never a slot counted twice (issue 10 review)."""
    calls = [0]

    def observer(event: str, seconds: float) -> None:
        if event == "create" and not calls[0]:
            calls[0] += 1
            raise RuntimeError("observer failed")

    with Pool(sqlite_url, pool_size=2, max_overflow=0) as pool:
        pool.add_observer(observer)
        with pytest.raises(RuntimeError, match="observer failed"):
            pool.acquire()
        s = pool.stats()
        assert (s.open, s.connecting, s.idle, s.in_use) == (1, 0, 1, 0), s
        pool.run_maintenance()
        held = [pool.acquire(), pool.acquire()]
        with pytest.raises(PoolTimeout):
            pool.acquire(timeout=0.05)  # never a third with max 2
        s = pool.stats()
        assert (s.open, s.connecting, s.in_use) == (2, 0, 2), s
        for conn in held:
            conn.close()


def test_maintenance_logs_under_its_own_logger(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """README: flask_dbpool.maintenance carries idle/lifetime closes and min_idle refill
    problems."""

    def refuse(raw: object) -> None:
        raise RuntimeError("on_connect says no")

    caplog.set_level(logging.DEBUG, logger="flask_dbpool")
    with Pool(sqlite_url, min_idle=1, on_connect=refuse) as pool:
        pool.run_maintenance()
    with Pool(sqlite_url, idle_timeout=0.01) as pool:
        pool.acquire().close()
        time.sleep(0.05)
        pool.run_maintenance()
        pool.run_maintenance()
    where = {
        record.name
        for record in caplog.records
        if "min_idle" in record.getMessage() or "closing an idle" in record.getMessage()
    }
    assert where == {"flask_dbpool.maintenance"}, [(r.name, r.getMessage()) for r in caplog.records]
