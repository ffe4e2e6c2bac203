"""``pool.resize()``: change the limits at runtime, under load."""

from __future__ import annotations

import random
import threading
import time

import pytest

from backends import Backend, MakePool, Worker, query, wait_until
from flask_dbpool import ConfigError, Pool, PoolClosed


def _use(pool: Pool) -> int:
    with pool.connection(timeout=20) as conn:
        return int(query(conn, "SELECT 1")[0][0])


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_growing_serves_waiters_at_once(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    held = pool.acquire()
    waiters = [Worker(lambda: _use(pool), name=f"w{i}") for i in range(3)]
    for w in waiters:
        w.start()
    wait_until(lambda: pool.stats().waiting == 3, what="3 waiting")
    pool.resize(pool_size=4)  # the held connection is never returned meanwhile
    assert [w.finish() for w in waiters] == [1, 1, 1]
    stats = pool.stats()
    assert (stats.pool_size, stats.waiting, stats.in_use) == (4, 0, 1), stats
    held.close()


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_shrinking_closes_surplus_and_never_exceeds_the_new_maximum(
    backend: Backend, make_pool: MakePool
) -> None:
    url, count_sessions = backend.tagged()
    pool = make_pool(url, pool_size=4, max_overflow=0)
    pool.warm_up()
    held = [pool.acquire() for _ in range(2)]
    pool.resize(pool_size=1, max_overflow=0)  # 2 idle closed now; 2 in use above the limit
    wait_until(lambda: count_sessions() == 2, what="idle surplus closed on the server")
    waiter = Worker(lambda: _use(pool))
    waiter.start()
    wait_until(lambda: pool.stats().waiting == 1, what="a waiter")
    held[0].close()  # closed, not handed over: the pool is still above its maximum
    assert pool.stats().open == 1 and pool.stats().waiting == 1
    held[1].close()  # now within the limit: goes to the waiter
    assert waiter.finish() == 1
    stats = pool.stats()
    assert (stats.open, stats.idle, stats.in_use) == (1, 1, 0), stats
    wait_until(lambda: count_sessions() == 1, what="one session left")


def test_resize_under_load_keeps_invariants(sqlite_url: str, make_pool: MakePool) -> None:
    pool = make_pool(sqlite_url, pool_size=3, max_overflow=2, timeout=20)
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        rng = random.Random()
        while not stop.is_set():
            try:
                with pool.connection() as conn:
                    query(conn, "SELECT 1")
                    time.sleep(rng.random() * 0.002)
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(12)]
    for t in threads:
        t.start()
    rng = random.Random(7)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        size, overflow = rng.randint(1, 5), rng.randint(0, 3)
        pool.resize(pool_size=size, max_overflow=overflow)
        s = pool.stats()
        assert s.open == s.idle + s.in_use + s.connecting, s
        time.sleep(0.02)
    pool.resize(pool_size=2, max_overflow=1)
    stop.set()
    for t in threads:
        t.join(20)
    assert not errors, errors[:3]
    s = pool.stats()
    assert (s.in_use, s.waiting) == (0, 0) and s.open <= 3, s


def test_invalid_resize_changes_nothing(sqlite_url: str) -> None:
    with Pool(sqlite_url, pool_size=2, max_overflow=1) as pool:
        with pytest.raises(ConfigError, match="pool_size"):
            pool.resize(pool_size=0)
        assert (pool.config.pool_size, pool.config.max_overflow) == (2, 1)
        pool.close()
        with pytest.raises(PoolClosed):
            pool.resize(pool_size=3)
