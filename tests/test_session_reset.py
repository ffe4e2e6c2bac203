"""``reset_on_return``: "discard" (full PostgreSQL session reset) and custom callables."""

from __future__ import annotations

from typing import Any

import pytest

from backends import Backend, MakePool, query
from flask_dbpool import ConfigError, Pool


def _leave_session_state(conn: Any) -> None:
    query(conn, "SET statement_timeout = '1234ms'")
    query(conn, "SELECT set_config('app.user', 'alice', false)")
    query(conn, "CREATE TEMP TABLE dbpool_secret (v text)")
    conn.commit()


def _session_state(conn: Any) -> tuple[Any, ...]:
    timeout = query(conn, "SHOW statement_timeout")[0][0]
    user = query(conn, "SELECT current_setting('app.user', true)")[0][0]
    temp = query(conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'dbpool_secret'")[0][0]
    return timeout, user or None, temp


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_discard_hides_one_borrowers_session_state_from_the_next(
    backend: Backend, make_pool: MakePool
) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, reset_on_return="discard")
    with pool.connection() as conn:
        first_session = backend.session_id(conn)
        for _ in range(6):  # let psycopg prepare a statement server-side
            query(conn, "SELECT %s::int", (1,))
        _leave_session_state(conn)
    with pool.connection() as conn:
        assert backend.session_id(conn) == first_session  # same session, reset, not reopened
        assert _session_state(conn) == ("0", None, 0)
        for _ in range(6):  # prepared statements forgotten on both sides: still works
            assert query(conn, "SELECT %s::int", (2,)) == [(2,)]
    assert pool.stats().created == 1


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_default_reset_keeps_session_state(backend: Backend, make_pool: MakePool) -> None:
    """What "discard" is for: a plain rollback leaves committed session state behind."""
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    with pool.connection() as conn:
        _leave_session_state(conn)
    with pool.connection() as conn:
        assert _session_state(conn) == ("1234ms", "alice", 1)


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_callable_reset_runs_on_every_return(backend: Backend, make_pool: MakePool) -> None:
    calls: list[Any] = []
    table = backend.new_table()

    def reset(raw: Any) -> None:
        calls.append(raw)
        cur = raw.cursor()
        cur.execute(backend.sql(f"DELETE FROM {table}"))  # left open: the pool commits it
        cur.close()

    pool = make_pool(backend.url, pool_size=1, max_overflow=0, reset_on_return=reset)
    for i in range(3):
        with pool.connection() as conn:
            query(conn, backend.sql(f"INSERT INTO {table} (id, v) VALUES (%s, 'x')"), (i,))
            conn.commit()
    assert len(calls) == 3
    assert backend.count_rows(table) == 0  # the reset's DELETE was committed


def test_failing_callable_reset_discards_the_connection(sqlite_url: str) -> None:
    def reset(raw: Any) -> None:
        raise RuntimeError("cannot reset")

    with Pool(sqlite_url, pool_size=1, max_overflow=0, reset_on_return=reset) as pool:
        with pool.connection():
            pass
        stats = pool.stats()
        assert (stats.open, stats.closed) == (0, 1), stats
        with pool.connection() as conn:  # a fresh connection takes the slot
            assert query(conn, "SELECT 1") == [(1,)]


@pytest.mark.parametrize(
    "value", ["DISCARD", "none", 1, None], ids=["upper", "none", "int", "None"]
)
def test_invalid_reset_on_return(value: Any) -> None:
    with pytest.raises(ConfigError, match="reset_on_return"):
        Pool("sqlite:///:memory:", reset_on_return=value)


def test_discard_needs_postgresql() -> None:
    with pytest.raises(ConfigError, match="PostgreSQL only"):
        Pool("sqlite:///:memory:", reset_on_return="discard")
    with pytest.raises(ConfigError, match="PostgreSQL only"):
        Pool("mysql://root@127.0.0.1/test", reset_on_return="discard")
