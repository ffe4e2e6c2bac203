"""A returned handle behaves like a closed driver connection: using it raises an error that
is both the driver's own closed-connection class and flask_dbpool.ConnectionReturned (a
PoolError), so code written against the driver needs to learn nothing new."""

from __future__ import annotations

import importlib.util
import sqlite3
from typing import Any

import pytest

from backends import Backend, MakePool
from flask_dbpool import ConnectionReturned, PoolError


def _driver_error(name: str) -> tuple[type[BaseException], ...]:
    if name == "sqlite":
        return (sqlite3.ProgrammingError,)
    if name == "postgres":
        import psycopg

        return (psycopg.OperationalError,)
    import pymysql

    return (pymysql.err.InterfaceError,)


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_a_returned_handle_raises_the_drivers_closed_connection_error(
    backend: Backend, make_pool: MakePool
) -> None:
    pool = make_pool(backend.url, pool_size=1)
    conn = pool.acquire()
    conn.close()
    for use in (lambda: conn.cursor(), lambda: conn.commit(), lambda: conn.driver_connection):
        with pytest.raises(_driver_error(backend.name)) as caught:
            use()
        assert isinstance(caught.value, ConnectionReturned)
        assert isinstance(caught.value, PoolError)
        assert "returned" in str(caught.value)
    with pytest.raises(_driver_error(backend.name)):
        conn.autocommit = True
    assert conn.closed is True  # as a closed driver connection reads


@pytest.mark.parametrize(
    ("url_fixture", "module", "names"),
    [
        ("postgres_url", "psycopg2", ("InterfaceError",)),
        ("mysql_url", "MySQLdb", ("InterfaceError", "OperationalError")),
    ],
)
def test_the_other_drivers_too(
    url_fixture: str,
    module: str,
    names: tuple[str, ...],
    make_pool: MakePool,
    request: pytest.FixtureRequest,
) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    url: str = request.getfixturevalue(url_fixture)
    scheme = {"psycopg2": "postgresql+psycopg2", "MySQLdb": "mysql+mysqldb"}[module]
    pool = make_pool(f"{scheme}://{url.split('://', 1)[1]}", pool_size=1)
    conn = pool.acquire()
    conn.close()
    driver = importlib.import_module(module)
    for name in names:
        with pytest.raises(getattr(driver, name)):
            conn.cursor()


def test_flaskr_style_use_after_teardown_gets_sqlite3s_error(sqlite_url: str) -> None:
    """Flask's tutorial app (flaskr) checks that the request's connection is closed after
    teardown by expecting sqlite3.ProgrammingError: with DBPool it gets exactly that."""
    from flask import Flask

    from flask_dbpool import DBPool

    app = Flask("flaskr")
    app.config["DBPOOL_URL"] = sqlite_url
    db = DBPool(app)
    with app.app_context():
        conn: Any = db.connection
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(sqlite3.ProgrammingError) as caught:  # as flaskr's test_get_close_db
        conn.execute("SELECT 1")
    assert "returned" in str(caught.value)
    DBPool.get_pool(app).close()


def test_a_foreign_object_is_still_refused(sqlite_url: str, make_pool: MakePool) -> None:
    pool = make_pool(sqlite_url, pool_size=1)
    raw = sqlite3.connect(":memory:")
    try:
        with pytest.raises(PoolError, match="can only take back connections it lent"):
            pool.release(raw)  # type: ignore[arg-type]
        with pytest.raises(PoolError):
            pool.release(object())  # type: ignore[arg-type]
    finally:
        raw.close()
