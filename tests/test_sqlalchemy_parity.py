"""SQLAlchemyPool behaves as SQLAlchemy's QueuePool does where SQLAlchemy users depend on it:
the same pool events in the same order for the same script, a killed backend recovered with
``pool_pre_ping`` or replaced after the disconnect without it, and ``dispose(close=False)``
in a forked child. Real PostgreSQL and MariaDB sessions, killed from an admin connection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed")

from sqlalchemy import event, exc, text  # noqa: E402
from sqlalchemy.pool import QueuePool  # noqa: E402

from backends import Backend  # noqa: E402
from flask_dbpool.sqlalchemy import SQLAlchemyPool, engine_url  # noqa: E402
from forking import in_child  # noqa: E402

POOL_EVENTS = (
    "first_connect",
    "connect",
    "checkout",
    "checkin",
    "reset",
    "invalidate",
    "soft_invalidate",
    "close",
    "detach",
    "close_detached",
)


@pytest.fixture
def make_engine() -> Iterator[Any]:
    engines: list[Any] = []

    def make(url: str, poolclass: type = SQLAlchemyPool, **options: Any) -> Any:
        sa_url = engine_url(url).render_as_string(hide_password=False)
        engine = sqlalchemy.create_engine(sa_url, poolclass=poolclass, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


def _session_id(backend: Backend, conn: Any) -> Any:
    assert backend.session_id_sql is not None
    return conn.exec_driver_sql(backend.session_id_sql).scalar()


# ---------------------------------------------------------------------- disconnects


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_pre_ping_replaces_a_killed_connection(backend: Backend, make_engine: Any) -> None:
    engine = make_engine(backend.url, pool_size=1, max_overflow=0, pool_pre_ping=True)
    with engine.connect() as conn:
        killed = _session_id(backend, conn)
    backend.kill(killed)
    with engine.connect() as conn:  # the ping fails, SQLAlchemy reconnects in the same slot
        assert conn.execute(text("SELECT 1")).scalar() == 1
        assert _session_id(backend, conn) != killed
    stats = engine.pool.stats()
    assert (stats.open, stats.in_use, stats.timeouts) == (1, 0, 0), stats


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_without_pre_ping_a_disconnect_invalidates_and_is_replaced(
    backend: Backend, make_engine: Any
) -> None:
    engine = make_engine(backend.url, pool_size=2, max_overflow=0)
    first, second = engine.connect(), engine.connect()
    killed = {_session_id(backend, first), _session_id(backend, second)}
    first.close()
    second.close()
    for session in killed:
        backend.kill(session)
    with engine.connect() as conn, pytest.raises(exc.DBAPIError) as caught:
        conn.execute(text("SELECT 1"))
    assert caught.value.connection_invalidated
    # SQLAlchemy invalidated the whole pool: the other idle connection, opened before the
    # disconnect, is replaced at its next checkout instead of failing a second request.
    with engine.connect() as one, engine.connect() as two:
        fresh = {_session_id(backend, one), _session_id(backend, two)}
    assert not fresh & killed and len(fresh) == 2
    stats = engine.pool.stats()
    assert stats.open <= 2 and stats.in_use == 0, stats


# ---------------------------------------------------------------------- events


def _run_script(backend: Backend, make_engine: Any, poolclass: type) -> list[tuple[str, int]]:
    """One script of everything a pool sees, recording every pool event as ``(name, n)``, where
    ``n`` numbers connection records in the order they first appear (0 for none)."""
    engine = make_engine(backend.url, poolclass=poolclass, pool_size=2, max_overflow=0)
    seen: list[tuple[str, int]] = []
    records: dict[int, int] = {}

    def recorder(name: str) -> Any:
        def record(*args: Any) -> None:
            entry = args[1] if len(args) > 1 and name != "close_detached" else None
            number = records.setdefault(id(entry), len(records) + 1) if entry is not None else 0
            seen.append((name, number))

        return record

    for name in POOL_EVENTS:
        event.listen(engine, name, recorder(name))

    # Two at once, both returned.
    one, two = engine.connect(), engine.connect()
    one.execute(text("SELECT 1"))
    two.execute(text("SELECT 2"))
    one.close()
    two.close()
    # A transaction left open is reset on return.
    with engine.connect() as conn:
        conn.begin()
        conn.execute(text("SELECT 3"))
    # Hard and soft invalidation of one connection.
    with engine.connect() as conn:
        conn.invalidate()
    with engine.connect() as conn:
        conn.execute(text("SELECT 4"))
        conn.connection.invalidate(soft=True)
    with engine.connect() as conn:
        conn.execute(text("SELECT 5"))
    # A detached connection leaves the pool; closing it closes the DB-API connection.
    with engine.connect() as conn:
        conn.connection.detach()
    # A disconnect: SQLAlchemy invalidates the pool, older connections are replaced.
    with engine.connect() as conn:
        backend.kill(_session_id(backend, conn))
        with pytest.raises(exc.DBAPIError):
            conn.execute(text("SELECT 6"))
    with engine.connect() as conn:
        conn.execute(text("SELECT 7"))
    engine.dispose()
    return seen


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_events_fire_as_under_queuepool(backend: Backend, make_engine: Any) -> None:
    expected = _run_script(backend, make_engine, QueuePool)
    got = _run_script(backend, make_engine, SQLAlchemyPool)
    assert got == expected


# ---------------------------------------------------------------------- fork


def test_dispose_close_false_in_a_forked_child(postgres_url: str, make_engine: Any) -> None:
    """SQLAlchemy's recipe for fork: the child calls ``engine.dispose(close=False)`` and opens
    its own connections; the parent's, idle and lent, are neither used nor closed."""
    engine = make_engine(postgres_url, pool_size=2, max_overflow=0)
    held = engine.connect()
    held_pid = held.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with engine.connect() as conn:
        idle_pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    assert idle_pid != held_pid

    def child() -> str:
        engine.dispose(close=False)
        assert isinstance(engine.pool, SQLAlchemyPool)
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        engine.dispose()
        return str(pid)

    child_pid = int(in_child(child))
    assert child_pid not in (idle_pid, held_pid)
    assert held.exec_driver_sql("SELECT pg_backend_pid()").scalar() == held_pid
    held.close()
    with engine.connect() as one, engine.connect() as two:
        pids = {
            one.exec_driver_sql("SELECT pg_backend_pid()").scalar(),
            two.exec_driver_sql("SELECT pg_backend_pid()").scalar(),
        }
    assert pids == {idle_pid, held_pid}
    stats = engine.pool.stats()
    assert (stats.open, stats.created, stats.closed) == (2, 2, 0), stats
