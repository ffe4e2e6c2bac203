"""Pool statistics: closes by reason, wait and create time histograms, interval figures."""

from __future__ import annotations

import json
import threading
import time

import pytest

from backends import Backend, MakePool, Worker, query, wait_until
from flask_dbpool import PoolTimeout
from flask_dbpool.stats import CLOSE_REASONS, DURATION_BUCKETS


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_closed_by_reason_adds_up(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(
        backend.url, pool_size=1, max_overflow=2, idle_timeout=0.2, overflow_idle_timeout=0
    )
    a, b, c = pool.acquire(), pool.acquire(), pool.acquire()
    a.invalidate()  # invalidated
    b.close()  # kept idle (pool_size 1)
    c.close()  # overflow: one is idle already
    wait_until(lambda: pool.stats().closed_by_reason.get("idle", 0) == 1, 5, "the idle close")
    pool.resize(pool_size=1)
    d = pool.acquire()
    pool.close()
    d.close()  # returned to a closed pool
    s = pool.stats()
    assert s.closed_by_reason == {"invalidated": 1, "overflow": 1, "idle": 1, "pool_closed": 1}
    assert sum(s.closed_by_reason.values()) == s.closed == 4
    assert set(s.closed_by_reason) <= set(CLOSE_REASONS)


def test_create_and_wait_time_histograms(sqlite_url: str, make_pool: MakePool) -> None:
    pool = make_pool(sqlite_url, pool_size=1, max_overflow=0)
    held = pool.acquire()
    got = threading.Event()

    def wait_for_it() -> None:
        with pool.connection(timeout=5):
            got.set()

    waiter = Worker(wait_for_it, "waiter")
    waiter.start()
    wait_until(lambda: pool.stats().waiting == 1, 5, "the waiter")
    time.sleep(0.06)
    held.close()
    waiter.join(5)
    assert got.is_set()
    with pytest.raises(PoolTimeout):
        with pool.connection():
            pool.acquire(timeout=0.02)

    s = pool.stats()
    assert s.create_time.count == 1 and 0 < s.create_time.sum == s.create_time.max
    assert s.wait_time.count == 2 == s.waits  # the served wait and the timed-out one
    assert s.wait_time.max >= 0.05 and s.wait_time.sum == pytest.approx(s.wait_seconds_total)
    assert sum(s.wait_time.counts) == 2
    assert len(s.wait_time.counts) == len(DURATION_BUCKETS) + 1
    # the 0.06 s wait falls in the (0.05, 0.1] bucket
    assert s.wait_time.counts[DURATION_BUCKETS.index(0.1)] >= 1
    data = json.loads(json.dumps(s.as_dict()))
    assert data["wait_time"]["buckets"][-1]["le"] == "+Inf"
    assert data["closed_by_reason"] == {}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_since_gives_interval_figures(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=2)
    for _ in range(3):
        with pool.connection() as conn:
            query(conn, "SELECT 1")
    first = pool.stats()
    for _ in range(5):
        with pool.connection() as conn:
            query(conn, "SELECT 1")
    pool.acquire().invalidate()
    interval = pool.stats().since(first)
    assert interval.acquired == 6
    assert interval.closed == 1 and interval.closed_by_reason == {"invalidated": 1}
    assert interval.created == 0 and interval.create_time.count == 0  # reused the first one
    assert first.created == first.create_time.count == 1
    assert interval.open == pool.stats().open == 0  # gauges are the current ones
    assert pool.stats().acquired == 9  # totals themselves are never reset


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_use_time_once_tracked(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=2)
    with pool.connection():
        pass
    assert pool.stats().use_time.count == 0  # off by default: nothing on the return path
    pool.track_use_time()
    with pool.connection() as conn:
        time.sleep(0.03)
        query(conn, "SELECT 1")
    conn2 = pool.acquire()
    conn2.close()
    with pytest.raises(ZeroDivisionError):
        with pool.connection():
            1 / 0  # noqa: B018 -- returned through the exception path
    held = pool.acquire()
    held.invalidate()  # discarded, not returned: not a use
    s = pool.stats()
    assert s.use_time.count == 3, s.use_time
    assert s.use_time.max >= 0.03
    assert pool.stats().acquired == 5


def test_use_time_buckets_match_the_histogram_at_every_bound(
    sqlite_url: str, make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The return path records use time with its own inlined bucket choice; it must agree
    # with Histogram.record (bisect over the bounds) exactly, at and around each bound.
    import math

    import flask_dbpool.pool as pool_module
    from flask_dbpool.stats import Histogram

    pool = make_pool(sqlite_url, pool_size=1)
    pool.track_use_time()
    holds = [0.0, 5e-7, 1e9]
    for bound in DURATION_BUCKETS:
        holds += [math.nextafter(bound, 0.0), bound, math.nextafter(bound, math.inf)]
    pool.warm_up()  # opened on the real clock: from here on, only the fast path runs
    clock = [0.0]
    monkeypatch.setattr(pool_module, "_now", lambda: clock[0])
    expected = Histogram()
    for hold in holds:
        clock[0] = 0.0  # (a later start would round the hold away from the bound)
        conn = pool.acquire()
        clock[0] = hold
        pool.release(conn)  # the fast path: an idle connection going back to the pool
        expected.record(hold)
    monkeypatch.undo()
    got = pool.stats().use_time
    assert got == expected.snapshot()
    assert got.count == len(holds) and all(got.counts)  # every bucket was exercised


def test_acquired_never_goes_down_when_a_woken_waiter_is_interrupted(
    sqlite_url: str, make_pool: MakePool
) -> None:
    # A connection handed to a waiter that is interrupted (KeyboardInterrupt, gevent
    # Timeout) before taking it goes back to the pool; counters must stay monotonic.
    import ctypes

    class Interrupt(BaseException):
        pass

    pool = make_pool(sqlite_url, pool_size=1, max_overflow=0, min_idle=1, timeout=10)
    assert pool.stats().min_idle == 1
    held = pool.acquire()
    outcome: list[str] = []

    def wait_for_it() -> None:
        try:
            pool.acquire()
            outcome.append("got it")
        except Interrupt:
            outcome.append("interrupted")

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    wait_until(lambda: pool.stats().waiting == 1, 5, "the waiter")
    # Delivered when the waiter runs Python code again, i.e. once the hand-off woke it.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(waiter.ident or 0), ctypes.py_object(Interrupt)
    )
    seen = [pool.stats().acquired]
    pool.release(held)
    seen.append(pool.stats().acquired)
    waiter.join(5)
    seen.append(pool.stats().acquired)
    assert outcome == ["interrupted"]
    assert seen == sorted(seen) and seen[-1] == 1, seen
    s = pool.stats()
    assert (s.idle, s.in_use) == (1, 0), "the handed-over connection came back"
