"""mysqlclient (``MySQLdb``, the driver under Flask-MySQLdb) through the pool and through
DBPool, against the real MariaDB/MySQL server. The driver needs the client headers to build
(``libmariadb-dev``, which ``.ci/run`` installs); without it these tests skip, saying why."""

from __future__ import annotations

import importlib.util
import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from backends import MakePool, query

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("MySQLdb") is None,
    reason="mysqlclient is not installed (it builds against libmariadb-dev + pkg-config; "
    ".ci/run installs them)",
)


@pytest.fixture
def mysqldb_url(mysql_url: str) -> str:
    scheme, rest = mysql_url.split("://", 1)
    assert scheme in ("mysql", "mariadb", "mysql+pymysql"), mysql_url
    return f"mysql+mysqldb://{rest}"


@pytest.fixture
def table(mysqldb_url: str, make_pool: MakePool) -> Iterator[str]:
    name = f"t_mysqldb_{uuid.uuid4().hex[:8]}"
    pool = make_pool(mysqldb_url, pool_size=1, name="setup")
    with pool.connection() as conn:
        query(conn, f"CREATE TABLE {name} (id INT PRIMARY KEY, who VARCHAR(40)) ENGINE=InnoDB")
    yield name
    with pool.connection() as conn:
        query(conn, f"DROP TABLE {name}")


def test_the_pool_lends_mysqldb_connections(mysqldb_url: str, make_pool: MakePool) -> None:
    import MySQLdb

    pool = make_pool(mysqldb_url, pool_size=2, max_overflow=0)
    with pool.connection() as conn:
        assert isinstance(conn.driver_connection, MySQLdb.connections.Connection)
        assert query(conn, "SELECT 1") == [(1,)]
    assert pool.stats().idle == 1


def test_uncommitted_work_does_not_reach_the_next_borrower(
    mysqldb_url: str, make_pool: MakePool, table: str
) -> None:
    pool = make_pool(mysqldb_url, pool_size=1, max_overflow=0)
    conn = pool.acquire()
    query(conn, f"INSERT INTO {table} VALUES (1, 'forgotten')")
    conn.close()  # returned without commit: rolled back (mysqlclient has no tx flag)
    with pool.connection() as conn:
        assert query(conn, f"SELECT COUNT(*) FROM {table}") == [(0,)]
        query(conn, f"INSERT INTO {table} VALUES (2, 'kept')")
    with pool.connection() as conn:  # the with block committed
        assert query(conn, f"SELECT who FROM {table}") == [("kept",)]


def test_autocommit_set_by_a_borrower_is_put_back(mysqldb_url: str, make_pool: MakePool) -> None:
    pool = make_pool(mysqldb_url, pool_size=1, max_overflow=0)
    with pool.connection() as conn:
        before = conn.get_autocommit()
        conn.autocommit(not before)
        assert conn.get_autocommit() is (not before)
    with pool.connection() as conn:
        assert conn.get_autocommit() is before


def test_threads_share_a_small_pool(mysqldb_url: str, make_pool: MakePool, table: str) -> None:
    """Many threads, random commits, rollbacks and errors: every committed row is there,
    nothing else, and never more than the maximum open."""
    pool = make_pool(mysqldb_url, pool_size=2, max_overflow=1, timeout=30)
    committed: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        rng = random.Random(worker)
        try:
            for step in range(15):
                key = worker * 100 + step
                outcome = rng.choice(["commit", "forget", "raise"])
                try:
                    with pool.connection() as conn:
                        query(conn, f"INSERT INTO {table} VALUES (%s, %s)", (key, f"w{worker}"))
                        if outcome == "forget":
                            conn.rollback()
                        if outcome == "raise":
                            raise KeyError(key)
                except KeyError:
                    continue
                if outcome == "commit":
                    with lock:
                        committed.append(key)
                assert pool.stats().open <= 3
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    with pool.connection() as conn:
        rows = {row[0] for row in query(conn, f"SELECT id FROM {table}")}
    assert rows == set(committed)
    stats = pool.stats()
    assert stats.in_use == 0 and stats.open <= 3


def test_flask_mysqldb_style_app(mysqldb_url: str, table: str) -> None:
    """What a Flask-MySQLdb app looks like on DBPool: ``db.connection`` per request."""
    from flask import Flask

    from flask_dbpool import DBPool

    app = Flask("mysqldb-app")
    app.config.update(DBPOOL_URL=mysqldb_url, DBPOOL_POOL_SIZE=2)
    db = DBPool(app)

    @app.post("/people/<int:key>/<who>")
    def add(key: int, who: str) -> Any:
        cur = db.connection.cursor()
        cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (key, who))
        db.connection.commit()
        return {"id": key}

    @app.get("/people")
    def people() -> Any:
        cur = db.connection.cursor()
        cur.execute(f"SELECT who FROM {table} ORDER BY id")
        return {"people": [row[0] for row in cur.fetchall()]}

    client = app.test_client()
    try:
        assert client.post("/people/1/ada").status_code == 200
        assert client.post("/people/2/grace").status_code == 200
        assert client.get("/people").get_json() == {"people": ["ada", "grace"]}
        assert DBPool.get_pool(app).stats().in_use == 0
    finally:
        DBPool.get_pool(app).close()
