"""SQLAlchemyPool: SQLAlchemy engines whose connections are lent by flask-dbpool's rules.
Real SQLite, PostgreSQL and MariaDB through ``sqlalchemy.create_engine``."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed")

from sqlalchemy import event, exc, text  # noqa: E402

from backends import Backend  # noqa: E402
from flask_dbpool import ConfigError, PoolTimeout  # noqa: E402
from flask_dbpool.sqlalchemy import SQLAlchemyPool, SQLAlchemyPoolTimeout  # noqa: E402

_SCHEMES = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}


def engine_url(url: str) -> str:
    """flask-dbpool's test URL as SQLAlchemy spells it (psycopg 3, PyMySQL)."""
    scheme, rest = url.split("://", 1)
    return f"{_SCHEMES.get(scheme, scheme)}://{rest}"


@pytest.fixture
def make_engine() -> Iterator[Any]:
    engines: list[Any] = []

    def make(url: str, **options: Any) -> Any:
        engine = sqlalchemy.create_engine(engine_url(url), poolclass=SQLAlchemyPool, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_an_engine_on_the_pool(backend: Backend, make_engine: Any) -> None:
    engine = make_engine(backend.url, pool_size=2, max_overflow=1, pool_timeout=5)
    pool = engine.pool
    assert isinstance(pool, SQLAlchemyPool)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
        assert pool.checkedout() == 1 and pool.checkedin() == 0
    assert (pool.size(), pool.checkedin(), pool.checkedout(), pool.overflow()) == (2, 1, 0, -1)
    assert pool.timeout() == 5
    assert "Connections in pool: 1" in pool.status()
    stats = pool.stats()
    assert (stats.open, stats.idle, stats.acquired, stats.max_overflow) == (1, 1, 1, 1)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_a_timeout_is_both_errors_and_says_who_holds(backend: Backend, make_engine: Any) -> None:
    engine = make_engine(backend.url, pool_size=1, max_overflow=1, pool_timeout=0.3)
    held = [engine.connect(), engine.connect()]
    try:
        with pytest.raises(exc.TimeoutError) as caught:
            engine.connect()
        error = caught.value
        assert isinstance(error, SQLAlchemyPoolTimeout) and isinstance(error, PoolTimeout)
        message = str(error)
        assert "timed out after" in message and "open=2, in_use=2" in message
        assert "held" in message and "MainThread" in message
        assert engine.pool.stats().timeouts == 1
    finally:
        for conn in held:
            conn.close()


def test_many_threads_are_served_in_turn(postgres_url: str, make_engine: Any) -> None:
    """64 threads on 2 connections: every thread gets its turns and none times out (on
    QueuePool, the thread returning a connection may take it straight back)."""
    engine = make_engine(postgres_url, pool_size=2, max_overflow=0, pool_timeout=30)
    counts = [0] * 64
    errors: list[BaseException] = []
    stop = threading.Event()

    def work(index: int) -> None:
        try:
            while not stop.is_set():
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                counts[index] += 1
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(64)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while min(counts) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not errors, errors[:3]
    assert min(counts) >= 3, sorted(counts)[:5]
    stats = engine.pool.stats()
    assert stats.open <= 2 and stats.timeouts == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_sqlalchemy_events_and_invalidation_keep_working(
    backend: Backend, make_engine: Any
) -> None:
    engine = make_engine(backend.url, pool_size=2, max_overflow=0)
    seen: list[str] = []
    for name in ("connect", "checkout", "checkin", "invalidate"):
        event.listen(engine, name, lambda *args, _name=name: seen.append(_name))
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert seen == ["connect", "checkout", "checkin"]
    seen.clear()
    with engine.connect() as conn:
        conn.invalidate()  # the record closes its DB-API connection and stays a slot
    assert seen == ["checkout", "invalidate", "checkin"]
    seen.clear()
    with engine.connect() as conn:  # reconnected in the same slot
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert seen == ["connect", "checkout", "checkin"]
    assert engine.pool.stats().open == 1


def test_dispose_closes_the_server_sessions(postgres_url: str, make_engine: Any) -> None:
    name = f"sa-dispose-{uuid.uuid4().hex[:8]}"
    engine = make_engine(
        postgres_url,
        pool_size=3,
        max_overflow=0,
        connect_args={"application_name": name},
    )
    conns = [engine.connect() for _ in range(3)]
    for conn in conns:
        conn.close()

    def sessions() -> int:
        import psycopg

        with psycopg.connect(postgres_url.replace("postgresql://", "postgresql://", 1)) as raw:
            row = raw.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchone()
            assert row is not None
            return int(row[0])

    assert sessions() == 3
    old_pool = engine.pool
    engine.dispose()
    assert old_pool.stats().open == 0
    deadline = time.monotonic() + 10
    while sessions() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions() == 0
    # The engine goes on with a new pool of the same kind and settings.
    assert isinstance(engine.pool, SQLAlchemyPool) and engine.pool is not old_pool
    assert engine.pool.size() == 3
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"pool_size": 0}, "pool_size"),
        ({"max_overflow": -1}, "max_overflow"),
        ({"pool_timeout": -1}, "timeout"),
        ({"max_waiting": "lots"}, "max_waiting"),
    ],
)
def test_bad_settings_are_a_config_error(
    sqlite_url: str, options: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match=key):
        sqlalchemy.create_engine(engine_url(sqlite_url), poolclass=SQLAlchemyPool, **options)


# ---------------------------------------------------------------------- helpers


def test_engine_url_picks_flask_dbpools_drivers() -> None:
    from flask_dbpool.sqlalchemy import engine_url

    assert engine_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert engine_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert engine_url("mysql://u@h/db").drivername == "mysql+pymysql"
    assert engine_url("postgresql+psycopg2://u@h/db").drivername == "postgresql+psycopg2"
    assert engine_url("sqlite:///x.db").drivername == "sqlite"


def test_engine_options_validate_at_once() -> None:
    from flask_dbpool.sqlalchemy import engine_options

    options = engine_options(pool_size=3, max_overflow=2, timeout=7, pool_pre_ping=True)
    assert options == {
        "poolclass": SQLAlchemyPool,
        "pool_size": 3,
        "max_overflow": 2,
        "pool_timeout": 7,
        "max_waiting": 0,
        "pool_pre_ping": True,
    }
    with pytest.raises(ConfigError, match="pool_size"):
        engine_options(pool_size=-1)


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_create_engine_helper(backend: Backend) -> None:
    from flask_dbpool.sqlalchemy import create_engine

    engine = create_engine(backend.url, pool_size=2, max_overflow=0, name="helper")
    try:
        assert isinstance(engine.pool, SQLAlchemyPool)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        assert engine.pool.stats().name == "helper"
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_flask_sqlalchemy_app_on_the_pool(backend: Backend) -> None:
    """An existing Flask-SQLAlchemy app switches with one line of config: ORM sessions from
    16 threads on a pool of 2, every commit there, nobody timed out."""
    flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy", reason="Flask-SQLAlchemy missing")
    from flask import Flask
    from sqlalchemy.orm import DeclarativeBase

    from flask_dbpool.sqlalchemy import engine_options, engine_url

    class Base(DeclarativeBase):
        pass

    db = flask_sqlalchemy.SQLAlchemy(model_class=Base)
    table = f"notes_{uuid.uuid4().hex[:8]}"

    class Note(db.Model):  # type: ignore[name-defined, misc]
        __tablename__ = table
        id = sqlalchemy.Column(sqlalchemy.Integer, primary_key=True, autoincrement=False)
        text = sqlalchemy.Column(sqlalchemy.String(40))

    app = Flask("fsa-app")
    app.config["SQLALCHEMY_DATABASE_URI"] = engine_url(backend.url).render_as_string(
        hide_password=False
    )
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(pool_size=2, max_overflow=0)
    db.init_app(app)
    errors: list[BaseException] = []
    with app.app_context():
        assert isinstance(db.engine.pool, SQLAlchemyPool)
        db.create_all()
    try:

        def work(worker: int) -> None:
            try:
                for step in range(10):
                    with app.app_context():
                        db.session.add(Note(id=worker * 100 + step, text=f"w{worker}"))
                        db.session.commit()
                        assert db.session.get(Note, worker * 100 + step) is not None
            except BaseException as error:  # reported below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors[:3]
        with app.app_context():
            assert db.session.query(Note).count() == 160
            pool = db.engine.pool
        stats = pool.stats()  # the app context ended: its session gave the connection back
        assert stats.open <= 2 and stats.timeouts == 0 and stats.in_use == 0
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


# ---------------------------------------------------------------------- maintenance


def test_leak_report_names_the_code_that_holds_the_connection(
    postgres_url: str, make_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(postgres_url, pool_size=1, max_overflow=0, leak_threshold=0.05)

    def view_that_forgets_its_connection() -> Any:
        return engine.connect()

    held = view_that_forgets_its_connection()
    try:
        time.sleep(0.1)
        with caplog.at_level("WARNING", logger="flask_dbpool.leaks"):
            engine.pool.run_maintenance()
        (record,) = [r for r in caplog.records if r.name == "flask_dbpool.leaks"]
        message = record.getMessage()
        assert "leak_threshold" in message
        # The checkout site skips SQLAlchemy's own frames: the innermost is the caller's.
        assert "in view_that_forgets_its_connection" in message
        assert engine.pool.stats().leaks_detected == 1
    finally:
        held.close()


def test_idle_timeout_and_min_idle(postgres_url: str, make_engine: Any) -> None:
    engine = make_engine(postgres_url, pool_size=3, max_overflow=0, idle_timeout=0.2, min_idle=1)
    conns = [engine.connect() for _ in range(3)]
    for conn in conns:
        conn.close()
    pool = engine.pool
    assert pool.stats().idle == 3
    deadline = time.monotonic() + 15
    # The maintenance thread closes those idle past idle_timeout, down to min_idle.
    while pool.stats().open > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = pool.stats()
    assert stats.open == 1 and stats.closed_by_reason["idle"] == 2
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_max_lifetime_retires_a_connection_when_it_comes_back(
    postgres_url: str, make_engine: Any
) -> None:
    engine = make_engine(postgres_url, pool_size=1, max_overflow=0, max_lifetime=0.1)
    conn = engine.connect()
    first_pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    time.sleep(0.15)
    engine.pool.run_maintenance()  # lent past its lifetime: marked, closed on return
    conn.close()
    assert engine.pool.stats().closed_by_reason["lifetime"] == 1
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != first_pid


def test_keepalive_discards_a_dead_idle_connection(postgres_url: str, make_engine: Any) -> None:
    import psycopg

    engine = make_engine(postgres_url, pool_size=1, max_overflow=0, keepalive_interval=0.1)
    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    time.sleep(0.15)
    engine.pool.run_maintenance()
    stats = engine.pool.stats()
    assert stats.closed_by_reason["ping_failed"] == 1 and stats.open == 0
    with engine.connect() as conn:  # a new one
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid


# ---------------------------------------------------------------------- metrics


def test_prometheus_reports_an_engines_pool(postgres_url: str, make_engine: Any) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from flask_dbpool.metrics.prometheus import PoolCollector

    engine = make_engine(postgres_url, pool_size=2, max_overflow=0, name="orders_sa")
    registry = prometheus_client.CollectorRegistry()
    registry.register(PoolCollector(engine.pool))
    held = engine.connect()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    text_out = prometheus_client.generate_latest(registry).decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text_out)
        for sample in family.samples
    }
    orders = (("pool_name", "orders_sa"),)
    assert samples[("flask_dbpool_checkouts_total", orders)] == 2
    assert samples[("db_client_connection_count", (*orders, ("state", "used")))] == 1
    assert samples[("db_client_connection_count", (*orders, ("state", "idle")))] == 1
    assert samples[("db_client_connection_use_time_seconds_count", orders)] == 1
    assert samples[("flask_dbpool_connections_created_total", orders)] == 2
    held.close()


def test_opentelemetry_reports_an_engines_pool(postgres_url: str, make_engine: Any) -> None:
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from flask_dbpool.metrics.otel import instrument_pool

    engine = make_engine(postgres_url, pool_size=1, max_overflow=0, name="billing_sa")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        instrument_pool(engine.pool, meter_provider=provider)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        data = reader.get_metrics_data()
        assert data is not None
        found = {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        (creates,) = found["db.client.connection.create_time"].data.data_points
        assert creates.count == 1 and creates.attributes["db.client.connection.pool.name"] == (
            "billing_sa"
        )
        (uses,) = found["db.client.connection.use_time"].data.data_points
        assert uses.count == 1
    finally:
        provider.shutdown()


# ---------------------------------------------------------------------- review findings


def test_a_connection_the_garbage_collector_returns_under_the_lock_does_not_deadlock(
    postgres_url: str, make_engine: Any
) -> None:
    """SQLAlchemy returns a connection dropped without close() from a weakref finalizer,
    which the cyclic GC runs at any allocation, also one made while this thread holds the
    pool's lock (here: inside stats()). Such a return is finished once the lock is free."""
    import gc

    engine = make_engine(postgres_url, pool_size=2, max_overflow=0)
    pool = engine.pool
    threshold = gc.get_threshold()
    outcome: list[str] = []

    def drop_and_collect() -> None:
        for level in range(1, 60):
            gc.disable()
            raw = engine.raw_connection()
            cycle: list[Any] = [raw]
            cycle.append(cycle)  # only the cyclic GC can return it
            del raw, cycle
            gc.set_threshold(level)
            gc.enable()
            pool.stats()  # allocates under the lock: the GC may run there
            gc.collect()
        outcome.append("done")

    worker = threading.Thread(target=drop_and_collect, daemon=True)
    try:
        worker.start()
        worker.join(60)
    finally:
        gc.set_threshold(*threshold)
        gc.enable()
    assert outcome == ["done"], "the thread hung: a return waited for its own lock"
    deadline = time.monotonic() + 10
    while pool.stats().in_use and time.monotonic() < deadline:
        time.sleep(0.01)  # returns deferred to a helper thread finish
    stats = pool.stats()
    assert stats.in_use == 0 and stats.open <= 2


@pytest.mark.parametrize("event_name", ["use", "create"])
def test_an_observer_that_raises_loses_no_slot(
    sqlite_url: str, make_engine: Any, event_name: str
) -> None:
    engine = make_engine(sqlite_url, pool_size=1, max_overflow=0, pool_timeout=2)
    pool = engine.pool
    pool.track_use_time()

    raised: list[str] = []

    def observer(event: str, seconds: float) -> None:
        if event == event_name and not raised:
            raised.append(event)
            raise RuntimeError("observer failed")

    pool.add_observer(observer)
    with pytest.raises(RuntimeError, match="observer failed"):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    assert raised == [event_name]
    assert pool.stats().in_use == 0  # the books were done before the observer ran
    with engine.connect() as conn:  # the slot was not lost: no timeout
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_dispose_stops_the_old_pools_maintenance(postgres_url: str, make_engine: Any) -> None:
    """engine.dispose() drops the pool; a connection still checked out keeps it alive, and
    its maintenance thread must not refill min_idle there meanwhile."""
    engine = make_engine(postgres_url, pool_size=3, max_overflow=0, min_idle=2)
    held = engine.connect()  # a request still running while the engine is disposed
    old = engine.pool
    deadline = time.monotonic() + 10
    while old.stats().open < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # min_idle: maintenance opened 2 idle besides the held one
    assert old.stats().open == 3
    engine.dispose()
    assert old.stats().open == 1
    time.sleep(1.5)  # maintenance would have refilled min_idle within milliseconds
    assert old.stats().open == 1
    held.close()  # back to the old pool, as with QueuePool...
    old.dispose()  # ...which closes it (else the garbage collector would, noisily)
    with engine.connect() as conn:  # the new pool
        conn.execute(text("SELECT 1"))


# ---------------------------------------------------------------------- stress


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_stress_never_two_holders_never_over_the_maximum(
    backend: Backend, make_engine: Any
) -> None:
    """16 threads on 3 + 1 connections, with random invalidations, soft invalidations,
    errors inside the block, dropped connections left to the garbage collector and short
    timeouts: no DB-API connection is ever held by two threads, the pool never opens more
    than its maximum, and at the end every connection is accounted for."""
    import gc
    import random

    engine = make_engine(backend.url, pool_size=3, max_overflow=1, pool_timeout=0.2)
    pool = engine.pool
    held: dict[int, int] = {}  # id(DB-API connection) -> thread ident
    books = threading.Lock()
    problems: list[str] = []
    counts = {"served": 0, "timeouts": 0, "invalidated": 0, "dropped": 0}
    stop = time.monotonic() + 4

    def work(seed: int) -> None:
        rng = random.Random(seed)
        me = threading.get_ident()
        while time.monotonic() < stop:
            try:
                conn = engine.connect()
            except exc.TimeoutError:
                with books:
                    counts["timeouts"] += 1
                continue
            dbapi = id(conn.connection.dbapi_connection)
            with books:
                if dbapi in held:
                    problems.append(f"connection {dbapi} held by two threads")
                held[dbapi] = me
                counts["served"] += 1
                if pool.stats().open > 4:
                    problems.append(f"over the maximum: {pool.stats()}")
            roll = rng.random()
            try:
                conn.execute(text("SELECT 1"))
                if roll < 0.05:
                    raise RuntimeError("the application failed")
            except RuntimeError:
                pass
            finally:
                with books:
                    held.pop(dbapi, None)
                if roll < 0.1:
                    conn.invalidate()
                    with books:
                        counts["invalidated"] += 1
                elif roll < 0.15:
                    conn.connection.invalidate(soft=True)
                if roll > 0.97:
                    with books:
                        counts["dropped"] += 1
                    del conn  # returned by SQLAlchemy's finalizer
                    gc.collect()
                else:
                    conn.close()
            if roll < 0.5:  # contention comes and goes: returns go to waiters and to idle
                time.sleep(rng.random() * 0.004)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    gc.collect()
    deadline = time.monotonic() + 10
    while pool.stats().in_use and time.monotonic() < deadline:  # finalizer returns
        time.sleep(0.02)
    assert not problems, problems[:5]
    stats = pool.stats()
    assert counts["served"] > 100 and counts["invalidated"] > 0, counts
    assert stats.in_use == 0 and stats.waiting == 0, stats
    assert stats.open == stats.idle <= 4, stats
    assert stats.acquired == counts["served"], (stats, counts)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
