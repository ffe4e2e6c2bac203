"""Growing in the background: a caller that finds nothing idle while connections are lent
queues for the first one free (a returned one, or one maintenance opened for the queue)
instead of paying a connect of its own. Real PostgreSQL; the connect is slowed by a gate the
test opens, so every step is ordered by events, not by timing."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from backends import MakePool, wait_until
from flask_dbpool import PooledConnection


class GatedConnect:
    """A connection target: opens a real psycopg connection; the attempts after the first
    ``free`` wait for ``gate`` (a slow network or login). Records which thread connected."""

    def __init__(self, url: str, free: int = 1) -> None:
        self.url = url
        self.free = free
        self.gate = threading.Event()
        self.threads: list[str] = []
        self.lock = threading.Lock()

    def __call__(self) -> Any:
        with self.lock:
            self.threads.append(threading.current_thread().name)
            gated = len(self.threads) > self.free
        if gated and not self.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        return psycopg.connect(self.url, autocommit=True)


class Borrower(threading.Thread):
    """Checks out one connection, notes its driver connection, returns it."""

    def __init__(self, pool: Any, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.pool = pool
        self.raw: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = self.pool.acquire(timeout=20)
            self.raw = conn.driver_connection
            conn.close()
        except BaseException as error:  # reported by the test
            self.error = error


def test_a_returned_connection_serves_the_waiter_before_a_slow_connect(
    postgres_url: str, make_pool: MakePool
) -> None:
    target = GatedConnect(postgres_url)
    pool = make_pool(target, pool_size=1, max_overflow=3, name="growth")
    first = pool.acquire()  # a cold pool: the caller connects itself
    assert target.threads == [threading.current_thread().name]
    borrowers = [Borrower(pool, f"borrower-{i}") for i in range(3)]
    for borrower in borrowers:
        borrower.start()
    # The queue asked maintenance for a connection; it is connecting (held at the gate).
    wait_until(lambda: len(target.threads) == 2, what="a background connect")
    assert target.threads[1].startswith("flask-dbpool maintenance")
    wait_until(lambda: pool.stats().waiting == 3, what="three waiters")
    # One at a time: the other waiters do not start connects of their own meanwhile.
    threading.Event().wait(0.2)  # time to start one, were they to
    assert len(target.threads) == 2 and pool.stats().connecting == 1
    raw = first.driver_connection
    first.close()  # handed to the oldest waiter, which returns it to the next, ...
    for borrower in borrowers:
        borrower.join(20)
        assert not borrower.is_alive() and borrower.error is None
        assert borrower.raw is raw  # all served by the connection already open
    target.gate.set()
    # The background connection arrives with nobody waiting: it stays idle for later.
    wait_until(lambda: pool.stats().connecting == 0, what="the background connect")
    stats = pool.stats()
    assert (stats.open, stats.idle, stats.created, stats.acquired) == (2, 2, 2, 4)
    assert len(target.threads) == 2


def test_the_background_connection_serves_the_waiter_when_nothing_comes_back(
    postgres_url: str, make_pool: MakePool
) -> None:
    target = GatedConnect(postgres_url)
    pool = make_pool(target, pool_size=1, max_overflow=1)
    held = pool.acquire()
    borrower = Borrower(pool, "borrower")
    borrower.start()
    wait_until(lambda: len(target.threads) == 2, what="a background connect")
    target.gate.set()
    borrower.join(20)
    assert borrower.error is None and borrower.raw is not held.driver_connection
    assert borrower.raw is not None
    held.close()
    assert pool.stats().created == 2


def test_timeout_zero_connects_at_once_while_connections_are_lent(
    postgres_url: str, make_pool: MakePool
) -> None:
    target = GatedConnect(postgres_url, free=2)
    pool = make_pool(target, pool_size=1, max_overflow=1)
    held = pool.acquire()
    other = pool.acquire(timeout=0)  # will not wait: connects itself
    assert isinstance(other, PooledConnection)
    assert target.threads == [threading.current_thread().name] * 2
    assert pool.stats().waits == 0
    other.close()
    held.close()


def test_on_connect_error_in_the_background_reaches_a_waiter(
    postgres_url: str, make_pool: MakePool
) -> None:
    calls: list[int] = []

    def on_connect(raw: Any) -> None:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("on_connect refused this one")

    pool = make_pool(postgres_url, pool_size=1, max_overflow=2, on_connect=on_connect)
    held = pool.acquire()
    # The background connect fails in on_connect; its slot goes to this waiter, which
    # connects itself and gets on_connect's error instead of waiting out its timeout.
    with pytest.raises(RuntimeError, match="on_connect refused this one"):
        pool.acquire(timeout=20)
    assert len(calls) == 3
    stats = pool.stats()
    assert (stats.open, stats.waiting, stats.connecting) == (1, 0, 0)
    raw = held.driver_connection
    held.close()
    with pool.connection() as conn:  # the pool still serves
        assert conn.driver_connection is raw
