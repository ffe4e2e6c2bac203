"""The Flask extension against real databases: no mocks.

Every test builds its own app(s) through ``make_app``, which closes their pools afterwards, and
works in its own uniquely named table, dropped afterwards, so that runs sharing a PostgreSQL or
MySQL database do not see each other.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import click
import pytest
from flask import Flask, abort, jsonify
from werkzeug.serving import WSGIRequestHandler, make_server

from flask_dbpool import ConfigError, DBPool, Pool, PooledConnection
from flask_dbpool.flask.extension import EXTENSION_KEY

BACKENDS = ["sqlite", "postgres", "mysql"]

MakeApp = Callable[..., tuple[Flask, DBPool]]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """Each backend's URL in turn (skipped when its server is unavailable)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def make_app() -> Iterator[MakeApp]:
    """Build ``(app, db)`` pairs configured from keyword options; close their pools after."""
    pools: list[Pool] = []

    def make(url: str, **options: Any) -> tuple[Flask, DBPool]:
        app = Flask(__name__)
        app.config["DBPOOL_URL"] = url
        for key, value in options.items():
            app.config[f"DBPOOL_{key.upper()}"] = value
        db = DBPool(app)
        pools.append(DBPool.get_pool(app))
        return app, db

    yield make
    for pool in pools:
        pool.close()


def dialect(url: str) -> str:
    return url.partition(":")[0].partition("+")[0]


def session_id(conn: PooledConnection, url: str) -> object:
    """The server's id for the session behind ``conn`` (the driver object for SQLite)."""
    query = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}.get(
        dialect(url)
    )
    if query is None:
        return id(conn.driver_connection)
    cur = conn.cursor()
    try:
        cur.execute(query)
        return cur.fetchone()[0]
    finally:
        cur.close()


def execute(conn: Any, sql: str) -> list[Any]:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return list(cur.fetchall()) if cur.description is not None else []
    finally:
        cur.close()


@pytest.fixture
def table(db_url: str) -> Iterator[str]:
    """A fresh table ``(id INTEGER, v VARCHAR(50))`` in ``db_url``'s database."""
    name = f"t_flask_{uuid.uuid4().hex[:12]}"
    with Pool(db_url, pool_size=1, max_overflow=0) as pool:
        with pool.connection() as conn:
            execute(conn, f"CREATE TABLE {name} (id INTEGER, v VARCHAR(50))")
            conn.commit()
        yield name
        with pool.connection() as conn:
            execute(conn, f"DROP TABLE {name}")
            conn.commit()


def count_rows(url: str, table: str) -> int:
    """Count rows through a connection of its own, outside any app."""
    with Pool(url, pool_size=1, max_overflow=0) as pool, pool.connection() as conn:
        rows = execute(conn, f"SELECT COUNT(*) FROM {table}")
        conn.rollback()
        return int(rows[0][0])


# ---------------------------------------------------------------------------- initialisation


def test_constructor_form(sqlite_url: str) -> None:
    app = Flask(__name__)
    app.config["DBPOOL_URL"] = sqlite_url
    db = DBPool(app)
    pool = app.extensions["dbpool"]
    try:
        assert isinstance(pool, Pool)
        assert EXTENSION_KEY == "dbpool"
        assert DBPool.get_pool(app) is pool
        assert pool.name == app.name  # DBPOOL_NAME defaults to the app's name
        with app.app_context():
            assert db.pool is pool
    finally:
        pool.close()


def test_factory_form(sqlite_url: str) -> None:
    db = DBPool()

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config.update(DBPOOL_URL=sqlite_url, DBPOOL_POOL_SIZE=2, DBPOOL_NAME="mine")
        db.init_app(app)
        return app

    app = create_app()
    pool = app.extensions["dbpool"]
    try:
        assert isinstance(pool, Pool)
        assert pool.name == "mine"
        assert pool.config.pool_size == 2
        with app.app_context():
            assert db.pool is pool
            assert session_id(db.connection, sqlite_url) is not None
        assert pool.stats().in_use == 0
    finally:
        pool.close()


def test_two_apps_sharing_one_dbpool_get_separate_pools(tmp_path: Any) -> None:
    db = DBPool()
    apps = []
    for i in range(2):
        app = Flask(f"app{i}")
        app.config["DBPOOL_URL"] = f"sqlite:///{tmp_path / f'app{i}.db'}"

        @app.get("/who")
        def who() -> Any:
            return jsonify(pool=db.pool.name, same=db.connection is db.connection)

        db.init_app(app)
        apps.append(app)
    pools = [DBPool.get_pool(app) for app in apps]
    try:
        assert pools[0] is not pools[1]
        for app, pool in zip(apps, pools, strict=True):
            with app.app_context():
                assert db.pool is pool
            response = app.test_client().get("/who")
            assert response.json == {"pool": app.name, "same": True}
            assert pool.stats().acquired == 1
            assert pool.stats().in_use == 0
    finally:
        for pool in pools:
            pool.close()


def test_init_twice_on_one_app_raises(sqlite_url: str, make_app: MakeApp) -> None:
    app, db = make_app(sqlite_url)
    pool = DBPool.get_pool(app)
    with pytest.raises(ConfigError, match="already initialised"):
        db.init_app(app)
    with pytest.raises(ConfigError, match="already initialised"):
        DBPool(app)
    assert DBPool.get_pool(app) is pool


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("url", [None, ""])
def test_missing_url_names_dbpool_url(url: str | None) -> None:
    app = Flask(__name__)
    if url is not None:
        app.config["DBPOOL_URL"] = url
    app.config["DBPOOL_POOL_SIZE"] = 2
    db = DBPool()
    with pytest.raises(ConfigError, match="DBPOOL_URL"):
        db.init_app(app)
    assert "dbpool" not in app.extensions


def test_unknown_key_suggests_the_right_one(sqlite_url: str) -> None:
    app = Flask(__name__)
    app.config.update(DBPOOL_URL=sqlite_url, DBPOOL_POOL_SIZ=3)
    with pytest.raises(ConfigError, match="did you mean DBPOOL_POOL_SIZE") as info:
        DBPool(app)
    assert "DBPOOL_POOL_SIZ" in str(info.value)
    assert "dbpool" not in app.extensions


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("DBPOOL_POOL_SIZE", 0),
        ("DBPOOL_POOL_SIZE", "5"),
        ("DBPOOL_MAX_OVERFLOW", -1),
        ("DBPOOL_TIMEOUT", "x"),
        ("DBPOOL_TIMEOUT", 0),
        ("DBPOOL_LIFO", "yes"),
        ("DBPOOL_NAME", ""),
    ],
)
def test_invalid_value_names_the_key(sqlite_url: str, key: str, value: object) -> None:
    app = Flask(__name__)
    app.config.update({"DBPOOL_URL": sqlite_url, key: value})
    with pytest.raises(ConfigError, match=key):
        DBPool(app)
    assert "dbpool" not in app.extensions


def test_bad_url_fails_at_init_app() -> None:
    app = Flask(__name__)
    app.config["DBPOOL_URL"] = "oracle://scott:tiger@db/x"
    with pytest.raises(ConfigError, match="unsupported database URL scheme") as info:
        DBPool(app)
    assert "tiger" not in str(info.value)


def test_a_failed_init_can_be_fixed_and_retried(sqlite_url: str) -> None:
    app = Flask(__name__)
    app.config.update(DBPOOL_URL=sqlite_url, DBPOOL_POOL_SIZE=0)
    db = DBPool()
    with pytest.raises(ConfigError):
        db.init_app(app)
    app.config["DBPOOL_POOL_SIZE"] = 1
    db.init_app(app)
    pool = DBPool.get_pool(app)
    try:
        assert pool.config.pool_size == 1
    finally:
        pool.close()


def test_from_prefixed_env(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_DBPOOL_URL", sqlite_url)
    monkeypatch.setenv("FLASK_DBPOOL_POOL_SIZE", "3")
    monkeypatch.setenv("FLASK_DBPOOL_TIMEOUT", "2.5")
    monkeypatch.setenv("FLASK_DBPOOL_LIFO", "false")
    app = Flask(__name__)
    app.config.from_prefixed_env()
    db = DBPool(app)
    pool = DBPool.get_pool(app)
    try:
        assert pool.config.pool_size == 3
        assert pool.config.timeout == 2.5
        assert pool.config.lifo is False
        with app.app_context():
            assert execute(db.connection, "SELECT 1") == [(1,)]
    finally:
        pool.close()


def test_from_prefixed_env_invalid_value(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_DBPOOL_URL", sqlite_url)
    monkeypatch.setenv("FLASK_DBPOOL_POOL_SIZE", "0")
    app = Flask(__name__)
    app.config.from_prefixed_env()
    with pytest.raises(ConfigError, match="DBPOOL_POOL_SIZE"):
        DBPool(app)


# ---------------------------------------------------------------------------- request lifecycle


def test_one_connection_per_request(db_url: str, make_app: MakeApp) -> None:
    app, db = make_app(db_url)
    pool = DBPool.get_pool(app)
    seen: list[object] = []

    @app.get("/twice")
    def twice() -> Any:
        first, second = db.connection, db.connection
        seen.append(session_id(first, db_url))
        assert pool.stats().in_use == 1
        return jsonify(same=first is second, sessions=[seen[-1] == session_id(second, db_url)])

    client = app.test_client()
    for _ in range(3):
        response = client.get("/twice")
        assert response.status_code == 200
        assert response.json == {"same": True, "sessions": [True]}
        assert pool.stats().in_use == 0
    stats = pool.stats()
    assert stats.acquired == 3
    assert stats.created == 1  # the same server session served every request
    assert len(set(seen)) == 1


def test_no_connection_checked_out_when_unused(sqlite_url: str, make_app: MakeApp) -> None:
    app, _db = make_app(sqlite_url)

    @app.get("/")
    def index() -> str:
        return "no database here"

    assert app.test_client().get("/").status_code == 200
    assert DBPool.get_pool(app).stats().acquired == 0


def test_open_transaction_is_rolled_back_at_teardown(
    db_url: str, table: str, make_app: MakeApp
) -> None:
    app, db = make_app(db_url)
    pool = DBPool.get_pool(app)

    @app.post("/leave-open")
    def leave_open() -> str:
        execute(db.connection, f"INSERT INTO {table} (id, v) VALUES (1, 'uncommitted')")
        return "ok"

    @app.post("/abort")
    def aborts() -> str:
        execute(db.connection, f"INSERT INTO {table} (id, v) VALUES (2, 'aborted')")
        abort(409)

    client = app.test_client()
    assert client.post("/leave-open").status_code == 200
    assert client.post("/abort").status_code == 409
    assert pool.stats().in_use == 0
    assert count_rows(db_url, table) == 0
    # The connection went back to the pool clean: the next request sees nothing either.
    with app.app_context():
        assert execute(db.connection, f"SELECT COUNT(*) FROM {table}")[0][0] == 0
    assert pool.stats().created == 1


def test_view_that_raises_is_rolled_back(db_url: str, table: str, make_app: MakeApp) -> None:
    app, db = make_app(db_url)
    pool = DBPool.get_pool(app)

    @app.post("/boom")
    def boom() -> str:
        execute(db.connection, f"INSERT INTO {table} (id, v) VALUES (1, 'doomed')")
        raise RuntimeError("boom")

    app.testing = False  # a 500 response, as in production
    app.logger.disabled = True
    try:
        assert app.test_client().post("/boom").status_code == 500
    finally:
        app.logger.disabled = False
    assert pool.stats().in_use == 0
    assert count_rows(db_url, table) == 0

    app.testing = True  # the exception propagates to the caller; teardown still runs
    with pytest.raises(RuntimeError, match="boom"):
        app.test_client().post("/boom")
    assert pool.stats().in_use == 0
    assert count_rows(db_url, table) == 0
    assert pool.stats().open == pool.stats().idle == 1  # not discarded: a healthy connection


def test_committed_data_persists(db_url: str, table: str, make_app: MakeApp) -> None:
    app, db = make_app(db_url)

    @app.post("/commit")
    def commit() -> str:
        execute(db.connection, f"INSERT INTO {table} (id, v) VALUES (1, 'kept')")
        db.connection.commit()
        return "ok"

    assert app.test_client().post("/commit").status_code == 200
    assert DBPool.get_pool(app).stats().in_use == 0
    assert count_rows(db_url, table) == 1


def test_app_context_block(db_url: str, make_app: MakeApp) -> None:
    app, db = make_app(db_url)
    pool = DBPool.get_pool(app)
    with app.app_context():
        conn = db.connection
        assert db.connection is conn
        assert session_id(conn, db_url) == session_id(db.connection, db_url)
        assert pool.stats().in_use == 1
    assert conn.returned
    assert pool.stats().in_use == 0
    assert pool.stats().idle == 1


def test_cli_command(db_url: str, table: str, make_app: MakeApp) -> None:
    app, db = make_app(db_url)
    pool = DBPool.get_pool(app)

    @app.cli.command("add-row")
    @click.argument("value")
    def add_row(value: str) -> None:
        assert db.connection is db.connection
        execute(db.connection, f"INSERT INTO {table} (id, v) VALUES (1, '{value}')")
        db.connection.commit()
        rows = execute(db.connection, f"SELECT v FROM {table}")
        click.echo(f"rows={rows[0][0]} in_use={pool.stats().in_use}")

    result = app.test_cli_runner().invoke(args=["add-row", "from-cli"])
    assert result.exception is None, result.output
    assert result.output.strip() == "rows=from-cli in_use=1"
    assert pool.stats().in_use == 0
    assert count_rows(db_url, table) == 1


def test_outside_app_context_raises(sqlite_url: str, make_app: MakeApp) -> None:
    _app, db = make_app(sqlite_url)
    with pytest.raises(RuntimeError, match="application context"):
        db.connection  # noqa: B018
    with pytest.raises(RuntimeError, match="application context"):
        db.pool  # noqa: B018


def test_uninitialised_app_raises_clearly() -> None:
    app = Flask("bare")
    with pytest.raises(RuntimeError, match=r"not initialised on app 'bare'.*init_app"):
        DBPool.get_pool(app)
    db = DBPool()
    with app.app_context():
        with pytest.raises(RuntimeError, match="not initialised"):
            db.connection  # noqa: B018
        with pytest.raises(RuntimeError, match="not initialised"):
            db.pool  # noqa: B018


def test_close_mid_request_gives_a_fresh_connection(db_url: str, make_app: MakeApp) -> None:
    app, db = make_app(db_url)
    pool = DBPool.get_pool(app)

    @app.get("/reopen")
    def reopen() -> Any:
        first = db.connection
        assert execute(first, "SELECT 1") == [(1,)]
        first.close()
        assert first.returned
        assert pool.stats().in_use == 0
        second = db.connection
        assert second is not first
        assert not second.returned
        assert db.connection is second
        return jsonify(value=execute(second, "SELECT 2")[0][0], in_use=pool.stats().in_use)

    response = app.test_client().get("/reopen")
    assert response.status_code == 200, response.text
    assert response.json == {"value": 2, "in_use": 1}
    stats = pool.stats()
    assert stats.in_use == 0
    assert stats.acquired == 2
    assert stats.created == 1  # the closed handle's connection went back and was reused


def test_invalidate_mid_request(db_url: str, make_app: MakeApp) -> None:
    app, db = make_app(db_url)
    pool = DBPool.get_pool(app)

    @app.get("/invalidate")
    def invalidate() -> Any:
        db.connection.invalidate()
        return jsonify(value=execute(db.connection, "SELECT 3")[0][0])

    assert app.test_client().get("/invalidate").json == {"value": 3}
    stats = pool.stats()
    assert (stats.in_use, stats.created, stats.closed, stats.open) == (0, 2, 1, 1)


# ---------------------------------------------------------------------------- threaded server


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@contextlib.contextmanager
def serving(app: Flask) -> Iterator[str]:
    """Run ``app`` on werkzeug's threaded server in a background thread; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()  # serve_forever closes the listening socket on its way out
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.mark.parametrize("backend", BACKENDS)
def test_threaded_server_under_load(
    backend: str, request: pytest.FixtureRequest, make_app: MakeApp
) -> None:
    url: str = request.getfixturevalue(f"{backend}_url")
    app, db = make_app(url, pool_size=2, max_overflow=1, timeout=30)
    pool = DBPool.get_pool(app)

    @app.get("/work")
    def work() -> Any:
        conn = db.connection
        value = execute(conn, "SELECT 1")[0][0]
        time.sleep(0.01)
        assert db.connection is conn
        return jsonify(value=value)

    total, clients = 208, 16
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    results: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(base: str) -> None:
        for _ in range(total // clients):
            try:
                with opener.open(f"{base}/work", timeout=30) as response:
                    body = json.loads(response.read())
                    status = response.status
                with lock:
                    results.append(status if body == {"value": 1} else -status)
            except BaseException as error:  # recorded, asserted on below
                with lock:
                    errors.append(error)

    with serving(app) as base:
        threads = [threading.Thread(target=client, args=(base,)) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)

    assert errors == []
    assert results == [200] * total
    stats = pool.stats()
    assert stats.in_use == 0
    assert stats.acquired == total
    assert stats.created <= 3, stats
    assert stats.open <= 3
    assert stats.timeouts == 0
