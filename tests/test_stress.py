"""Concurrency stress against every real backend, and a stateful model of the pool.

The stress test runs 32 threads for a couple of seconds per backend with random hold times,
exceptions (some inside a transaction), invalidations, commits (explicit, or by the end of the
``with`` block), returns without commit and client-side settings changed by some borrowers,
while checking that no connection is ever in two hands, that no borrower sees another's
setting, and that the pool's gauges stay consistent; afterwards
nothing is leaked, on the pool's side or on the server's, and exactly the committed rows are
in the table.

The state machine drives a pool through random sequences of single-threaded operations and
compares its stats with a simple model of the counts after every step.
"""

from __future__ import annotations

import functools
import itertools
import random
import threading
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from backends import Backend, MakePool, Worker, query, wait_until
from flask_dbpool import Pool, PoolClosed, PooledConnection, PoolError, PoolTimeout

THREADS = 32
DURATION = 2.0
POOL_SIZE = 4
MAX_OVERFLOW = 4


class Boom(Exception):
    """The application error raised at random inside ``with pool.connection()`` blocks."""


def test_stress(backend: Backend, make_pool: MakePool) -> None:
    limit = POOL_SIZE + MAX_OVERFLOW
    if backend.has_server:
        url, count_sessions = backend.tagged()
    else:
        url, count_sessions = backend.url + "?timeout=20", None
    table = backend.new_table()
    # Overflow connections stay idle this long after a return, then maintenance closes them.
    grace = 0.05
    pool = make_pool(
        url,
        pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW,
        timeout=60,
        overflow_idle_timeout=grace,
    )
    # SQLite: take the write lock up front, or two deferred writers can deadlock (BUSY).
    begin = "BEGIN IMMEDIATE" if backend.name == "sqlite" else None
    insert = backend.sql(f"INSERT INTO {table} VALUES (%s, %s)")

    holders: dict[int, str] = {}  # id(raw connection) -> name of the thread holding it
    holders_lock = threading.Lock()
    problems: list[str] = []
    keys = itertools.count(1)
    counts_lock = threading.Lock()
    counts = dict.fromkeys(
        (
            "checkouts",
            "committed",
            "boom_in_txn",
            "boom",
            "invalidated",
            "rolled_back",
            "committed_by_with",
            "setting_changed",
        ),
        0,
    )
    # A client-side setting some borrowers change: every checkout must see the default.
    setting, default, changed = _client_setting(backend)
    stop = threading.Event()
    deadline = time.monotonic() + DURATION

    def bump(what: str) -> None:
        with counts_lock:
            counts[what] += 1

    def work(seed: int) -> None:
        rng = random.Random(seed)
        me = threading.current_thread().name
        while time.monotonic() < deadline:
            action = rng.random()
            try:
                with pool.connection() as conn:
                    raw = conn.driver_connection
                    key = id(raw)
                    with holders_lock:
                        if key in holders:
                            problems.append(f"{me} got a connection {holders[key]} holds")
                        holders[key] = me
                    released = False
                    try:
                        bump("checkouts")
                        if getattr(conn, setting) is not default:
                            problems.append(f"{me} got a connection with {setting} changed")
                        if rng.random() < 0.3:
                            setattr(conn, setting, changed)
                            bump("setting_changed")
                        hold = rng.uniform(0, 0.003)
                        if action < 0.45:
                            query(conn, "SELECT 1")
                            time.sleep(hold)
                            continue
                        if begin:
                            query(conn, begin)
                        query(conn, insert, (next(keys), "x"))
                        time.sleep(hold)
                        if action < 0.60:
                            bump("boom_in_txn")
                            raise Boom  # mid-transaction: must be rolled back
                        if action < 0.70:
                            bump("invalidated")
                            conn.invalidate()  # discards, uncommitted work with it
                            continue
                        if action < 0.75:
                            # Left open at the end of the with block: committed by it, as
                            # the driver's own `with conn:` does.
                            bump("committed_by_with")
                            continue
                        if action < 0.80:
                            bump("rolled_back")  # returned without commit: rolled back
                            with holders_lock:
                                del holders[key]
                            released = True
                            conn.close()
                            continue
                        conn.commit()
                        bump("committed")
                        if action < 0.90:
                            bump("boom")
                            raise Boom  # after the commit: the row stays
                    finally:
                        with holders_lock:
                            if released:
                                pass
                            elif holders.get(key) == me:
                                del holders[key]
                            else:
                                problems.append(f"{me} lost track of its connection")
            except Boom:
                pass

    def sample() -> None:
        while not stop.is_set():
            s = pool.stats()
            if not 0 <= s.open <= limit:
                problems.append(f"open out of bounds: {s}")
            if s.open != s.idle + s.in_use + s.connecting:
                problems.append(f"gauges do not add up: {s}")
            if count_sessions is not None and count_sessions() > limit + THREADS:
                # Closed sessions may linger briefly on the server; this only catches runaway.
                problems.append(f"runaway server sessions: {count_sessions()}")
            time.sleep(0.002)

    sampler = Worker(sample, "sampler")
    sampler.start()
    workers = [Worker(functools.partial(work, i), f"stress{i}") for i in range(THREADS)]
    for w in workers:
        w.start()
    try:
        for w in workers:
            w.finish(60)
    finally:
        stop.set()
        sampler.finish(10)

    assert not problems, problems[:10]
    assert counts["checkouts"] > THREADS, counts
    for what in (
        "committed",
        "boom_in_txn",
        "boom",
        "invalidated",
        "rolled_back",
        "committed_by_with",
        "setting_changed",
    ):
        assert counts[what] > 0, f"the run never did {what}: {counts}"

    s = pool.stats()
    assert (s.in_use, s.waiting, s.connecting) == (0, 0, 0), s
    assert s.open == s.idle, s
    assert s.open <= limit, s
    # Overflow closed once the burst is over: maintenance sees them idle, then retires those
    # idle for the grace period (run here rather than waiting for the thread).
    pool.run_maintenance()
    time.sleep(grace * 2)
    pool.run_maintenance()
    s = pool.stats()
    assert s.open == s.idle <= POOL_SIZE, s
    assert s.acquired == counts["checkouts"]
    assert s.closed >= counts["invalidated"]
    assert s.created - s.closed == s.open
    # Exactly the committed rows: nothing rolled back survived, nothing committed was lost.
    assert backend.count_rows(table) == counts["committed"] + counts["committed_by_with"]
    if count_sessions is not None:
        wait_until(lambda: count_sessions() == s.open, what="server sessions == pool's open")
    pool.close()
    assert pool.stats().open == 0
    if count_sessions is not None:
        wait_until(lambda: count_sessions() == 0, what="every session to end after close()")


def _client_setting(backend: Backend) -> tuple[str, object, object]:
    """(attribute, the driver's default, another value) of a client-side connection setting
    that must never cross borrowers (issue 17 item 5)."""
    if backend.name == "sqlite":
        import sqlite3

        return "row_factory", None, sqlite3.Row
    if backend.name == "postgres":
        from psycopg.rows import dict_row, tuple_row

        return "row_factory", tuple_row, dict_row
    import pymysql.cursors

    return "cursorclass", pymysql.cursors.Cursor, pymysql.cursors.DictCursor


# ---------------------------------------------------------------------- state machine

MODEL_POOL_SIZE = 2
MODEL_MAX_OVERFLOW = 1


class PoolMachine(RuleBasedStateMachine):
    """Single-threaded random use of a SQLite pool, checked against a model of the counts."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = Pool(
            "sqlite:///:memory:",
            pool_size=MODEL_POOL_SIZE,
            max_overflow=MODEL_MAX_OVERFLOW,
            timeout=1,
            name="model",
            overflow_idle_timeout=0,  # the model: overflow closed on return
        )
        self.held: list[PooledConnection] = []
        self.returned: list[PooledConnection] = []
        self.open = 0
        self.idle = 0
        self.created = 0
        self.closed_count = 0
        self.pool_closed = False

    # -- model helpers

    def _back(self, conn: PooledConnection) -> None:
        """Model a healthy connection coming back to the pool."""
        self.held.remove(conn)
        self.returned.append(conn)
        # Kept while fewer than pool_size are idle (none once the pool is closed).
        if not self.pool_closed and self.idle < MODEL_POOL_SIZE:
            self.idle += 1
        else:
            self.open -= 1
            self.closed_count += 1

    @initialize()
    def start(self) -> None:
        assert self.pool.stats().open == 0

    # -- rules

    @rule()
    def acquire(self) -> None:
        if self.pool_closed:
            try:
                self.pool.acquire(timeout=0)
            except PoolClosed:
                return
            raise AssertionError("acquire() on a closed pool did not raise PoolClosed")
        if self.idle == 0 and self.open == MODEL_POOL_SIZE + MODEL_MAX_OVERFLOW:
            try:
                self.pool.acquire(timeout=0)
            except PoolTimeout:
                return
            raise AssertionError("acquire() on an exhausted pool did not time out")
        conn = self.pool.acquire(timeout=0)
        # Whatever the previous borrower left, the connection comes back reset.
        assert not conn.driver_connection.in_transaction
        assert all(conn.driver_connection is not h.driver_connection for h in self.held)
        self.held.append(conn)
        if self.idle:
            self.idle -= 1
        else:
            self.open += 1
            self.created += 1

    @precondition(lambda self: self.held)
    @rule(data=st.data(), dirty=st.booleans())
    def release(self, data: st.DataObject, dirty: bool) -> None:
        conn = data.draw(st.sampled_from(self.held))
        if dirty:
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
            assert conn.in_transaction
        self.pool.release(conn)
        self._back(conn)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def close_handle(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self.held))
        conn.close()
        conn.close()  # idempotent
        self._back(conn)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def exception_in_with_block(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self.held))
        try:
            with conn:
                conn.execute("BEGIN")
                raise Boom
        except Boom:
            pass
        self._back(conn)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def invalidate(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self.held))
        conn.invalidate()
        self.held.remove(conn)
        self.returned.append(conn)
        self.open -= 1
        self.closed_count += 1

    @precondition(lambda self: self.returned)
    @rule(data=st.data())
    def misuse_returned_handle(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self.returned))
        for attempt in (lambda: self.pool.release(conn), lambda: conn.cursor()):
            try:
                attempt()
            except PoolError:
                continue
            raise AssertionError("a returned handle was usable")
        conn.close()  # still a no-op

    @rule()
    def warm_up(self) -> None:
        if self.pool_closed:
            try:
                self.pool.warm_up()
            except PoolClosed:
                return
            raise AssertionError("warm_up() on a closed pool did not raise PoolClosed")
        opened = self.pool.warm_up()
        assert opened == max(0, MODEL_POOL_SIZE - self.open)
        self.open += opened
        self.idle += opened
        self.created += opened

    @rule()
    def close_pool(self) -> None:
        self.pool.close()
        if not self.pool_closed:
            self.open -= self.idle
            self.closed_count += self.idle
            self.idle = 0
            self.pool_closed = True

    # -- invariants

    @invariant()
    def matches_model(self) -> None:
        s = self.pool.stats()
        assert s.open == s.idle + s.in_use + s.connecting, s
        assert 0 <= s.open <= MODEL_POOL_SIZE + MODEL_MAX_OVERFLOW, s
        assert (s.waiting, s.connecting) == (0, 0), s
        assert s.in_use == len(self.held), (s, len(self.held))
        assert (s.open, s.idle) == (self.open, self.idle), (s, self.open, self.idle)
        assert (s.created, s.closed) == (self.created, self.closed_count), s
        assert self.pool.closed == self.pool_closed

    def teardown(self) -> None:
        for conn in list(self.held):
            conn.close()
        self.pool.close()
        s = self.pool.stats()
        assert (s.open, s.idle, s.in_use) == (0, 0, 0), s


PoolMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pool_state_machine = PoolMachine.TestCase


def test_state_machine_model_catches_a_leak() -> None:
    """The model is strict enough to fail: a connection kept by the test shows as in use."""
    machine = PoolMachine()
    machine.start()
    machine.acquire()
    conn = machine.held.pop()  # the model "forgets" a checkout the pool still counts
    with pytest.raises(AssertionError):
        machine.matches_model()
    conn.close()
    machine.pool.close()
