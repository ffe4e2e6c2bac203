"""Growing under a burst: below the maximum, a caller that finds nothing idle while
connections are checked out first waits a little (half the pool's mean connect time, at most
half its timeout) for one to come back, then connects itself. Real PostgreSQL; connects are
slowed down by the target, so that "a little" is long enough to be observed on a busy
machine (``PoolState.patience``; the rules themselves are unit-tested in test_state.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from backends import MakePool, wait_until
from flask_dbpool import PooledConnection


class SlowConnect:
    """A connection target: a real psycopg connection, opened after ``delay`` seconds (a
    server across a network, TLS, a password exchange). Counts the connects."""

    def __init__(self, url: str, delay: float) -> None:
        self.url = url
        self.delay = delay
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self) -> Any:
        with self.lock:
            self.count += 1
        time.sleep(self.delay)
        return psycopg.connect(self.url, autocommit=True)


class Borrower(threading.Thread):
    """Checks out one connection, notes its driver connection, returns it."""

    def __init__(self, pool: Any, name: str, timeout: float = 30.0) -> None:
        super().__init__(name=name, daemon=True)
        self.pool = pool
        self.timeout = timeout
        self.raw: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = self.pool.acquire(timeout=self.timeout)
            self.raw = conn.driver_connection
            conn.close()
        except BaseException as error:  # reported by the test
            self.error = error


def test_a_connection_returned_in_time_serves_the_waiter_instead_of_a_connect(
    postgres_url: str, make_pool: MakePool
) -> None:
    # Connecting takes 3 s, so a caller waits up to 1.5 s for a connection to come back.
    target = SlowConnect(postgres_url, delay=3.0)
    pool = make_pool(target, pool_size=1, max_overflow=3, name="growth")
    first = pool.acquire()  # a cold pool: the caller connects itself
    borrowers = [Borrower(pool, f"borrower-{i}") for i in range(3)]
    for borrower in borrowers:
        borrower.start()
    wait_until(lambda: pool.stats().waiting == 3, what="three waiters")
    raw = first.driver_connection
    first.close()  # handed to the oldest waiter, which returns it to the next, ...
    for borrower in borrowers:
        borrower.join(30)
        assert not borrower.is_alive() and borrower.error is None
        assert borrower.raw is raw  # all served by the connection already open
    stats = pool.stats()
    assert (target.count, stats.created, stats.open, stats.acquired) == (1, 1, 1, 4)


def test_when_nothing_comes_back_the_waiter_connects_itself(
    postgres_url: str, make_pool: MakePool
) -> None:
    target = SlowConnect(postgres_url, delay=0.2)
    pool = make_pool(target, pool_size=1, max_overflow=1)
    held = pool.acquire()
    started = time.monotonic()
    other = pool.acquire(timeout=30)  # waits about 0.1 s, then opens its own
    assert other.driver_connection is not held.driver_connection
    assert time.monotonic() - started < 29  # not a timeout (the bound only stops a hang)
    stats = pool.stats()
    assert (target.count, stats.waits, stats.timeouts) == (2, 1, 0)
    other.close()
    held.close()


def test_timeout_zero_connects_at_once_while_connections_are_lent(
    postgres_url: str, make_pool: MakePool
) -> None:
    target = SlowConnect(postgres_url, delay=0.2)
    pool = make_pool(target, pool_size=1, max_overflow=1)
    held = pool.acquire()
    other = pool.acquire(timeout=0)  # will not wait: connects itself
    assert isinstance(other, PooledConnection)
    assert (target.count, pool.stats().waits) == (2, 0)
    other.close()
    held.close()


def test_max_waiting_does_not_refuse_callers_below_the_maximum(
    postgres_url: str, make_pool: MakePool
) -> None:
    """``max_waiting`` limits the queue of an exhausted pool; callers briefly waiting for a
    returned connection while slots are free are not refused."""
    target = SlowConnect(postgres_url, delay=0.4)
    pool = make_pool(target, pool_size=1, max_overflow=10, max_waiting=1)
    held = pool.acquire()
    borrowers = [Borrower(pool, f"borrower-{i}") for i in range(4)]
    for borrower in borrowers:
        borrower.start()
    for borrower in borrowers:
        borrower.join(30)
        assert borrower.error is None and borrower.raw is not None
    held.close()


def test_on_connect_error_reaches_the_caller_that_connects(
    postgres_url: str, make_pool: MakePool
) -> None:
    calls: list[int] = []

    def on_connect(raw: Any) -> None:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("on_connect refused this one")

    pool = make_pool(postgres_url, pool_size=1, max_overflow=2, on_connect=on_connect)
    held = pool.acquire()
    with pytest.raises(RuntimeError, match="on_connect refused this one"):
        pool.acquire(timeout=20)
    stats = pool.stats()
    assert (stats.open, stats.waiting, stats.connecting) == (1, 0, 0)
    raw = held.driver_connection
    held.close()
    with pool.connection() as conn:  # the pool still serves
        assert conn.driver_connection is raw
    wait_until(lambda: pool.stats().connecting == 0)
