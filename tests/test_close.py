"""``close(timeout=…)``: stop lending, wait for borrowers, then leave no server session."""

from __future__ import annotations

import threading
import time

import pytest

from backends import Backend, MakePool, Worker, query, wait_until
from flask_dbpool import PoolClosed


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_close_waits_for_borrowed_connections(backend: Backend, make_pool: MakePool) -> None:
    url, count_sessions = backend.tagged()
    pool = make_pool(url, pool_size=2, max_overflow=0)
    pool.warm_up()
    borrowed = pool.acquire()

    def give_back_later() -> None:
        time.sleep(0.3)
        query(borrowed, "SELECT 1")  # still usable while the pool drains
        borrowed.close()

    worker = Worker(give_back_later)
    worker.start()
    pool.close(timeout=20)
    assert borrowed.returned  # close() returned only once the borrower had given it back
    worker.finish()
    assert pool.stats().open == 0
    with pytest.raises(PoolClosed):
        pool.acquire()
    wait_until(lambda: count_sessions() == 0, what="no server session left")


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_close_timeout_closes_connections_still_out(backend: Backend, make_pool: MakePool) -> None:
    url, count_sessions = backend.tagged()
    pool = make_pool(url, pool_size=2, max_overflow=0)
    kept = pool.acquire()
    query(kept, "SELECT 1")
    wait_until(lambda: count_sessions() == 1, what="one session")
    pool.close(timeout=0.2)  # the holder never gives it back in time
    wait_until(lambda: count_sessions() == 0, what="no server session left")
    with pytest.raises(Exception):  # noqa: B017 -- the driver's "closed" error
        query(kept, "SELECT 1")
    kept.close()  # a late return is accepted and frees the slot
    assert pool.stats().open == 0


def test_close_without_timeout_does_not_wait(sqlite_url: str, make_pool: MakePool) -> None:
    pool = make_pool(sqlite_url, pool_size=1)
    conn = pool.acquire()
    pool.close()  # returns at once; the connection is closed when it comes back
    assert pool.stats().in_use == 1
    conn.close()
    assert pool.stats().open == 0


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_close_also_closes_connections_awaiting_a_check(
    backend: Backend, make_pool: MakePool
) -> None:
    """A connection lent across a disconnect is checked by maintenance when it comes back;
    if the pool was closed meanwhile it must be closed, not parked for a check that will
    never run (that would leak its server session and keep close(timeout) waiting)."""
    url, count_sessions = backend.tagged()
    pool = make_pool(url, pool_size=2, max_overflow=0)
    broken, suspect = pool.acquire(), pool.acquire()
    backend.kill(backend.session_id(broken))
    with pytest.raises(backend.operational_error):
        with broken:
            query(broken, "SELECT 1")  # the disconnect makes `suspect` suspect too
    pool.close()
    suspect.close()
    s = pool.stats()
    assert (s.open, s.checking, s.idle) == (0, 0, 0), s
    pool.close(timeout=5)
    wait_until(lambda: count_sessions() == 0, 10, "the server sessions to end")


#: A statement that runs for about 30 s unless cancelled.
LONG_QUERY = {
    "postgres": "SELECT pg_sleep(30)",
    "mysql": "SELECT SLEEP(30)",
    # A recursive count to a billion: long CPU work inside SQLite.
    "sqlite": (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000)"
        " SELECT count(*) FROM c"
    ),
}


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_close_timeout_cancels_a_running_statement_and_keeps_its_word(
    backend: Backend, make_pool: MakePool
) -> None:
    """A holder is 30 s into a statement: close(timeout=0.5) cancels it (psycopg's cancel
    request, sqlite3's interrupt(), MySQL's KILL QUERY), closes the connection and returns
    within the timeout plus the bounded cancel time, leaving no server session."""
    from flask_dbpool.keeper import SHUTDOWN_BOUND

    if backend.name == "sqlite":
        url, count_sessions = backend.url, None
    else:
        url, count_sessions = backend.tagged()
    pool = make_pool(url, pool_size=2, max_overflow=0)
    holder = pool.acquire()
    outcome: list[object] = []
    started = threading.Event()

    def run_long() -> None:
        started.set()
        try:
            outcome.append(query(holder, LONG_QUERY[backend.name]))
        except Exception as error:  # cancelled: the driver's error
            outcome.append(error)
        finally:
            holder.close()

    worker = threading.Thread(target=run_long, daemon=True)
    worker.start()
    started.wait(5)
    time.sleep(0.3)  # the statement is running
    begin = time.monotonic()
    pool.close(timeout=0.5)
    took = time.monotonic() - begin
    assert took < 0.5 + SHUTDOWN_BOUND, f"close(timeout=0.5) took {took:.1f} s"
    worker.join(10)
    assert not worker.is_alive(), "the statement was not cancelled"
    (result,) = outcome
    # Cancelled: an error (PostgreSQL QueryCanceled, sqlite3 "interrupted"), or for MySQL's
    # SLEEP its early result, 1.
    assert isinstance(result, Exception) or result == [(1,)], result
    assert pool.stats().open == 0
    if count_sessions is not None:
        wait_until(lambda: count_sessions() == 0, what="no server session left")


def test_close_timeout_cancels_a_psycopg2_statement(postgres_url: str, make_pool: MakePool) -> None:
    """The same through psycopg2 (its ``cancel()``)."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed")
    from flask_dbpool.keeper import SHUTDOWN_BOUND

    pool = make_pool(postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    holder = pool.acquire()
    outcome: list[object] = []

    def run_long() -> None:
        try:
            outcome.append(query(holder, LONG_QUERY["postgres"]))
        except Exception as error:
            outcome.append(error)
        finally:
            holder.close()

    worker = threading.Thread(target=run_long, daemon=True)
    worker.start()
    time.sleep(0.3)
    begin = time.monotonic()
    pool.close(timeout=0.3)
    assert time.monotonic() - begin < 0.3 + SHUTDOWN_BOUND
    worker.join(10)
    assert not worker.is_alive()
    (error,) = outcome
    assert "cancel" in str(error).lower(), error
