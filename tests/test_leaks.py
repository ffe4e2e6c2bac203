"""Leaks: who holds the connections, warnings past leak_threshold, dropped handles reclaimed.

All against real databases. The maintenance thread runs for real; a test that needs a
maintenance run at a given point makes it itself with ``pool.run_maintenance()`` rather than
waiting for the thread (nor patching its timing).
"""

from __future__ import annotations

import gc
import logging
import random
import threading
import time

import pytest

from backends import Backend, MakePool, Worker, query, wait_until
from flask_dbpool import Pool, PoolTimeout
from flask_dbpool.leaks import ORPHANS_DETECTABLE

needs_refcounts = pytest.mark.skipif(
    not ORPHANS_DETECTABLE, reason="dropped handles are detected through CPython refcounts"
)


def _check_out_and_drop(pool: Pool) -> None:
    conn = pool.acquire()
    query(conn, "SELECT 1")
    # The handle goes out of scope here without being returned.


@needs_refcounts
@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_dropped_handle_gives_its_slot_back(
    backend: Backend, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    url, count_sessions = backend.tagged()
    pool = make_pool(url, pool_size=1, max_overflow=0, timeout=10, leak_threshold=60)
    with caplog.at_level(logging.WARNING, logger="flask_dbpool"):
        _check_out_and_drop(pool)
        gc.collect()
        # The pool is exhausted by the leak; waiting wakes maintenance, which reclaims it.
        with pool.connection(timeout=10) as conn:
            assert query(conn, "SELECT 2") == [(2,)]
    s = pool.stats()
    assert s.reclaimed == 1, s
    assert (s.open, s.idle) == (1, 1), s
    assert count_sessions() <= 1  # the leaked session was closed, not kept beside the new one
    report = next(r.getMessage() for r in caplog.records if "garbage-collected" in r.message)
    assert "_check_out_and_drop" in report  # the checkout site (leak_threshold records it)
    assert "MainThread" in report


@needs_refcounts
def test_dropped_handle_without_tracking_still_reclaimed(
    sqlite_url: str, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(sqlite_url, pool_size=2, max_overflow=0, timeout=10)
    with caplog.at_level(logging.WARNING, logger="flask_dbpool"):
        for _ in range(2):
            _check_out_and_drop(pool)
        held = [pool.acquire(timeout=10), pool.acquire(timeout=10)]
    assert pool.stats().reclaimed == 2
    assert any("set leak_threshold" in r.getMessage() for r in caplog.records)
    for conn in held:
        conn.close()


@needs_refcounts
def test_live_handles_are_never_reclaimed_under_stress(
    sqlite_url: str, make_pool: MakePool
) -> None:
    """Maintenance scans for dropped handles again and again (at least 200 runs) while 12
    threads churn through a small pool (at least 1000 rounds each, for as long as the
    scans go on): a handle still held must never be taken away (nor used twice)."""
    pool = make_pool(sqlite_url, pool_size=3, max_overflow=2, timeout=10, idle_timeout=0.05)
    in_hand: set[int] = set()
    guard = threading.Lock()
    scanned = threading.Event()  # maintenance has made its 200 runs
    churners = 12
    churned = threading.Semaphore(0)  # released once by each churner when it stops

    def maintain() -> int:
        runs = 0
        stopped = 0
        try:
            while runs < 200 or stopped < churners:  # on until every churner has stopped
                pool.run_maintenance()
                runs += 1
                time.sleep(0.001)  # leave the churners the lock in between
                if runs >= 200:
                    scanned.set()
                    while churned.acquire(blocking=False):
                        stopped += 1
        finally:  # done, even by a failure: the churners need not wait for it
            scanned.set()
        return runs

    def churn() -> int:
        rng = random.Random()
        rounds = 0
        try:
            while rounds < 1000 or not scanned.is_set():
                with pool.connection() as conn:
                    raw = id(conn.driver_connection)
                    with guard:
                        assert raw not in in_hand, "one connection in two hands"
                        in_hand.add(raw)
                    time.sleep(rng.random() / 1000)
                    assert query(conn, "SELECT 3") == [(3,)]
                    with guard:
                        in_hand.discard(raw)
                rounds += 1
        finally:  # stopped, even by a failure: maintenance need not go on for it
            churned.release()
        return rounds

    maintainer = Worker(maintain, "maintainer")
    workers = [Worker(churn, f"churn-{i}") for i in range(churners)]
    for worker in [*workers, maintainer]:
        worker.start()
    for worker in [*workers, maintainer]:
        worker.join(60)
        assert not worker.is_alive()
        assert worker.error is None, worker.error
    s = pool.stats()
    assert s.reclaimed == 0, s
    assert s.in_use == 0 and s.open == s.idle and s.open <= 5, s
    assert maintainer.result >= 200
    assert sum(worker.result for worker in workers) > 100


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_leak_warning_names_thread_and_checkout_site(
    backend: Backend, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(backend.url, pool_size=2, leak_threshold=0.2)
    taken = threading.Event()
    done = threading.Event()

    def hold_too_long() -> None:
        with pool.connection() as conn:
            query(conn, "SELECT 1")
            taken.set()
            assert done.wait(10)

    with caplog.at_level(logging.WARNING, logger="flask_dbpool"):
        worker = Worker(hold_too_long, "slow-report-thread")
        worker.start()
        try:
            assert taken.wait(10)
            time.sleep(0.3)  # held past leak_threshold
            pool.run_maintenance()
            assert pool.stats().leaks_detected == 1
            pool.run_maintenance()  # still held: no second warning for this checkout
            assert pool.stats().leaks_detected == 1
        finally:
            done.set()
            worker.join(15)
        assert worker.error is None, worker.error
        with pool.connection():  # a short hold: no warning
            pass
        time.sleep(0.3)  # as long after its checkout as the leak above
        pool.run_maintenance()
        pool.close()  # stops the maintenance thread: whatever it found is logged by now
    warnings = [r.getMessage() for r in caplog.records if "possible leak" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per checkout
    assert "slow-report-thread" in warnings[0]
    assert "hold_too_long" in warnings[0]  # the stack of the checkout
    assert "leak_threshold=0.2" in warnings[0]
    assert pool.stats().leaks_detected == 1


def test_pool_timeout_names_the_longest_holders(sqlite_url: str, make_pool: MakePool) -> None:
    pool = make_pool(sqlite_url, pool_size=1, max_overflow=0)
    taken = threading.Event()
    done = threading.Event()

    def hog() -> None:
        with pool.connection():
            taken.set()
            done.wait(10)

    worker = Worker(hog, "connection-hog")
    worker.start()
    assert taken.wait(10)
    try:
        time.sleep(0.2)
        with pytest.raises(PoolTimeout) as info:
            pool.acquire(timeout=0.1)
    finally:
        done.set()
        worker.join(10)
    message = str(info.value)
    assert "longest held: held " in message
    assert "by thread 'connection-hog'" in message
    held_for = float(message.split("longest held: held ")[1].split(" s")[0])
    assert held_for >= 0.2


def test_pool_timeout_names_checkout_site_when_tracking(
    sqlite_url: str, make_pool: MakePool
) -> None:
    pool = make_pool(sqlite_url, pool_size=1, max_overflow=0, leak_threshold=300)
    held = pool.acquire()
    with pytest.raises(PoolTimeout) as info:
        pool.acquire(timeout=0)
    held.close()
    assert "test_pool_timeout_names_checkout_site_when_tracking" in str(info.value)
    assert "MainThread" in str(info.value)


def test_flask_leak_report_names_the_request(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from flask import Flask

    from flask_dbpool import DBPool

    app = Flask("leaky")
    app.config.update(DBPOOL_URL=sqlite_url, DBPOOL_LEAK_THRESHOLD=0.1, DBPOOL_POOL_SIZE=1)
    db = DBPool(app)

    @app.post("/orders/<int:order>")
    def slow(order: int) -> str:
        query(db.connection, "SELECT 1")
        time.sleep(0.15)  # held past leak_threshold
        db.pool.run_maintenance()
        assert db.pool.stats().leaks_detected == 1
        return "ok"

    with caplog.at_level(logging.WARNING, logger="flask_dbpool"):
        assert app.test_client().post("/orders/7").status_code == 200
    app.extensions["dbpool"].close()
    report = next(r.getMessage() for r in caplog.records if "possible leak" in r.getMessage())
    assert "(POST /orders/<int:order>)" in report  # the route, never the raw path (item 13)
    assert "in slow" in report  # the view that checked it out


@needs_refcounts
def test_dropped_handles_reach_callers_already_waiting(
    sqlite_url: str, make_pool: MakePool
) -> None:
    """Handles dropped while callers are already queued: maintenance looks at least once a
    second while anyone waits, so the waiters get the reclaimed slots within their timeout."""
    pool = make_pool(sqlite_url, pool_size=2, max_overflow=0)
    held = [pool.acquire(), pool.acquire()]

    def wait_for_one() -> None:
        with pool.connection(timeout=3.5) as conn:
            assert query(conn, "SELECT 1") == [(1,)]

    waiters = [Worker(wait_for_one, f"waiter-{i}") for i in range(3)]
    for waiter in waiters:
        waiter.start()
    wait_until(lambda: pool.stats().waiting == 3, 5, "three queued callers")
    time.sleep(0.2)  # maintenance has looked already, found nothing and gone to sleep
    held.clear()  # both handles dropped without being returned
    gc.collect()
    for waiter in waiters:
        waiter.join(10)
        assert waiter.error is None, repr(waiter.error)
    assert pool.stats().reclaimed == 2


@needs_refcounts
def test_a_failing_log_handler_does_not_cost_the_slot(
    sqlite_url: str, make_pool: MakePool
) -> None:
    """Maintenance gives a dropped handle's slot back before it logs about it."""

    class Exploding(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:  # raises out of logger.warning
            if "garbage-collected" in record.getMessage():
                raise RuntimeError("log handler failed")

    handler = Exploding()
    leaks_logger = logging.getLogger("flask_dbpool.leaks")
    leaks_logger.addHandler(handler)
    try:
        pool = make_pool(sqlite_url, pool_size=1, max_overflow=0)
        _check_out_and_drop(pool)
        gc.collect()
        with pool.connection(timeout=5) as conn:
            assert query(conn, "SELECT 1") == [(1,)]
        wait_until(lambda: pool.stats().idle == 1, 5, "the connection back in the pool")
        assert pool.stats().open == 1
    finally:
        leaks_logger.removeHandler(handler)


def test_one_maintenance_thread_per_pool(sqlite_url: str, make_pool: MakePool) -> None:
    """Connections opened by many threads at once start one maintenance thread, not several,
    and close() stops it."""
    for round_ in range(10):
        pool = make_pool(sqlite_url, pool_size=8, max_overflow=0, name=f"race-{round_}")
        barrier = threading.Barrier(8)

        def open_one(pool: Pool = pool, barrier: threading.Barrier = barrier) -> None:
            barrier.wait(5)
            with pool.connection():
                time.sleep(0.01)

        workers = [Worker(open_one, f"opener-{i}") for i in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(10)
            assert worker.error is None, worker.error
        name = f"flask-dbpool maintenance 'race-{round_}'"
        threads = [t for t in threading.enumerate() if t.name == name]
        assert len(threads) == 1, threads
        pool.close()
        threads[0].join(5)
        assert not threads[0].is_alive()


@pytest.mark.parametrize("tracking", [False, True])
def test_checkouts_lists_who_holds_what(
    sqlite_url: str, make_pool: MakePool, tracking: bool
) -> None:
    options = {"leak_threshold": 300.0} if tracking else {}
    pool = make_pool(sqlite_url, pool_size=3, **options)
    first = pool.acquire()
    time.sleep(0.05)
    taken = threading.Event()
    release = threading.Event()

    def hold_in_thread() -> None:
        with pool.connection():
            taken.set()
            release.wait(10)

    worker = Worker(hold_in_thread, "report-builder")
    worker.start()
    assert taken.wait(10)
    try:
        with pool.connection():
            pass  # returned: not listed
        checkouts = pool.checkouts()
    finally:
        release.set()
        worker.join(10)
        first.close()
    assert [c.thread for c in checkouts] == ["MainThread", "report-builder"]  # longest first
    assert checkouts[0].held_seconds >= 0.05 > checkouts[1].held_seconds >= 0
    if tracking:
        assert checkouts[1].site is not None and "hold_in_thread" in checkouts[1].site
        assert checkouts[0].stack is not None and "test_checkouts_lists" in checkouts[0].stack
    else:
        assert checkouts[0].site is None and checkouts[0].stack is None
    assert checkouts[0].as_dict()["thread"] == "MainThread"
    assert pool.checkouts() == []


def test_a_checkout_label_lasts_for_that_checkout_only(
    sqlite_url: str, make_pool: MakePool
) -> None:
    pool = make_pool(sqlite_url, pool_size=1, max_overflow=0)
    conn = pool.acquire()
    pool.label_checkout(conn, "nightly-report")
    (listed,) = pool.checkouts()
    assert listed.label == "nightly-report" and listed.as_dict()["label"] == "nightly-report"
    conn.close()
    pool.label_checkout(conn, "too late")  # a returned handle: ignored
    again = pool.acquire()  # the same connection, a new checkout: no stale label
    try:
        (listed,) = pool.checkouts()
        assert listed.label is None
    finally:
        again.close()
