"""``Pool.drain()``: every connection open now is retired (failover, rotated credentials),
idle ones at once and lent ones when they come back, against real servers; under load,
nothing lent after a drain is a connection from before it."""

from __future__ import annotations

import random
import threading
import time

import pytest

from backends import Backend, MakePool, query, wait_until
from flask_dbpool import PoolClosed


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_drain_closes_idle_now_and_lent_on_return(backend: Backend, make_pool: MakePool) -> None:
    url, sessions = backend.tagged()
    pool = make_pool(url, pool_size=3, max_overflow=0)
    held = pool.acquire()
    idle = [pool.acquire(), pool.acquire()]
    old = {backend.session_id(conn) for conn in [held, *idle]}
    for conn in idle:
        conn.close()
    assert sessions() == 3

    assert pool.drain() == 3
    wait_until(lambda: sessions() == 1, what="the two idle sessions closed")
    assert query(held, "SELECT 1") == [(1,)]  # the holder finishes undisturbed
    with pool.connection() as conn:  # a new one
        assert backend.session_id(conn) not in old
    held.close()  # retired on return
    wait_until(lambda: sessions() == 1, what="the lent session closed on return")
    stats = pool.stats()
    assert stats.closed_by_reason == {"drained": 3} and stats.open == 1, stats
    with pool.connection() as conn:
        assert backend.session_id(conn) not in old
    pool.close()
    with pytest.raises(PoolClosed):
        pool.drain()


def test_drain_under_load_never_lends_an_older_connection(
    postgres_url: str, make_pool: MakePool
) -> None:
    """12 threads on 4 + 2 connections, with random errors, while drain() runs again and
    again: every checkout that began after a drain returned gets a connection whose session
    began after that drain began (the server's backend_start); never over the maximum;
    every connection accounted for."""
    pool = make_pool(postgres_url, pool_size=4, max_overflow=2, timeout=10)
    born: dict[int, float] = {}  # backend pid -> its backend_start (epoch seconds)
    drained_at: list[tuple[float, float]] = []  # (drain began, drain returned), epoch
    problems: list[str] = []
    books = threading.Lock()
    stop = threading.Event()

    def work(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            asked = time.time()
            try:
                with pool.connection() as conn:
                    pid, started = query(
                        conn,
                        "SELECT pid, extract(epoch FROM backend_start)::float8 "
                        "FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                    )[0]
                    with books:
                        first_seen = born.setdefault(pid, started)
                        # A drain that returned before this checkout began must have
                        # retired every connection seen before that drain began.
                        for began, returned in drained_at:
                            if returned <= asked and first_seen < began:
                                problems.append(f"pid {pid} lent after the drain at {began}")
                        if pool.stats().open > 6:
                            problems.append(f"over the maximum: {pool.stats()}")
                    if rng.random() < 0.1:
                        raise RuntimeError("the application failed")
                    time.sleep(rng.random() * 0.003)
            except RuntimeError:
                pass

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    retired = 0
    try:
        for _ in range(8):
            time.sleep(0.15)
            began = time.time()
            retired += pool.drain()
            with books:
                drained_at.append((began, time.time()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not problems, problems[:3]
    stats = pool.stats()
    assert stats.in_use == 0 and stats.waiting == 0 and stats.open == stats.idle, stats
    assert stats.closed_by_reason.get("drained", 0) == retired > 0, (retired, stats)
    assert len(born) > retired // 2
