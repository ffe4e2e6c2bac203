"""The driver layer against real connections of every supported driver.

Covers driver selection from the URL scheme and from a connection object, the client-side
transaction state (the no-round-trip reset fast path), disconnect classification, ping,
URL options, and the pool's core behaviours through the second-choice drivers (psycopg2).
"""

from __future__ import annotations

import importlib.util
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends import Backend, MakePool, query
from flask_dbpool import ConfigError, Pool
from flask_dbpool.drivers import (
    BROKEN,
    IDLE,
    IN_TRANSACTION,
    Driver,
    driver_for_connection,
    resolve_target,
    supported_schemes,
)
from flask_dbpool.drivers.mysql import MySQLdbDriver, PyMySQLDriver
from flask_dbpool.drivers.postgres import Psycopg2Driver, PsycopgDriver
from flask_dbpool.drivers.sqlite import SQLiteDriver


@dataclass
class DriverCase:
    """One driver on one real database."""

    name: str
    driver: type[Driver]
    url: str  # a pool URL selecting exactly this driver
    backend: Backend

    def raw(self) -> Any:
        """A new raw connection of this driver, opened the way the pool opens them."""
        return resolve_target(self.url).connect()


def _scheme_url(url: str, scheme: str) -> str:
    return scheme + "://" + url.partition("://")[2]


DRIVER_NAMES = ["sqlite3", "psycopg", "psycopg2", "pymysql", "mysqldb"]


@pytest.fixture(params=DRIVER_NAMES)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DriverCase]:
    name: str = request.param
    dialect = {"sqlite3": "sqlite", "psycopg": "postgres", "psycopg2": "postgres"}.get(
        name, "mysql"
    )
    module = {"sqlite3": "sqlite3", "mysqldb": "MySQLdb"}.get(name, name)
    if importlib.util.find_spec(module) is None:
        extra = {"psycopg": "postgres", "psycopg2": "postgres2", "pymysql": "mysql"}.get(
            name, "mysqlclient"
        )
        pytest.skip(f"driver {module} is not installed (pip install 'flask-dbpool[{extra}]')")
    base = ""
    if dialect == "postgres":
        base = request.getfixturevalue("postgres_url")
    elif dialect == "mysql":
        base = request.getfixturevalue("mysql_url")
    backend = Backend.create(dialect, base, tmp_path)
    driver, scheme = {
        "sqlite3": (SQLiteDriver, "sqlite"),
        "psycopg": (PsycopgDriver, "postgresql+psycopg"),
        "psycopg2": (Psycopg2Driver, "postgresql+psycopg2"),
        "pymysql": (PyMySQLDriver, "mysql+pymysql"),
        "mysqldb": (MySQLdbDriver, "mysql+mysqldb"),
    }[name]
    yield DriverCase(name, driver, _scheme_url(backend.url, scheme), backend)
    backend.cleanup()


def _insert(case: DriverCase, conn: Any, table: str, key: int) -> None:
    query(conn, case.backend.sql(f"INSERT INTO {table} VALUES (%s, %s)"), (key, "x"))


# ---------------------------------------------------------------------- selection


def test_scheme_selects_the_driver(case: DriverCase) -> None:
    with Pool(case.url, pool_size=1) as pool, pool.connection() as conn:
        raw = conn.driver_connection
        assert type(raw).__module__.partition(".")[0] == case.driver.module
        assert driver_for_connection(raw) is case.driver
        assert query(conn, "SELECT 1") == [(1,)]


def test_driver_for_unknown_connection_is_generic() -> None:
    class Custom:
        pass

    assert driver_for_connection(Custom()) is Driver
    assert Driver.transaction_state(Custom()) == IN_TRANSACTION  # always roll back


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        ("postgresql", PsycopgDriver),
        ("postgres", PsycopgDriver),
        ("mysql", PyMySQLDriver),
        ("mariadb", PyMySQLDriver),
        ("mariadb+pymysql", PyMySQLDriver),
    ],
)
def test_scheme_aliases(
    scheme: str, expected: type[Driver], request: pytest.FixtureRequest
) -> None:
    base = request.getfixturevalue("postgres_url" if expected is PsycopgDriver else "mysql_url")
    with Pool(_scheme_url(base, scheme), pool_size=1) as pool, pool.connection() as conn:
        assert driver_for_connection(conn.driver_connection) is expected
        assert query(conn, "SELECT 1") == [(1,)]


def test_supported_schemes_are_all_accepted(tmp_path: Path) -> None:
    for scheme in supported_schemes():
        dialect = scheme.partition("+")[0]
        url = f"{scheme}:///{tmp_path / 'x.db'}" if dialect == "sqlite" else f"{scheme}://u@h/db"
        try:
            Pool(url).close()
        except ConfigError as exc:  # only a missing driver may stop it
            assert "not installed" in str(exc), exc


@pytest.mark.skipif(
    importlib.util.find_spec("MySQLdb") is not None, reason="mysqlclient is installed here"
)
def test_missing_driver_names_the_extra() -> None:
    with pytest.raises(ConfigError, match=r"flask-dbpool\[mysqlclient\]"):
        Pool("mysql+mysqldb://root@127.0.0.1/test")


# ---------------------------------------------------------------------- transaction state


def test_transaction_state_without_round_trip(case: DriverCase) -> None:
    if case.driver is MySQLdbDriver:
        pytest.skip("mysqlclient has no transaction flag: always IN_TRANSACTION while open")
    table = case.backend.new_table()
    raw = case.raw()
    try:
        # A fresh PyMySQL connection has no last result yet and reports IN_TRANSACTION (one
        # harmless rollback); after any statement and a rollback every driver reports IDLE.
        cur = raw.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        cur.close()
        raw.rollback()
        assert case.driver.transaction_state(raw) == IDLE
        _insert(case, raw, table, 1)
        assert case.driver.transaction_state(raw) == IN_TRANSACTION
        raw.rollback()
        assert case.driver.transaction_state(raw) == IDLE
        _insert(case, raw, table, 2)
        raw.commit()
        assert case.driver.transaction_state(raw) == IDLE
        assert case.backend.count_rows(table) == 1
    finally:
        raw.close()
    assert case.driver.transaction_state(raw) == BROKEN


def test_rollback_resets(case: DriverCase) -> None:
    table = case.backend.new_table()
    raw = case.raw()
    try:
        _insert(case, raw, table, 1)
        case.driver.rollback(raw)
        assert query(raw, f"SELECT COUNT(*) FROM {table}") == [(0,)]
    finally:
        case.driver.close(raw)


def test_ping(case: DriverCase) -> None:
    raw = case.raw()
    try:
        case.driver.ping(raw, 5.0)
        if case.driver is not MySQLdbDriver:
            assert case.driver.transaction_state(raw) == IDLE  # ping leaves it idle
        if case.backend.has_server:
            case.backend.kill(case.backend.session_id(raw))
            with pytest.raises(Exception):  # noqa: B017 -- the driver's own error
                case.driver.ping(raw, 5.0)
    finally:
        try:
            raw.close()
        except Exception:
            pass


def test_disconnect_classification(case: DriverCase) -> None:
    raw = case.raw()
    try:
        with pytest.raises(Exception) as syntax:
            query(raw, "SELEKT 1")
        assert not case.driver.is_disconnect(syntax.value, raw)
        raw.rollback()
        if case.backend.has_server:
            case.backend.kill(case.backend.session_id(raw))
            with pytest.raises(Exception) as gone:
                query(raw, "SELECT 1")
        else:
            raw.close()
            with pytest.raises(sqlite3.ProgrammingError) as gone:
                raw.cursor()
        assert case.driver.is_disconnect(gone.value, raw)
        if case.driver is not MySQLdbDriver:
            assert case.driver.transaction_state(raw) == BROKEN
    finally:
        try:
            raw.close()
        except Exception:
            pass


# ---------------------------------------------------------------------- through the pool


def test_pool_reuse_reset_and_discard(case: DriverCase, make_pool: MakePool) -> None:
    table = case.backend.new_table()
    pool = make_pool(case.url, pool_size=1, max_overflow=0)
    conn = pool.acquire()
    raw = conn.driver_connection
    _insert(case, conn, table, 1)
    pool.release(conn)
    assert case.backend.count_rows(table) == 0
    with pool.connection() as conn:
        assert conn.driver_connection is raw
        assert query(conn, f"SELECT COUNT(*) FROM {table}") == [(0,)]
    if not case.backend.has_server:
        return
    for form in ("release", "with"):
        conn = pool.acquire()
        dead = case.backend.session_id(conn)
        case.backend.kill(dead)
        if form == "release":
            with pytest.raises(Exception):  # noqa: B017 -- the driver's own error
                query(conn, "SELECT 1")
            pool.release(conn)
        else:
            with pytest.raises(Exception), conn:  # noqa: B017
                query(conn, "SELECT 1")
        with pool.connection() as fresh:
            assert case.backend.session_id(fresh) != dead
    assert pool.stats().closed == 2


# ---------------------------------------------------------------------- URL options


def test_postgres_query_options_reach_libpq(postgres_url: str, make_pool: MakePool) -> None:
    url = postgres_url + ("&" if "?" in postgres_url else "?") + "application_name=dbpool_opt"
    pool = make_pool(url, pool_size=1)
    with pool.connection() as conn:
        assert query(conn, "SELECT current_setting('application_name')") == [("dbpool_opt",)]
        # The pool's default connect timeout is applied (libpq would wait forever).
        assert conn.driver_connection.info.get_parameters().get("connect_timeout") == "10"


def test_postgres_unknown_option_fails_when_the_pool_is_built(postgres_url: str) -> None:
    url = postgres_url + ("&" if "?" in postgres_url else "?") + "no_such_libpq_option=1"
    with pytest.raises(ConfigError, match="no_such_libpq_option"):
        Pool(url)


def test_mysql_url_options(mysql_url: str, make_pool: MakePool) -> None:
    url = (
        mysql_url
        + ("&" if "?" in mysql_url else "?")
        + "autocommit=true&charset=utf8mb4&init_command=SET @dbpool_marker = 42"
        + "&sql_mode=ANSI_QUOTES&connect_timeout=5&read_timeout=30"
    )
    pool = make_pool(url, pool_size=1)
    with pool.connection() as conn:
        assert query(conn, "SELECT @@autocommit, @dbpool_marker") == [(1, 42)]
        assert "ANSI_QUOTES" in query(conn, "SELECT @@sql_mode")[0][0]
        assert query(conn, "SELECT @@character_set_client") == [("utf8mb4",)]


def test_mysql_defaults_to_no_autocommit(mysql_url: str, make_pool: MakePool) -> None:
    pool = make_pool(mysql_url, pool_size=1)
    with pool.connection() as conn:
        assert query(conn, "SELECT @@autocommit") == [(0,)]


def test_sqlite_timeout_option(tmp_path: Path, make_pool: MakePool) -> None:
    pool = make_pool(f"sqlite:///{tmp_path / 'o.db'}?timeout=0.25", pool_size=1)
    with pool.connection() as conn:
        assert query(conn, "SELECT 1") == [(1,)]
    assert (tmp_path / "o.db").exists()


def test_sqlite_relative_path(
    tmp_path: Path, make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pool = make_pool("sqlite:///rel.db", pool_size=1)
    with pool.connection() as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.commit()
    assert (tmp_path / "rel.db").exists()
