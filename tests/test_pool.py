"""Core pool behaviour against every available real database (sqlite, postgres, mysql).

What the server sees is checked on the server (``pg_backend_pid()``, ``CONNECTION_ID()``,
``pg_stat_activity``, ``information_schema.processlist``), not only through the pool's stats.
"""

from __future__ import annotations

import functools
import inspect
import math
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from backends import Backend, MakePool, Worker, query, wait_until
from flask_dbpool import Pool, PoolClosed, PooledConnection, PoolError, PoolTimeout
from flask_dbpool.errors import ConfigError


def waiting_is(pool: Pool, n: int) -> Callable[[], bool]:
    return lambda: pool.stats().waiting == n


def assert_consistent(pool: Pool) -> None:
    s = pool.stats()
    assert s.open == s.idle + s.in_use + s.connecting, s
    assert 0 <= s.open <= s.pool_size + s.max_overflow, s
    assert s.idle >= 0 and s.in_use >= 0 and s.connecting >= 0 and s.waiting >= 0, s


def assert_quiescent(pool: Pool) -> None:
    """Nothing checked out, nobody waiting, every open connection idle."""
    s = pool.stats()
    assert (s.in_use, s.waiting, s.connecting) == (0, 0, 0), s
    assert s.open == s.idle, s


# ---------------------------------------------------------------------- reuse and limits


def test_sequential_checkouts_reuse_one_session(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=3, max_overflow=2)
    sessions = []
    for _ in range(100):
        with pool.connection() as conn:
            sessions.append(backend.session_id(conn))
    assert len({id(s) if backend.name == "sqlite" else s for s in sessions}) == 1
    s = pool.stats()
    assert s.created == 1
    assert s.acquired == 100
    assert (s.open, s.idle, s.closed) == (1, 1, 0)


def test_acquire_release_reuses_session(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=2)
    first = pool.acquire()
    sid = backend.session_id(first)
    pool.release(first)
    for _ in range(20):
        conn = pool.acquire()
        assert backend.session_id(conn) == sid
        conn.close()
    assert pool.stats().created == 1


def test_never_more_sessions_than_pool_size_plus_overflow(
    backend: Backend, make_pool: MakePool
) -> None:
    """32 threads hammer a pool of 3 + 2: the server never sees more than 5 of its sessions."""
    limit = 5
    if backend.has_server:
        url, counter = backend.tagged()
    else:
        url, counter = backend.url, None
    pool = make_pool(url, pool_size=3, max_overflow=2, timeout=60)

    # Server session id -> raw connection, to tell a live session from one the client has
    # already closed but whose server process is still exiting (that one is not held).
    raw_by_session: dict[Any, Any] = {}
    registry_lock = threading.Lock()
    stop = threading.Event()
    start = threading.Barrier(33)
    observed = {"server_max": 0, "open_max": 0, "samples": 0}
    problems: list[str] = []

    def sample() -> None:
        while not stop.is_set():
            s = pool.stats()
            observed["open_max"] = max(observed["open_max"], s.open)
            if s.open > limit or s.open != s.idle + s.in_use + s.connecting:
                problems.append(f"inconsistent stats {s}")
            if counter is not None:
                ids = counter.ids()
                with registry_lock:
                    live = {
                        i
                        for i in ids
                        if i not in raw_by_session or not backend.client_closed(raw_by_session[i])
                    }
                observed["server_max"] = max(observed["server_max"], len(live))
                if len(live) > limit:
                    problems.append(f"{len(live)} live server sessions: {sorted(live)}")
            observed["samples"] += 1

    def work() -> None:
        start.wait(10)
        for _ in range(20):
            with pool.connection() as conn:
                raw = conn.driver_connection
                with registry_lock:
                    raw_by_session[backend.client_session_id(raw)] = raw
                query(conn, "SELECT 1")
                time.sleep(0.001)

    sampler = Worker(sample, "sampler")
    sampler.start()
    workers = [Worker(work, f"w{i}") for i in range(32)]
    for w in workers:
        w.start()
    start.wait(10)
    for w in workers:
        w.finish(60)
    stop.set()
    sampler.finish(10)

    assert not problems, problems[:5]
    assert observed["samples"] > 0
    assert observed["open_max"] <= limit
    s = pool.stats()
    assert s.waits > 0, "the pool was never exhausted: the test did not exercise the limit"
    assert s.acquired == 32 * 20
    assert_quiescent(pool)
    assert s.open <= limit
    if counter is not None:
        assert 1 <= observed["server_max"] <= limit
        wait_until(lambda: counter() <= s.pool_size, what="overflow sessions to close")


# ---------------------------------------------------------------------- fairness


def test_waiters_are_served_first_come_first_served(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, timeout=30)
    held = pool.acquire()
    order: list[int] = []

    def waiter(index: int) -> None:
        conn = pool.acquire(timeout=30)
        order.append(index)
        pool.release(conn)

    threads = []
    for i in range(6):
        t = Worker(functools.partial(waiter, i), f"waiter{i}")
        t.start()
        threads.append(t)
        # Start the next one only once this one is queued.
        wait_until(waiting_is(pool, i + 1), what=f"waiter {i} to queue")
    pool.release(held)
    for t in threads:
        t.finish(20)
    assert order == list(range(6))
    assert_quiescent(pool)
    assert pool.stats().created == 1


def test_no_barging_past_waiters(backend: Backend, make_pool: MakePool) -> None:
    """A connection returned while a caller waits goes to that caller, never to idle: a
    newcomer's acquire(timeout=0) at that very instant fails."""
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, timeout=30)
    held = pool.acquire()
    sid = backend.session_id(held)
    for round_ in range(10):
        got = threading.Event()
        done = threading.Event()

        def wait_for_it(got: threading.Event = got, done: threading.Event = done) -> Any:
            conn = pool.acquire(timeout=30)
            got.set()
            done.wait(10)
            session = backend.session_id(conn)
            conn.close()
            return session

        t = Worker(wait_for_it, f"waiter{round_}")
        t.start()
        wait_until(lambda: pool.stats().waiting == 1, what="the waiter to queue")
        pool.release(held)
        # Handed over under the lock at release: nothing idle, the waiter owns it already.
        s = pool.stats()
        assert (s.idle, s.in_use, s.waiting) == (0, 1, 0), s
        with pytest.raises(PoolTimeout):
            pool.acquire(timeout=0)
        assert got.wait(10)
        with pytest.raises(PoolTimeout):
            pool.acquire(timeout=0)
        done.set()
        assert t.finish(10) == sid
        held = pool.acquire(timeout=0)
    pool.release(held)
    assert pool.stats().created == 1


# ---------------------------------------------------------------------- timeouts


def test_timeout_error_and_message(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=1, timeout=30, name="tmo-pool")
    a, b = pool.acquire(), pool.acquire()
    queued = Worker(lambda: pool.acquire(timeout=30).close(), "queued")
    queued.start()
    wait_until(lambda: pool.stats().waiting == 1, what="the first waiter to queue")

    with pytest.raises(PoolTimeout) as info:
        pool.acquire(timeout=0.2)
    err = info.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, PoolError)
    message = str(err)
    for part in ("'tmo-pool'", "pool_size=1", "max_overflow=1", "in_use=2", "waiting=2"):
        assert part in message, message
    waited = float(re.search(r"after (\d+\.\d+) s", message).group(1))  # type: ignore[union-attr]
    assert waited >= 0.2
    s = pool.stats()
    assert s.timeouts == 1
    assert s.waiting == 1  # the timed-out caller left the queue

    # timeout=0 does not wait at all: no wait is recorded, the message says 0 s.
    waits_before = pool.stats().waits
    with pytest.raises(PoolTimeout, match=r"after 0\.000 s"):
        pool.acquire(timeout=0)
    s = pool.stats()
    assert s.waits == waits_before
    assert s.timeouts == 2
    assert s.waiting == 1

    pool.release(a)  # goes to the queued waiter
    queued.finish(10)
    pool.release(b)
    assert_quiescent(pool)


def test_default_timeout_comes_from_the_pool(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, timeout=0.1)
    held = pool.acquire()
    with pytest.raises(PoolTimeout, match=r"after 0\.[1-9]\d* s|after [1-9]"):
        pool.acquire()
    held.close()
    assert pool.stats().timeouts == 1


@pytest.mark.parametrize("bad", [-1, -0.5, "1", True, math.nan])
def test_acquire_rejects_invalid_timeout(sqlite_url: str, make_pool: MakePool, bad: Any) -> None:
    pool = make_pool(sqlite_url, pool_size=1, max_overflow=0)
    pool.warm_up()
    with pytest.raises(ConfigError, match="timeout"):  # an idle connection is there
        pool.acquire(timeout=bad)
    held = pool.acquire()
    with pytest.raises(ConfigError, match="timeout"):  # exhausted
        pool.acquire(timeout=bad)
    held.close()
    assert_quiescent(pool)
    assert pool.stats().acquired == 1


# ---------------------------------------------------------------------- misuse


def test_use_after_return_raises(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=2)
    conn = pool.acquire()
    raw = conn.driver_connection
    assert not conn.returned
    conn.close()
    assert conn.returned
    for use in (
        lambda: conn.cursor(),
        lambda: conn.commit(),
        lambda: conn.rollback(),
        lambda: conn.driver_connection,
        lambda: setattr(conn, "autocommit", True),
    ):
        with pytest.raises(PoolError, match="returned"):
            use()
    conn.close()  # closing twice is fine
    conn.invalidate()  # so is invalidating a returned handle: nothing happens
    with pytest.raises(PoolError, match="returned"):
        pool.release(conn)
    assert "returned" in repr(conn)

    # The raw connection is back in the pool and still works for the next borrower.
    with pool.connection() as again:
        assert again.driver_connection is raw
        assert query(again, "SELECT 1") == [(1,)]
    assert pool.stats().created == 1


def test_release_to_another_pool_or_of_a_raw_connection(
    backend: Backend, make_pool: MakePool
) -> None:
    a = make_pool(backend.url, pool_size=1, name="pool-a")
    b = make_pool(backend.url, pool_size=1, name="pool-b")
    conn = a.acquire()
    with pytest.raises(PoolError, match="pool-a"):
        b.release(conn)
    with pytest.raises(PoolError):
        a.release(conn.driver_connection)
    with pytest.raises(PoolError):
        a.release(object())  # type: ignore[arg-type]
    # None of that returned it anywhere: still usable, still owned by pool-a.
    assert query(conn, "SELECT 1") == [(1,)]
    assert a.stats().in_use == 1
    assert b.stats().open == 0
    a.release(conn)
    assert_quiescent(a)


def test_with_block_returns_connection(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=1)
    with pool.connection() as conn:
        assert isinstance(conn, PooledConnection)
        assert pool.stats().in_use == 1
        assert query(conn, "SELECT 1") == [(1,)]
    assert conn.returned
    assert_quiescent(pool)
    # Closing inside the block is fine too.
    with pool.connection() as conn:
        conn.close()
    assert_quiescent(pool)
    assert pool.stats().acquired == 2


# ---------------------------------------------------------------------- reset on return


def test_uncommitted_work_is_rolled_back_on_return(backend: Backend, make_pool: MakePool) -> None:
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    conn = pool.acquire()
    sid = backend.session_id(conn)
    query(conn, backend.sql(f"INSERT INTO {table} VALUES (%s, %s)"), (1, "uncommitted"))
    assert query(conn, f"SELECT COUNT(*) FROM {table}") == [(1,)]
    pool.release(conn)

    conn = pool.acquire()
    assert backend.session_id(conn) == sid  # the same session: it was reset, not replaced
    assert query(conn, f"SELECT COUNT(*) FROM {table}") == [(0,)]
    assert backend.count_rows(table) == 0

    # Committed work stays.
    query(conn, backend.sql(f"INSERT INTO {table} VALUES (%s, %s)"), (2, "committed"))
    conn.commit()
    pool.release(conn)
    assert backend.count_rows(table) == 1
    with pool.connection() as conn:
        assert query(conn, f"SELECT id FROM {table}") == [(2,)]
    assert pool.stats().created == 1


def test_exception_in_with_block_rolls_back(backend: Backend, make_pool: MakePool) -> None:
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    with pytest.raises(RuntimeError, match="boom"):
        with pool.connection() as conn:
            query(conn, backend.sql(f"INSERT INTO {table} VALUES (%s, %s)"), (1, "x"))
            raise RuntimeError("boom")
    assert backend.count_rows(table) == 0
    with pool.connection() as conn:
        assert query(conn, f"SELECT COUNT(*) FROM {table}") == [(0,)]
    s = pool.stats()
    assert (s.created, s.closed) == (1, 0)  # an application error does not discard it


def test_failed_statement_then_return_leaves_session_usable(
    backend: Backend, make_pool: MakePool
) -> None:
    """PostgreSQL aborts the transaction on an error; the reset must clear that state."""
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    conn = pool.acquire()
    query(conn, backend.sql(f"INSERT INTO {table} VALUES (%s, %s)"), (1, "x"))
    with pytest.raises(Exception):  # noqa: B017 -- whichever ProgrammingError the driver has
        query(conn, "SELECT * FROM no_such_table_dbpool")
    pool.release(conn)
    with pool.connection() as conn:
        assert query(conn, f"SELECT COUNT(*) FROM {table}") == [(0,)]
    assert pool.stats().created == 1


def test_reset_on_return_false_leaves_the_transaction_to_the_caller(
    backend: Backend, make_pool: MakePool
) -> None:
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, reset_on_return=False)
    conn = pool.acquire()
    query(conn, backend.sql(f"INSERT INTO {table} VALUES (%s, %s)"), (1, "pending"))
    pool.release(conn)
    assert backend.count_rows(table) == 0  # not committed by the pool either

    # The next borrower is in the same, still open, transaction and decides its fate.
    conn = pool.acquire()
    assert query(conn, f"SELECT COUNT(*) FROM {table}") == [(1,)]
    conn.commit()
    pool.release(conn)
    assert backend.count_rows(table) == 1

    # An exception in a with block still rolls back, whatever reset_on_return says.
    with pytest.raises(RuntimeError):
        with pool.connection() as conn:
            query(conn, backend.sql(f"INSERT INTO {table} VALUES (%s, %s)"), (2, "x"))
            raise RuntimeError
    with pool.connection() as conn:
        assert query(conn, f"SELECT COUNT(*) FROM {table}") == [(1,)]
        conn.rollback()
    assert backend.count_rows(table) == 1


def test_idle_return_sends_no_rollback(backend: Backend, make_pool: MakePool) -> None:
    """The transaction-status fast path: returning an idle connection costs no ROLLBACK.

    Observable on MySQL through the session's ``Com_rollback`` counter (psycopg and sqlite3
    skip a rollback of an idle connection themselves, so there is nothing to observe).
    """
    if backend.name != "mysql":
        pytest.skip(f"{backend.name}: the driver itself skips an idle rollback; unobservable")
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    with pool.connection() as conn:
        before = backend.rollback_count(conn)  # type: ignore[attr-defined]
    for _ in range(5):
        with pool.connection() as conn:
            query(conn, "SELECT 1")
    conn = pool.acquire()
    assert backend.rollback_count(conn) == before  # type: ignore[attr-defined]
    # And it does count a real reset, so the assertion above can fail. (A release with
    # the transaction open rolls back; a ``with`` block would commit it.)
    query(conn, backend.sql(f"INSERT INTO {table} VALUES (%s, %s)"), (1, "x"))
    pool.release(conn)
    with pool.connection() as conn:
        assert backend.rollback_count(conn) == before + 1  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- broken connections


def _checkout_all_sessions(backend: Backend, pool: Pool, n: int) -> list[Any]:
    conns = [pool.acquire(timeout=5) for _ in range(n)]
    try:
        return [backend.session_id(c) for c in conns]
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize("in_transaction", [False, True], ids=["idle", "in-transaction"])
def test_killed_session_is_discarded_after_release(
    backend: Backend, make_pool: MakePool, in_transaction: bool
) -> None:
    if not backend.has_server:
        pytest.skip("sqlite has no server session to kill")
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=2, max_overflow=1)
    conn = pool.acquire()
    dead = backend.session_id(conn)
    if in_transaction:
        query(conn, backend.sql(f"INSERT INTO {table} VALUES (%s, %s)"), (1, "x"))
    else:
        conn.commit()
    backend.kill(dead)
    with pytest.raises(backend.operational_error):
        query(conn, "SELECT 1")
    pool.release(conn)
    s = pool.stats()
    assert (s.closed, s.open, s.idle, s.in_use) == (1, 0, 0, 0), s

    with pool.connection() as fresh:
        assert backend.session_id(fresh) != dead
        assert query(fresh, "SELECT 1") == [(1,)]
    # Never handed out again: every connection the pool can lend at once is alive.
    sessions = _checkout_all_sessions(backend, pool, 3)
    assert dead not in sessions
    assert backend.count_rows(table) == 0


def test_killed_session_is_discarded_by_with_block(backend: Backend, make_pool: MakePool) -> None:
    if not backend.has_server:
        pytest.skip("sqlite has no server session to kill")
    pool = make_pool(backend.url, pool_size=2, max_overflow=0)
    with pool.connection() as warm:
        query(warm, "SELECT 1")
    with pytest.raises(backend.operational_error):
        with pool.connection() as conn:
            dead = backend.session_id(conn)
            backend.kill(dead)
            query(conn, "SELECT 1")
    assert conn.returned
    s = pool.stats()
    assert (s.closed, s.open) == (1, 0), s
    with pool.connection() as fresh:
        assert backend.session_id(fresh) != dead
    assert dead not in _checkout_all_sessions(backend, pool, 2)


def test_killed_idle_session_in_pool_is_handed_out_broken_then_discarded(
    backend: Backend, make_pool: MakePool
) -> None:
    """The pool does not ping on checkout: a session killed while idle in the pool reaches
    the next borrower, whose error discards it; the one after gets a fresh session."""
    if not backend.has_server:
        pytest.skip("sqlite has no server session to kill")
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    with pool.connection() as conn:
        dead = backend.session_id(conn)
    backend.kill(dead)
    with pytest.raises(backend.operational_error):
        with pool.connection() as conn:
            query(conn, "SELECT 1")
    with pool.connection() as conn:
        assert backend.session_id(conn) != dead
    assert pool.stats().closed == 1


def test_invalidate_discards_and_frees_the_slot(backend: Backend, make_pool: MakePool) -> None:
    if backend.has_server:
        url, count_sessions = backend.tagged()
    else:
        url, count_sessions = backend.url, None
    pool = make_pool(url, pool_size=1, max_overflow=0)
    conn = pool.acquire()
    first = backend.session_id(conn)
    raw = conn.driver_connection
    conn.invalidate()
    assert conn.returned
    assert backend.client_closed(raw)
    s = pool.stats()
    assert (s.open, s.closed, s.in_use) == (0, 1, 0), s
    if count_sessions is not None:
        wait_until(lambda: count_sessions() == 0, what="the invalidated session to end")
    # The slot is free (max_overflow=0): the next checkout opens a new session at once.
    conn = pool.acquire(timeout=0)
    assert conn.driver_connection is not raw
    assert backend.session_id(conn) != first
    # invalidate() inside a with block: the exit is then a no-op.
    with conn:
        conn.invalidate()
    s = pool.stats()
    assert (s.open, s.closed, s.created) == (0, 2, 2), s


def test_invalidate_hands_the_slot_to_a_waiter(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, timeout=30)
    conn = pool.acquire()
    raw = conn.driver_connection
    waiter = Worker(lambda: pool.acquire(timeout=30), "waiter")
    waiter.start()
    wait_until(lambda: pool.stats().waiting == 1, what="the waiter to queue")
    conn.invalidate()
    got: PooledConnection = waiter.finish(20)
    assert got.driver_connection is not raw
    assert query(got, "SELECT 1") == [(1,)]
    got.close()
    s = pool.stats()
    assert (s.open, s.idle, s.created, s.closed) == (1, 1, 2, 1), s


# ---------------------------------------------------------------------- sizing


def test_overflow_connections_are_closed_on_return_without_grace(
    backend: Backend, make_pool: MakePool
) -> None:
    """overflow_idle_timeout=0: after a burst the pool shrinks back to pool_size at once,
    counted on the server. A returned connection is kept while fewer than pool_size are idle
    and closed once pool_size are idle."""
    if backend.has_server:
        url, count_sessions = backend.tagged()
    else:
        url, count_sessions = backend.url, None
    pool = make_pool(url, pool_size=2, max_overflow=3, overflow_idle_timeout=0)
    held = [pool.acquire() for _ in range(5)]
    raws = [c.driver_connection for c in held]
    if count_sessions is not None:
        assert count_sessions() == 5
    with pytest.raises(PoolTimeout):
        pool.acquire(timeout=0)
    expected = [(5, 1, 0), (5, 2, 0), (4, 2, 1), (3, 2, 2), (2, 2, 3)]  # open, idle, closed
    for conn, raw, (open_, idle, closed) in zip(held, raws, expected, strict=True):
        conn.close()
        s = pool.stats()
        assert (s.open, s.idle, s.closed) == (open_, idle, closed), s
        assert backend.client_closed(raw) == (closed > 0)
    if count_sessions is not None:
        wait_until(lambda: count_sessions() == 2, what="the overflow sessions to end")
    # The two kept (the first two returned) are the ones reused.
    with pool.connection() as a, pool.connection() as b:
        assert {a.driver_connection, b.driver_connection} == set(raws[:2])
    assert pool.stats().created == 5


def test_overflow_connections_are_reused_then_closed_after_the_grace_period(
    backend: Backend, make_pool: MakePool
) -> None:
    """Default: an overflow connection returned while demand lasts stays idle and is reused
    (no close-and-reopen churn); maintenance closes it once idle for overflow_idle_timeout,
    counted on the server, never below pool_size."""
    if backend.has_server:
        url, count_sessions = backend.tagged()
    else:
        url, count_sessions = backend.url, None
    grace = 0.3
    pool = make_pool(url, pool_size=2, max_overflow=3, overflow_idle_timeout=grace)
    for _ in range(3):  # bursts of 5 at once, back to back
        held = [pool.acquire() for _ in range(5)]
        for conn in held:
            conn.close()
        s = pool.stats()
        assert (s.open, s.idle, s.closed) == (5, 5, 0), s
    assert pool.stats().created == 5  # every burst after the first reused them
    if count_sessions is not None:
        assert count_sessions() == 5
    pool.run_maintenance()  # sees them idle
    time.sleep(grace * 1.5)
    pool.run_maintenance()
    s = pool.stats()
    assert (s.open, s.idle, s.closed_by_reason) == (2, 2, {"overflow": 3}), s
    if count_sessions is not None:
        wait_until(lambda: count_sessions() == 2, what="the overflow sessions to end")
    pool.run_maintenance()
    assert pool.stats().open == 2  # pool_size stays


def test_overflow_connections_closed_by_the_maintenance_thread(
    sqlite_url: str, make_pool: MakePool
) -> None:
    """Without anyone calling run_maintenance(): the thread schedules itself to retire them
    (about the grace period plus half of it)."""
    pool = make_pool(sqlite_url, pool_size=1, max_overflow=2, overflow_idle_timeout=0.2)
    held = [pool.acquire() for _ in range(3)]
    for conn in held:
        conn.close()
    assert pool.stats().open == 3
    wait_until(lambda: pool.stats().open == 1, timeout=5, what="the overflow to be closed")
    assert pool.stats().closed_by_reason == {"overflow": 2}


def test_warm_up_opens_pool_size_connections(backend: Backend, make_pool: MakePool) -> None:
    if backend.has_server:
        url, count_sessions = backend.tagged()
    else:
        url, count_sessions = backend.url, None
    pool = make_pool(url, pool_size=3, max_overflow=2)
    assert pool.warm_up() == 3
    s = pool.stats()
    assert (s.open, s.idle, s.created, s.acquired) == (3, 3, 3, 0), s
    if count_sessions is not None:
        assert count_sessions() == 3
    assert pool.warm_up() == 0
    with pool.connection():
        assert pool.warm_up() == 0  # an open connection counts, even checked out
    assert pool.stats().created == 3
    pool.close()
    with pytest.raises(PoolClosed):
        pool.warm_up()


# ---------------------------------------------------------------------- close


def test_close(backend: Backend, make_pool: MakePool) -> None:
    if backend.has_server:
        url, count_sessions = backend.tagged()
    else:
        url, count_sessions = backend.url, None
    pool = make_pool(url, pool_size=2, max_overflow=1, name="closing")
    pool.warm_up()
    held = pool.acquire()  # one checked out, one idle
    other = pool.acquire()
    idle_raw_conn = other.driver_connection
    other.close()
    s = pool.stats()
    assert (s.open, s.idle, s.in_use) == (2, 1, 1), s

    pool.close()
    assert pool.closed
    assert "closed" in repr(pool)
    s = pool.stats()
    assert (s.open, s.idle, s.in_use, s.closed) == (1, 0, 1, 1), s
    assert backend.client_closed(idle_raw_conn)
    if count_sessions is not None:
        wait_until(lambda: count_sessions() == 1, what="the idle session to end")

    with pytest.raises(PoolClosed):
        pool.acquire()
    with pytest.raises(PoolClosed):
        pool.acquire(timeout=0)
    # A checked-out connection keeps working until returned; then it is closed.
    assert query(held, "SELECT 1") == [(1,)]
    raw = held.driver_connection
    held.close()
    assert backend.client_closed(raw)
    s = pool.stats()
    assert (s.open, s.idle, s.in_use, s.closed) == (0, 0, 0, 2), s
    if count_sessions is not None:
        wait_until(lambda: count_sessions() == 0, what="every session to end")
    pool.close()  # idempotent


def test_close_wakes_waiters_with_pool_closed(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, timeout=30)
    held = pool.acquire()

    def wait() -> BaseException | None:
        try:
            pool.acquire(timeout=30)
        except PoolClosed as exc:
            return exc
        return None

    waiters = [Worker(wait, f"waiter{i}") for i in range(3)]
    for w in waiters:
        w.start()
    wait_until(lambda: pool.stats().waiting == 3, what="three waiters")
    pool.close()
    for w in waiters:
        assert isinstance(w.finish(10), PoolClosed)
    assert pool.stats().waiting == 0
    raw = held.driver_connection
    pool.release(held)
    assert backend.client_closed(raw)
    s = pool.stats()
    assert (s.open, s.idle, s.in_use, s.waiting) == (0, 0, 0, 0), s


def test_pool_as_context_manager_closes(backend: Backend) -> None:
    if backend.has_server:
        url, count_sessions = backend.tagged()
    else:
        url, count_sessions = backend.url, None
    with Pool(url, pool_size=2) as pool:
        pool.warm_up()
        if count_sessions is not None:
            assert count_sessions() == 2
    assert pool.closed
    assert pool.stats().open == 0
    if count_sessions is not None:
        wait_until(lambda: count_sessions() == 0, what="the pool's sessions to end")


# ---------------------------------------------------------------------- ordering


def test_lifo_hands_out_the_most_recently_returned(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=3, max_overflow=0, lifo=True)
    conns = [pool.acquire() for _ in range(3)]
    ids = [backend.session_id(c) for c in conns]
    for c in conns:
        c.close()
    for _ in range(5):
        with pool.connection() as conn:
            assert backend.session_id(conn) == ids[-1]


def test_fifo_idle_order_rotates(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=3, max_overflow=0, lifo=False)
    conns = [pool.acquire() for _ in range(3)]
    ids = [backend.session_id(c) for c in conns]
    for c in conns:
        c.close()
    seen = []
    for _ in range(6):
        with pool.connection() as conn:
            seen.append(backend.session_id(conn))
    assert seen == ids + ids


# ---------------------------------------------------------------------- sqlite :memory:


def test_sqlite_memory_is_shared_within_a_pool_and_private_to_it(make_pool: MakePool) -> None:
    import sqlite3

    one = make_pool("sqlite:///:memory:", pool_size=2)
    two = make_pool("sqlite:///:memory:", pool_size=2)
    a, b = one.acquire(), one.acquire()
    assert a.driver_connection is not b.driver_connection
    a.execute("CREATE TABLE shared (x INTEGER)")
    a.execute("INSERT INTO shared VALUES (7)")
    a.commit()
    assert b.execute("SELECT x FROM shared").fetchall() == [(7,)]
    with two.connection() as other:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            other.execute("SELECT x FROM shared")
    a.close()
    b.close()


# ---------------------------------------------------------------------- BaseException safety


def _wait_line(fragment: str) -> int:
    """The absolute line number of the line of ``Pool._wait`` containing ``fragment``."""
    lines, first = inspect.getsourcelines(Pool._wait)
    for offset, line in enumerate(lines):
        if fragment in line:
            return first + offset
    raise AssertionError(f"{fragment!r} not found in Pool._wait")


class _Interrupter:
    """A SIGALRM handler raising KeyboardInterrupt in the main thread while it is blocked in
    the pool's wait (and only there: a late signal is ignored, so a test never loses a
    connection handle to its own interrupt). Restores the previous handler and timer (used
    by pytest-timeout) on exit."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.code = Pool._wait.__code__
        self.line = _wait_line("waiter.signal.acquire")
        self.raised = 0
        self.raised_after_handoff = 0
        self.ignored = 0

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if frame is not None and frame.f_code is self.code and frame.f_lineno == self.line:
            self.raised += 1
            # The main thread is the only waiter: not queued any more means it was handed a
            # connection (or a slot) already, and the interrupt must pass it on.
            if self.pool.stats().waiting == 0:
                self.raised_after_handoff += 1
            raise KeyboardInterrupt
        self.ignored += 1

    def __enter__(self) -> _Interrupter:
        self._start = time.monotonic()
        self._old_timer = signal.setitimer(signal.ITIMER_REAL, 0)
        self._old_handler = signal.signal(signal.SIGALRM, self.handler)
        return self

    def arm(self, seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old_handler)
        remaining, interval = self._old_timer
        if remaining > 0:
            elapsed = time.monotonic() - self._start
            signal.setitimer(signal.ITIMER_REAL, max(remaining - elapsed, 0.001), interval)


needs_sigalrm = pytest.mark.skipif(
    not hasattr(signal, "setitimer"), reason="signal.setitimer is not available here"
)


@needs_sigalrm
def test_keyboard_interrupt_while_waiting_loses_no_slot(
    backend: Backend, make_pool: MakePool
) -> None:
    assert threading.current_thread() is threading.main_thread()
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, timeout=30)
    held = pool.acquire()
    with _Interrupter(pool) as interrupter, pytest.raises(KeyboardInterrupt):
        interrupter.arm(0.2)
        pool.acquire(timeout=10)
    assert interrupter.raised == 1
    s = pool.stats()
    assert (s.waiting, s.in_use, s.open) == (0, 1, 1), s
    pool.release(held)
    s = pool.stats()
    assert (s.idle, s.in_use) == (1, 0), s  # to idle: no phantom waiter took it
    with pool.connection(timeout=1) as conn:
        assert query(conn, "SELECT 1") == [(1,)]
    assert_quiescent(pool)


@needs_sigalrm
def test_keyboard_interrupt_racing_a_release_loses_no_slot(
    backend: Backend, make_pool: MakePool
) -> None:
    """The interrupt lands just before, at, or just after the moment the connection (or, for
    an invalidated one, a fresh slot) is handed to the interrupted waiter."""
    # No overflow: connections are not closed and reopened each round (MySQL connects slowly).
    pool = make_pool(backend.url, pool_size=3, max_overflow=0, timeout=30)
    rng = random.Random(1234)
    outcomes = {"interrupted": 0, "acquired": 0}
    with _Interrupter(pool) as interrupter:
        for i in range(50):
            holders = [pool.acquire(timeout=5) for _ in range(3)]  # exhaust the pool
            victim = holders[0]
            delay = rng.uniform(0.0, 0.003)
            invalidate = i % 3 == 0

            main_done = threading.Event()

            def hand_back(
                victim: PooledConnection = victim,
                delay: float = delay,
                invalidate: bool = invalidate,
                main_done: threading.Event = main_done,
            ) -> None:
                # Hand back soon after the main thread queued (or gave up before we saw it).
                while pool.stats().waiting == 0 and not main_done.is_set():
                    time.sleep(0.0001)
                end = time.perf_counter() + delay
                while time.perf_counter() < end:
                    pass
                if invalidate:
                    victim.invalidate()
                else:
                    victim.close()

            helper = Worker(hand_back, f"helper{i}")
            interrupter.arm(0.0005 + rng.uniform(0.0, 0.003))
            helper.start()
            got: PooledConnection | None = None
            try:
                got = pool.acquire(timeout=10)
            except KeyboardInterrupt:
                outcomes["interrupted"] += 1
            else:
                outcomes["acquired"] += 1
            main_done.set()
            signal.setitimer(signal.ITIMER_REAL, 0)
            helper.finish(10)
            if got is not None:
                got.close()
            for conn in holders[1:]:
                conn.close()
            s = pool.stats()
            assert s.waiting == 0 and s.in_use == 0 and s.connecting == 0, (i, s)
            assert s.open == s.idle, (i, s)
    assert outcomes["interrupted"] == interrupter.raised > 0, outcomes
    # The race was exercised: some interrupts came after the connection was handed over.
    assert interrupter.raised_after_handoff > 0
    # No slot lost: all pool_size + max_overflow connections can be had at once.
    conns = [pool.acquire(timeout=1) for _ in range(3)]
    for conn in conns:
        assert query(conn, "SELECT 1") == [(1,)]
        conn.close()
    assert_consistent(pool)
    assert_quiescent(pool)


@pytest.mark.skipif(sys.gettrace() is not None, reason="a tracer (debugger, coverage) is active")
def test_keyboard_interrupt_just_after_wakeup_loses_no_slot(
    sqlite_url: str, make_pool: MakePool
) -> None:
    """An asynchronous exception (KeyboardInterrupt from a signal handler, which runs at any
    bytecode boundary of the main thread) raised after the waiter was woken with a
    connection, but before that connection is wrapped and returned, must give the connection
    back. The exception is injected deterministically here, at the first line after the
    wake-up, with a trace function (no mocks: the database is real).
    """
    pool = make_pool(sqlite_url, pool_size=1, max_overflow=0, timeout=30)
    held = pool.acquire()

    def release_when_queued() -> None:
        wait_until(lambda: pool.stats().waiting == 1, 10, "the main thread to queue")
        held.close()

    helper = Worker(release_when_queued, "releaser")
    code = Pool._wait.__code__
    line = _wait_line("# woken up, or the wait ran out")
    fired: list[bool] = []

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == line and not fired:
            fired.append(True)
            raise KeyboardInterrupt
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code is code else None

    helper.start()
    sys.settrace(tracer)
    try:
        with pytest.raises(KeyboardInterrupt):
            pool.acquire(timeout=10)
    finally:
        sys.settrace(None)
    helper.finish(10)
    assert fired
    s = pool.stats()
    assert (s.waiting, s.in_use) == (0, 0), f"the handed-over connection was lost: {s}"
    with pool.connection(timeout=1) as conn:
        assert query(conn, "SELECT 1") == [(1,)]
