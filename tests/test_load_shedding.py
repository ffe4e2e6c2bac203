"""``max_waiting``: past that many waiting callers, ``acquire()`` fails at once."""

from __future__ import annotations

import time
from typing import Any

import pytest

from backends import Backend, MakePool, Worker, query, wait_until
from flask_dbpool import ConfigError, Pool, PoolError, TooManyWaiters


def _use_once(pool: Pool) -> Any:
    with pool.connection(timeout=20) as conn:
        return query(conn, "SELECT 1")[0][0]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_caller_beyond_max_waiting_is_refused_at_once(
    backend: Backend, make_pool: MakePool
) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, max_waiting=2, timeout=30)
    held = pool.acquire()
    waiters = [Worker(lambda: _use_once(pool), name=f"waiter-{i}") for i in range(2)]
    for i, worker in enumerate(waiters):
        worker.start()
        wait_until(lambda i=i: pool.stats().waiting == i + 1, what=f"{i + 1} waiting")

    started = time.monotonic()
    with pytest.raises(TooManyWaiters) as info:
        pool.acquire()  # would otherwise wait up to 30 s
    assert time.monotonic() - started < 10  # refused, not timed out (bound only stops a hang)
    message = str(info.value)
    assert isinstance(info.value, PoolError)
    assert "max_waiting=2" in message and "waiting=2" in message and repr(pool.name) in message
    stats = pool.stats()
    assert (stats.rejected, stats.timeouts, stats.waiting) == (1, 0, 2)

    held.close()  # the two queued callers are still served, in order
    assert [w.finish() for w in waiters] == [1, 1]
    assert pool.stats().in_use == 0


def test_zero_means_unlimited(sqlite_url: str, make_pool: MakePool) -> None:
    pool = make_pool(sqlite_url, pool_size=1, max_overflow=0)
    held = pool.acquire()
    waiters = [Worker(lambda: _use_once(pool), name=f"waiter-{i}") for i in range(20)]
    for worker in waiters:
        worker.start()
    wait_until(lambda: pool.stats().waiting == 20, what="20 waiting")
    held.close()
    assert [w.finish() for w in waiters] == [1] * 20
    assert pool.stats().rejected == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_invalid_max_waiting_is_a_config_error(bad: Any) -> None:
    with pytest.raises(ConfigError, match="max_waiting"):
        Pool("sqlite:///:memory:", max_waiting=bad)


def test_flask_key_is_validated_and_applied(sqlite_url: str) -> None:
    from flask import Flask

    from flask_dbpool import DBPool

    app = Flask("shedding")
    app.config.update(DBPOOL_URL=sqlite_url, DBPOOL_MAX_WAITING=-1)
    with pytest.raises(ConfigError, match="DBPOOL_MAX_WAITING"):
        DBPool(app)
    app = Flask("shedding")
    app.config.update(DBPOOL_URL=sqlite_url, DBPOOL_MAX_WAITING=3)
    DBPool(app)
    pool = app.extensions["dbpool"]
    assert pool.config.max_waiting == 3
    pool.close()
