"""``flask_dbpool.flask.monitor``: the pools of SQLAlchemy engines (Flask-SQLAlchemy's, or any
engine on SQLAlchemyPool) on the app's dashboard, metrics endpoint and ``flask dbpool``
commands, next to a DBPool's. Real PostgreSQL and SQLite; a real HTTP server for ``--from``."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed")
flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy", reason="Flask-SQLAlchemy missing")

from flask import Flask  # noqa: E402
from sqlalchemy import text  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from backends import wait_until  # noqa: E402
from flask_dbpool import ConfigError, DBPool  # noqa: E402
from flask_dbpool.flask import monitor  # noqa: E402
from flask_dbpool.sqlalchemy import SQLAlchemyPool, create_engine, engine_options  # noqa: E402

SECRET = "s3cret-Pa55word"  # PostgreSQL here trusts loopback: the password is never checked


def _with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user_host = rest if "@" in rest else f"postgres@{rest}"
    user, host = user_host.split("@", 1)
    return f"{scheme}://{user.split(':')[0]}:{SECRET}@{host}"


@pytest.fixture
def fsa_app(postgres_url: str, tmp_path: Any) -> Iterator[tuple[Flask, Any]]:
    """A Flask-SQLAlchemy app on SQLAlchemyPool: the default engine on PostgreSQL (its URL
    carries a password), a bind ``audit`` on SQLite; dashboard and metrics endpoint on."""
    db = flask_sqlalchemy.SQLAlchemy()
    app = Flask(f"monitored-{uuid.uuid4().hex[:6]}")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=_with_password(postgres_url).replace(
            "postgresql://", "postgresql+psycopg://", 1
        ),
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(pool_size=2, max_overflow=1),
        # A bind takes SQLAlchemy(engine_options=…), not SQLALCHEMY_ENGINE_OPTIONS: its own.
        SQLALCHEMY_BINDS={
            "audit": {"url": f"sqlite:///{tmp_path}/audit.db", **engine_options(pool_size=1)},
            "legacy": f"sqlite:///{tmp_path}/legacy.db",  # on QueuePool: not shown
        },
        DBPOOL_DASHBOARD=True,
        DBPOOL_METRICS_ENDPOINT="/metrics",
    )
    db.init_app(app)

    @app.get("/count")
    def count() -> str:
        value = db.session.execute(text("SELECT 41 + 1")).scalar()
        return str(value)

    yield app, db
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


def test_a_flask_sqlalchemy_app_is_monitored_in_one_call(
    fsa_app: tuple[Flask, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app, db = fsa_app
    with caplog.at_level("WARNING", logger="flask_dbpool"):
        assert monitor(app) == ["sqlalchemy", "sqlalchemy.audit"]
    (skipped,) = [r.getMessage() for r in caplog.records if "legacy" in r.getMessage()]
    assert "QueuePool" in skipped and "engine_options" in skipped
    assert monitor(app) == ["sqlalchemy", "sqlalchemy.audit"]  # again: nothing added twice
    client = app.test_client()
    for _ in range(3):
        assert client.get("/count").get_data(as_text=True) == "42"

    response = client.get("/_dbpool/data")
    assert response.status_code == 200
    data = response.get_json()
    assert data["pool"] == "sqlalchemy" and data["pools"] == ["sqlalchemy", "sqlalchemy.audit"]
    assert data["stats"]["acquired"] == 3 and data["stats"]["in_use"] == 0
    assert data["stats"]["pool_size"] == 2 and data["stats"]["max_overflow"] == 1
    assert data["target"].startswith("postgresql+psycopg://") and "***" in data["target"]
    audit = client.get("/_dbpool/data?pool=sqlalchemy.audit").get_json()
    assert audit["pool"] == "sqlalchemy.audit" and audit["target"].startswith("sqlite:///")
    missing = client.get("/_dbpool/data?pool=nope")
    assert missing.status_code == 404
    assert missing.get_json()["pools"] == ["sqlalchemy", "sqlalchemy.audit"]

    metrics = client.get("/metrics").get_data(as_text=True)
    assert re.search(
        r'^flask_dbpool_checkouts_total\{pool_name="sqlalchemy"\} 3\.0$', metrics, re.M
    )
    assert 'pool_name="sqlalchemy.audit"' in metrics
    # use time is tracked from the moment monitor() mounted the endpoint
    assert re.search(
        r'^db_client_connection_use_time_seconds_count\{pool_name="sqlalchemy"\} 3\.0$',
        metrics,
        re.M,
    )

    # engine.dispose() replaces the engine's pool: the dashboard follows it.
    with app.app_context():
        old = db.engine.pool
        db.engine.dispose()
        assert db.engine.pool is not old and isinstance(db.engine.pool, SQLAlchemyPool)
    client.get("/count")
    data = client.get("/_dbpool/data").get_json()
    assert data["stats"]["acquired"] == 1 and data["stats"]["open"] == 1
    metrics = client.get("/metrics").get_data(as_text=True)
    assert re.search(
        r'^db_client_connection_use_time_seconds_count\{pool_name="sqlalchemy"\} 1\.0$',
        metrics,
        re.M,
    )

    runner = app.test_cli_runner()
    status = runner.invoke(args=["dbpool", "status"])
    assert status.exit_code == 0, status.output
    assert "pool 'sqlalchemy': postgresql+psycopg://" in status.output
    assert "pool 'sqlalchemy.audit': sqlite:///" in status.output
    one = runner.invoke(args=["dbpool", "status", "--pool", "sqlalchemy.audit"])
    assert one.exit_code == 0 and "pool 'sqlalchemy'" not in one.output
    bad = runner.invoke(args=["dbpool", "status", "--pool", "nope"])
    assert bad.exit_code == 2 and "'sqlalchemy', 'sqlalchemy.audit'" in bad.output
    check = runner.invoke(args=["dbpool", "check"])
    assert check.exit_code == 0, check.output
    assert check.output.count("OK: ") == 2 and "(pool 'sqlalchemy.audit')" in check.output
    doctor = runner.invoke(args=["dbpool", "doctor", "--workers", "3"])
    assert doctor.exit_code == 0, doctor.output
    assert re.search(r"^per worker\s+pool_size 2 \+ max_overflow 1 = 3$", doctor.output, re.M)
    assert re.search(r"^fleet maximum\s+3 x 3 = 9$", doctor.output, re.M)
    assert "embedded, not a server" in doctor.output  # the SQLite bind

    everything = json.dumps(data) + metrics + status.output + check.output + doctor.output
    assert SECRET not in everything


def test_dbpool_and_engines_on_one_app(sqlite_url: str, postgres_url: str) -> None:
    """An app with its DBPool and an engine made elsewhere: both shown, DBPool's first; pools
    on one server add up in the doctor."""
    app = Flask("both")
    app.config.update(DBPOOL_URL=postgres_url, DBPOOL_POOL_SIZE=3, DBPOOL_MAX_OVERFLOW=0)
    app.config["DBPOOL_DASHBOARD"] = True
    engine = create_engine(postgres_url, pool_size=2, max_overflow=2, name="reports")
    # monitor() before DBPool(app): DBPool's own pool still comes first.
    assert monitor(app, engine) == ["reports"]
    DBPool(app)
    try:
        assert monitor(app, engine) == ["both", "reports"]
        client = app.test_client()
        assert client.get("/_dbpool/data").get_json()["pools"] == ["both", "reports"]
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            held = client.get("/_dbpool/data?pool=reports").get_json()
            assert held["stats"]["in_use"] == 1 and len(held["checkouts"]) == 1
        runner = app.test_cli_runner()
        doctor = runner.invoke(args=["dbpool", "doctor", "--workers", "2"])
        assert doctor.exit_code == 0, doctor.output
        assert re.search(
            r"^per worker\s+'both' \(3 \+ 0\) \+ 'reports' \(2 \+ 2\) = 7$", doctor.output, re.M
        )
        assert re.search(r"^fleet maximum\s+2 x 7 = 14$", doctor.output, re.M)
        assert doctor.output.count("server: ") == 1
        too_many = runner.invoke(args=["dbpool", "doctor", "--workers", "100000"])
        assert too_many.exit_code == 1 and "sum over this server's pools" in too_many.output
    finally:
        DBPool.get_pool(app).close()
        engine.dispose()


def test_status_from_a_server_reads_every_pool(fsa_app: tuple[Flask, Any]) -> None:
    app, _ = fsa_app
    monitor(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    base = f"http://127.0.0.1:{server.port}"
    cli_app = Flask("cli")
    cli_app.config["DBPOOL_URL"] = "sqlite:///:memory:"
    DBPool(cli_app)
    try:
        app.test_client().get("/count")
        runner = cli_app.test_cli_runner()
        result = runner.invoke(args=["dbpool", "status", "--from", f"{base}/_dbpool"])
        assert result.exit_code == 0, result.output
        assert "pool 'sqlalchemy': " in result.output
        assert "pool 'sqlalchemy.audit': " in result.output
        one = runner.invoke(
            args=["dbpool", "status", "--from", f"{base}/_dbpool", "--pool", "sqlalchemy"]
        )
        assert one.exit_code == 0 and "sqlalchemy.audit" not in one.output.split("\n", 1)[0]
        assert "pool 'sqlalchemy.audit': " not in one.output
        bad = runner.invoke(args=["dbpool", "status", "--from", f"{base}/_dbpool", "--pool", "x"])
        assert bad.exit_code == 1
        assert "no pool named 'x' (404); its pools: 'sqlalchemy', 'sqlalchemy.audit'" in bad.output
        assert SECRET not in result.output
    finally:
        server.shutdown()
        server.server_close()
        serving.join(10)
        DBPool.get_pool(cli_app).close()


def test_bad_input_is_a_config_error(sqlite_url: str, postgres_url: str) -> None:
    app = Flask("bad")
    with pytest.raises(ConfigError, match="no Flask-SQLAlchemy"):
        monitor(app)
    with pytest.raises(ConfigError, match=r"shows SQLAlchemy engines .* got object"):
        monitor(app, object())
    queue_engine = sqlalchemy.create_engine("sqlite://")
    with pytest.raises(ConfigError, match="uses SingletonThreadPool, not flask_dbpool"):
        monitor(app, queue_engine)
    one = create_engine(sqlite_url, name="same")
    two = create_engine(postgres_url, name="same")
    try:
        with pytest.raises(ConfigError, match="names one source"):
            monitor(app, one, two, name="x")
        monitor(app, one)
        with pytest.raises(ConfigError, match="two pools named 'same'"):
            monitor(app, two)
        assert monitor(app, two, name="same-pg") == ["same", "same-pg"]
        app.config["DBPOOL_DASHBORD"] = True
        with pytest.raises(ConfigError, match=r"DBPOOL_DASHBORD.*DBPOOL_DASHBOARD"):
            monitor(app, one)
    finally:
        one.dispose()
        two.dispose()
    # Flask-SQLAlchemy engines on QueuePool: nothing to show, said so.
    db = flask_sqlalchemy.SQLAlchemy()
    plain = Flask("plain")
    plain.config["SQLALCHEMY_DATABASE_URI"] = f"{sqlite_url}"
    db.init_app(plain)
    with pytest.raises(ConfigError, match=r"none of app 'plain'.*engine_options"):
        monitor(plain)


def test_an_app_without_pools_says_so(sqlite_url: str) -> None:
    """The commands of an app whose monitor() found nothing yet, or whose pools went away."""
    app = Flask("nothing")
    engine = create_engine(sqlite_url)
    monitor(app, engine)
    app.extensions["dbpool.monitored"].clear()
    result = app.test_cli_runner().invoke(args=["dbpool", "status"])
    assert result.exit_code == 1 and "no pool to show on app 'nothing'" in result.output
    assert app.test_client().get("/_dbpool/data").status_code == 404  # (no dashboard mounted)
    wait_until(lambda: True)
    engine.dispose()


def test_a_flask_sqlalchemy_lite_app_shows_its_default_engine_first(
    postgres_url: str, tmp_path: Any
) -> None:
    lite = pytest.importorskip("flask_sqlalchemy_lite", reason="Flask-SQLAlchemy-Lite missing")
    from flask_dbpool.sqlalchemy import engine_url

    app = Flask("lite")
    app.config["SQLALCHEMY_ENGINES"] = {
        # A bind named before "default" in sort order: the default engine still comes first.
        "analytics": {"url": f"sqlite:///{tmp_path}/a.db", **engine_options(name="analytics")},
        "default": {
            "url": engine_url(postgres_url).render_as_string(hide_password=False),
            **engine_options(pool_size=2),
        },
    }
    app.config["DBPOOL_DASHBOARD"] = True
    db = lite.SQLAlchemy(app)
    try:
        assert monitor(app) == ["sqlalchemy", "analytics"]
        with app.app_context(), db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        data = app.test_client().get("/_dbpool/data").get_json()
        assert data["pool"] == "sqlalchemy" and data["stats"]["acquired"] == 1
    finally:
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose()


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u:***@h:5432/other", True),
        ("postgres://u@localhost/db", "postgresql://v@127.0.0.1:5432/db", True),
        ("postgresql:///db?host=/run/postgresql", "postgresql:///x?host=/run/postgresql", True),
        ("postgresql:///db?host=/run/postgresql", "postgresql:///db?host=/tmp", False),
        ("mysql+pymysql://root@h/db", "mariadb://root@h:3306/other", True),
        ("postgresql://u@h/db", "postgresql://u@h:6432/db", False),
        ("postgresql://u@h/db", "mysql://u@h/db", False),
    ],
)
def test_doctor_adds_up_pools_on_one_server_whatever_the_url_says(
    first: str, second: str, same: bool
) -> None:
    from flask_dbpool.flask.cli import _server_of

    assert (_server_of(first) == _server_of(second)) is same


def test_multiprocess_metrics_name_each_pool_as_shown_and_from_the_start(
    tmp_path: Any, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, every monitored pool is written by the worker from the
    moment it is added (not only once this worker served /metrics), under its shown name."""
    import os

    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    app = Flask("mp-monitored")
    app.config.update(DBPOOL_METRICS_ENDPOINT="/metrics")
    one = create_engine(sqlite_url)
    two = create_engine(f"sqlite:///{tmp_path}/two.db")
    try:
        monitor(app, one, name="one")  # mounts the endpoint
        monitor(app, two, name="two")  # added afterwards
        with one.connect(), two.connect():
            pass
        snapshot = tmp_path / f"flask_dbpool_{os.getpid()}.json"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if snapshot.exists():
                names = [pool["name"] for pool in json.loads(snapshot.read_text())["pools"]]
                if names == ["one", "two"]:
                    break
            time.sleep(0.05)
        names = [pool["name"] for pool in json.loads(snapshot.read_text())["pools"]]
        assert names == ["one", "two"]
        text_out = app.test_client().get("/metrics").get_data(as_text=True)
        labels = sorted(
            sample.labels["pool_name"]
            for family in text_string_to_metric_families(text_out)
            for sample in family.samples
            if sample.name == "flask_dbpool_checkouts_total"
        )
        assert labels == ["one", "two"]
    finally:
        one.dispose()
        two.dispose()
