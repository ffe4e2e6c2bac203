"""``on_connect``: run once per new connection, its settings stick, failures free the slot."""

from __future__ import annotations

from typing import Any

import pytest

from backends import Backend, MakePool, query
from flask_dbpool import ConfigError, Pool, PoolError

# Per backend: a session setting applied without committing, and how to read it back.
SETTINGS = {
    "sqlite": ("PRAGMA foreign_keys = ON", "PRAGMA foreign_keys", 1),
    "postgres": ("SET statement_timeout = '1234ms'", "SHOW statement_timeout", "1234ms"),
    "mysql": ("SET @dbpool_marker = 7", "SELECT @dbpool_marker", 7),
}


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_on_connect_runs_once_per_connection_and_its_settings_stick(
    backend: Backend, make_pool: MakePool
) -> None:
    apply_sql, read_sql, expected = SETTINGS[backend.name]
    calls: list[Any] = []

    def on_connect(raw: Any) -> None:
        calls.append(raw)
        cur = raw.cursor()
        cur.execute(apply_sql)  # in a transaction for psycopg: the pool must commit it
        cur.close()

    pool = make_pool(backend.url, pool_size=2, max_overflow=0, on_connect=on_connect)
    a, b = pool.acquire(), pool.acquire()
    a.close()
    b.close()
    for _ in range(5):
        with pool.connection() as conn:
            assert query(conn, read_sql)[0][0] == expected
    assert len(calls) == pool.stats().created == 2
    assert len({id(c) for c in calls}) == 2  # two distinct connections


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_failing_on_connect_closes_the_connection_and_frees_the_slot(
    backend: Backend, make_pool: MakePool
) -> None:
    opened: list[Any] = []

    def on_connect(raw: Any) -> None:
        opened.append(raw)
        raise RuntimeError("setup failed")

    pool = make_pool(backend.url, pool_size=1, max_overflow=0, on_connect=on_connect)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="setup failed"):
            pool.acquire(timeout=1)
    stats = pool.stats()
    assert (stats.open, stats.connecting, stats.created, stats.timeouts) == (0, 0, 0, 0), stats
    assert len(opened) == 2
    for raw in opened:  # closed by the pool, not leaked
        with pytest.raises(Exception):  # noqa: B017 -- the driver's "closed" error
            raw.cursor().execute("SELECT 1")


def test_on_connect_must_be_callable() -> None:
    with pytest.raises(ConfigError, match="on_connect"):
        Pool("sqlite:///:memory:", on_connect="PRAGMA foreign_keys = ON")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_on_connect_settings_survive_discard_resets(backend: Backend, make_pool: MakePool) -> None:
    def on_connect(raw: Any) -> None:
        cur = raw.cursor()
        cur.execute("SET application_name = 'from_hook'")
        cur.close()

    pool = make_pool(
        backend.url, pool_size=1, max_overflow=0, on_connect=on_connect, reset_on_return="discard"
    )
    for _ in range(3):
        with pool.connection() as conn:
            assert query(conn, "SHOW application_name")[0][0] == "from_hook"


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_on_connect_leaving_an_aborted_transaction_is_an_error(
    backend: Backend, make_pool: MakePool
) -> None:
    def on_connect(raw: Any) -> None:
        cur = raw.cursor()
        try:
            cur.execute("SELECT 1/0")
        except Exception:
            pass  # swallowed: the transaction is now aborted
        cur.close()

    pool = make_pool(backend.url, pool_size=1, max_overflow=0, on_connect=on_connect)
    with pytest.raises(PoolError, match="aborted transaction"):
        pool.acquire(timeout=1)
    assert pool.stats().open == 0
