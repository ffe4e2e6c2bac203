"""The threaded connection pool: the shell that acts on :class:`~flask_dbpool.state.PoolState`.

Every decision (who gets an item, when to open or close one, what a sweep retires) is made
by the state machine, under this pool's one lock; this class carries the decisions out:
threads wait on a :class:`~flask_dbpool._handoff.Waiter`, and the I/O (connecting, pinging,
resetting, closing) goes through :class:`~flask_dbpool.lifecycle.Lifecycle`, outside the
lock, with the slot it concerns accounted for before and after, so an exception at any point
(including ``KeyboardInterrupt`` or a gevent ``Timeout`` while waiting) never loses a slot.

The hot path (an idle connection available, an idle connection returned) stays inlined
here: one short critical section with no I/O, logging or allocation beyond the handle; a
checkout stamps its time and thread so that "who holds the connections" can always be
answered. Features that need work at checkout (``pre_ping``, ``on_checkout``,
``leak_threshold``, checking connections suspected dead after a disconnect) switch the pool to
a checked ``acquire``; features that need work on return route that entry's returns to the
slow path. Health work runs in a thread (:mod:`flask_dbpool.maintenance`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, TypeVar

from flask_dbpool import messages
from flask_dbpool._fork import abandon_inherited, track
from flask_dbpool._handoff import Waiter
from flask_dbpool.config import PoolConfig, check_timeout
from flask_dbpool.drivers import IDLE, resolve_target
from flask_dbpool.drivers.base import ServerLimits
from flask_dbpool.entry import Entry
from flask_dbpool.errors import ConfigError, PoolClosed, PoolTimeout, one_line
from flask_dbpool.keeper import Keeper, detached
from flask_dbpool.leaks import Checkout, TimeoutReport, capture_site, checkouts_of, describe_caller
from flask_dbpool.lifecycle import Lifecycle
from flask_dbpool.proxy import PooledConnection, entry_of, handle_for, set_entry
from flask_dbpool.state import CLOSED, CONNECT, NEW_SLOT, PROBE, PoolState, Refusal
from flask_dbpool.stats import DURATION_BUCKETS as _DURATION_BUCKETS
from flask_dbpool.stats import PoolStats
from flask_dbpool.transactions import run_transaction

__all__ = ["Pool", "live_pools"]

logger = logging.getLogger("flask_dbpool.pool")

_new_proxy = object.__new__
_bucket = bisect_left
_now = time.monotonic
# Every pool of this process, held weakly: the pytest plugin (flask_dbpool.testing) reads it.
_LIVE: weakref.WeakSet[Pool] = weakref.WeakSet()


def live_pools() -> list[Pool]:
    """Every pool of this process not yet garbage-collected (open or closed)."""
    return list(_LIVE)


_R = TypeVar("_R")
_OPTION_NAMES = PoolConfig.option_names()
_get_ident = threading.get_ident
#: A checkout ping gets at least this long, even when the caller's timeout is nearly spent.
_MIN_PING_TIMEOUT = 0.05


class Pool:
    """A thread-safe pool of DB-API 2.0 connections.

    ``target`` is a database URL (``sqlite:///app.db``, ``postgresql://user:pw@host/db``,
    ``mysql://user:pw@host/db`` …) or a zero-argument callable returning a new DB-API
    connection. Keyword options are described in :class:`~flask_dbpool.config.PoolConfig`;
    invalid values raise :class:`~flask_dbpool.ConfigError` naming the parameter.

    Connections are opened lazily (see :meth:`warm_up`, :meth:`wait_ready` and
    ``open_timeout``). Use :meth:`connection` in a ``with`` block, or :meth:`acquire` /
    :meth:`release`. ``with Pool(...) as pool:`` closes the pool on exit.
    """

    # Slots keep attribute access on the hot path at its cheapest (a plain instance dict
    # slows down once attributes are added after __init__; docs/benchmarks.md).
    __slots__ = ("__weakref__", "_keeper", "_lock", "_state", "config", "name")

    def __init__(
        self,
        target: str | Callable[[], Any],
        *,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: float = 30.0,
        name: str = "default",
        reset_on_return: bool | str | Callable[[Any], object] = True,
        lifo: bool = True,
        max_waiting: int = 0,
        on_connect: Callable[[Any], object] | None = None,
        on_checkout: Callable[[Any], object] | None = None,
        on_checkin: Callable[[Any], object] | None = None,
        pre_ping: bool = False,
        ping_interval: float = 1.0,
        max_lifetime: float | None = 1800.0,
        idle_timeout: float | None = 600.0,
        overflow_idle_timeout: float = 5.0,
        min_idle: int = 0,
        keepalive_interval: float | None = None,
        leak_threshold: float | None = None,
        open_timeout: float | None = None,
        describe_caller: Callable[[], str | None] | None = None,
        classify_error: Callable[[BaseException, Any], Any] | None = None,
        pgbouncer: str | None = None,
        **unknown: object,
    ) -> None:
        if unknown:  # a ConfigError naming the option, not Python's bare TypeError
            PoolConfig.from_options(unknown)
        # Every keyword above is a PoolConfig option, by the same name (a test checks it).
        options = {key: value for key, value in locals().items() if key in _OPTION_NAMES}
        self.config: PoolConfig = PoolConfig.from_options(options)
        config = self.config
        self.name: Final = config.name
        life = Lifecycle(resolve_target(target), config, self)
        life.check_settings()
        self._fresh_state(life, closed=False)
        _LIVE.add(self)
        track(self._after_fork_in_child)
        if config.min_idle:
            self._keeper.nudge()  # maintenance opens them
        if config.open_timeout is not None:
            try:
                self.wait_ready(config.open_timeout)
            except BaseException:
                self.close()
                raise

    def _fresh_state(self, life: Lifecycle, *, closed: bool) -> None:
        """A pool with nothing open: at construction, and in a forked child (where the
        parent's lock may have been held by another thread)."""
        state: PoolState[Entry] = PoolState(
            self.config, target=life.connector.description, closed=closed
        )
        self._keeper = Keeper(self, life, state)
        # The hot path's own references (one attribute load each, not two).
        self._lock = self._keeper.lock
        self._state = state

    # ------------------------------------------------------------------ public API

    @property
    def target(self) -> str:
        """The redacted URL (or the callable's name) connections are opened from."""
        return self._keeper.life.connector.description

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._state.closed

    def acquire(self, timeout: float | None = None) -> PooledConnection:
        """Check a connection out of the pool.

        Waits up to ``timeout`` seconds (default: the pool's ``timeout``; ``0`` means do not
        wait) for a connection, served first come, first served. Raises
        :class:`~flask_dbpool.PoolTimeout` when none became available (its message says what
        the pool was doing, who holds the connections and, while the database cannot be
        reached, the last connection error, also set as ``__cause__``),
        :class:`~flask_dbpool.PoolClosed` if the pool is closed, the driver's error at once
        if the server rejected the login (wrong credentials, unknown database …), and what
        ``on_connect`` or ``on_checkout`` raised. Return the connection with :meth:`release`
        or its ``close()``.

        ``connection`` is the same method, named for ``with`` blocks:
        ``with pool.connection() as conn:`` commits when the block ends normally and rolls
        back when it raised (as the driver's own ``with conn:`` does), then returns the
        connection; one the error shows to be broken is discarded.
        """
        if timeout is not None:
            check_timeout(timeout)  # also on the fast path: a bad value must not wait for load
        state = self._state
        if state.check_on_acquire:
            return self._acquire_checked(timeout)
        # The hot path: PoolState.lend written out. lock.acquire()/try/finally is measurably
        # cheaper than ``with``.
        lock = self._lock
        lock.acquire()
        try:
            # Waiters exist only while nothing is idle, so an idle connection is fair to take.
            if state.idle:
                entry = state.take_idle()
                try:
                    conn: PooledConnection = _new_proxy(entry.handle_class)
                    set_entry(conn, entry)
                except BaseException:  # interrupted: the connection must not be lost
                    state.idle.append(entry)
                    raise
                entry.lent_at = _now()
                entry.holder = _get_ident()
                state.acquired += 1
                return conn
        finally:
            lock.release()
        return self._acquire_slow(timeout)

    # ``with pool.connection() as conn:`` reads better; an alias, not a method calling
    # acquire, saves a Python frame on every checkout.
    connection = acquire

    def release(self, conn: PooledConnection, error: BaseException | None = None) -> None:
        """Return ``conn`` to the pool.

        An open transaction is rolled back (if ``reset_on_return``); a broken connection, or
        one whose rollback fails, is closed and its slot freed. ``error``: the exception that
        ended the holder's work, if any; the transaction is then rolled back whatever the
        driver's flags say, and the connection discarded if the error shows it is gone.
        Raises :class:`~flask_dbpool.PoolError` if ``conn`` was already returned or belongs
        to another pool.
        """
        # Handles are of one PooledConnection subclass per driver; anything without a
        # handle's slot is refused (one attribute load: cheaper than a class check).
        try:
            entry = conn._entry
        except AttributeError:
            raise self._keeper.foreign(conn) from None
        if error is not None:
            self._keeper.release_slow(conn, error)
            return
        if entry is not None and entry.pool is self and entry.tx_state(entry.raw) == IDLE:
            state = self._state
            lock = self._lock
            lock.acquire()
            try:
                if conn._entry is entry:  # claimed under the lock: a racing release loses
                    set_entry(conn, None)
                    if state.track_use:
                        # Histogram.record written out, because every nanosecond here is
                        # paid on each return (docs/benchmarks.md). A hold under the first
                        # bound (100 µs) pays one comparison, a longer one a bisect.
                        held = _now() - entry.lent_at
                        use = state.use_time
                        if held <= 0.0001:  # DURATION_BUCKETS[0]; a test checks the buckets
                            use.first += 1
                        else:
                            use.counts[_bucket(_DURATION_BUCKETS, held)] += 1
                        use.sum += held
                        if held > use.max:
                            use.max = held
                        for observer in state.observers:
                            observer("use", held)
                    # PoolState.check_in written out.
                    if state.waiters and state.open <= state.max_open:
                        state.hand_off(entry)
                        return
                    if len(state.idle) < state.keep:
                        state.idle.append(entry)
                        return
                    state.forget(entry, "pool_closed" if state.closed else "overflow")
                    surplus = entry
                else:
                    surplus = None
            finally:
                lock.release()
            if surplus is not None:
                self._keeper.life.close(surplus)
                return
        self._keeper.release_slow(conn, None)

    def invalidate(self, conn: PooledConnection) -> None:
        """Close ``conn``'s driver connection and free its slot instead of reusing it (what
        ``conn.invalidate()`` does). Raises :class:`~flask_dbpool.PoolError` if ``conn`` was
        already returned or belongs to another pool."""
        entry, _ = self._keeper.claim(conn)
        self._keeper.discard(entry, "invalidate() was called", "invalidated")

    def warm_up(self) -> int:
        """Open connections now until ``pool_size`` are open; return how many were opened.

        Raises the driver's error if a connection cannot be opened (those opened before it
        stay in the pool), :class:`~flask_dbpool.PoolClosed` if the pool is closed.
        """
        opened = 0
        while True:
            with self._lock:
                if not self._state.reserve(self.config.pool_size):
                    return opened
            entry = self._keeper.connect_in_slot()
            if not isinstance(entry, Entry):
                raise entry  # this attempt's own error (not a racing attempt's)
            self._keeper.check_in(entry)
            opened += 1

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until ``max(1, min_idle)`` connections can be checked out at once.

        Checks them out (opening them if needed, retrying with back-off while the database
        cannot be reached) and returns them. Raises :class:`~flask_dbpool.PoolTimeout` after
        ``timeout`` seconds (default: the pool's ``timeout``) with the last connection error
        in its message and as its ``__cause__``; meant for start-up, before other callers
        hold connections.
        """
        if timeout is None:
            timeout = self.config.timeout
        check_timeout(timeout)
        deadline = _now() + timeout
        held: list[PooledConnection] = []
        try:
            for _ in range(max(1, self.config.min_idle)):
                # The plain checkout: start-up is not a use (no on_checkout, no ping).
                held.append(self._acquire_slow(max(0.0, deadline - _now())))
        except PoolTimeout as error:
            raise PoolTimeout(f"not ready after {timeout:.1f} s: {error}") from error.__cause__
        finally:
            for conn in held:
                self.release(conn)

    def resize(self, pool_size: int | None = None, max_overflow: int | None = None) -> None:
        """Change ``pool_size`` and/or ``max_overflow`` at runtime, safely under load.

        Growing hands the new slots to waiting callers at once. Shrinking closes surplus idle
        connections now; connections in use above the new limits are closed as they come
        back, and waiters are served only once the pool is under its new maximum. Invalid
        values (including a ``pool_size`` below ``min_idle``) raise
        :class:`~flask_dbpool.ConfigError` and change nothing.
        """
        changes: dict[str, Any] = {}
        if pool_size is not None:
            changes["pool_size"] = pool_size
        if max_overflow is not None:
            changes["max_overflow"] = max_overflow
        with self._lock:
            current = {f: getattr(self.config, f) for f in PoolConfig.option_names()}
            config = PoolConfig.from_options({**current, **changes})
            surplus = self._state.resize(config)
            self.config = config
        for entry in surplus:
            self._keeper.life.close(entry)
        logger.info(
            "pool %r resized to pool_size=%d, max_overflow=%d (%d idle closed)",
            self.name,
            config.pool_size,
            config.max_overflow,
            len(surplus),
        )

    def run_transaction(
        self,
        work: Callable[[PooledConnection], _R],
        *,
        retries: int = 3,
        timeout: float | None = None,
    ) -> _R:
        """Run ``work(conn)`` in a transaction on a pooled connection, commit, and return
        what ``work`` returned; run it all again, up to ``retries`` more times, only when the
        error proves nothing was committed (see :mod:`flask_dbpool.transactions` for the
        rules and what ``work`` must not do). Raises
        :class:`~flask_dbpool.CommitOutcomeUnknown` when the connection was lost during the
        ``COMMIT``, :class:`~flask_dbpool.ConfigError` for a bad ``retries`` or a pool in
        autocommit mode, and any other error as it is, after a rollback. Each checkout waits
        up to ``timeout`` (default: the pool's); retries count in
        ``stats().transaction_retries``.
        """
        return run_transaction(
            self, work, retries=retries, timeout=timeout, count_retry=self._keeper.count_retry
        )

    def classify(self, error: BaseException, conn: PooledConnection) -> str | None:
        """What ``error``, raised while ``conn`` was in use, means: ``"dead"``,
        ``"server_changed"``, ``"retryable"`` or ``None`` (see ``classify_error``)."""
        entry = entry_of(conn)
        if entry is None:  # returned already: nothing to tell from its connection
            return None
        return self._keeper.life.classify(error, entry.raw, entry.driver)

    def autocommit(self, conn: PooledConnection) -> bool:
        """Whether ``conn`` commits each statement by itself (the driver's own state)."""
        entry = entry_of(conn)
        return entry is not None and entry.driver.autocommit(entry.raw)

    def drain(self) -> int:
        """Retire every connection open now (failover, rotated credentials): idle ones are
        closed at once, those in use (or being opened) when they come back; new ones are
        opened as usual. Returns how many were retired; does not wait. Raises
        :class:`~flask_dbpool.PoolClosed` if the pool is closed."""
        if self._state.closed:
            raise PoolClosed(messages.closed(self.name))
        closed, marked = self._keeper.drain()
        return closed + marked

    def label_checkout(self, conn: PooledConnection, label: str) -> None:
        """Attach ``label`` (short; e.g. the Flask endpoint or a job name) to ``conn``'s
        current checkout, for :meth:`checkouts` and the dashboard. It lasts until the
        connection is returned. Costs nothing on the pool's hot path, and takes no lock:
        only the holder labels its checkout, and a reader (:meth:`checkouts`) sees the label
        only once ``label_for`` matches the checkout, which is written last."""
        entry = entry_of(conn) if isinstance(conn, PooledConnection) else None
        if entry is not None and entry.pool is self:
            entry.label = label
            entry.label_for = entry.lent_at

    def pin(self, conn: PooledConnection) -> None:
        """Keep ``conn`` checked out across ``with conn:`` blocks for this checkout.

        A ``with`` block on a pinned handle still commits (or rolls back, if it raised) as
        the driver's own ``with conn:`` does, but the connection stays with its holder until
        :meth:`release` or ``conn.close()``. Flask's per-request ``db.connection`` is pinned,
        so that ``with db.connection: …`` commits without handing the request's connection
        back mid-request. Raises :class:`~flask_dbpool.PoolError` for a handle that was
        returned or belongs to another pool.
        """
        # No lock: only the holder uses its handle, and the stamp concerns this checkout only.
        entry = entry_of(conn) if isinstance(conn, PooledConnection) else None
        if entry is None or entry.pool is not self:
            raise self._keeper.foreign(conn)
        entry.pinned_for = entry.lent_at

    def checkouts(self) -> list[Checkout]:
        """The connections checked out now, longest-held first: how long, by which thread,
        their :meth:`label_checkout` label, and (with ``leak_threshold``) from where and for
        which request. For dashboards and debugging (a scan of the pool's connections)."""
        with self._lock:
            holders = self._state.holders()
        return checkouts_of(holders, _now())

    def server_limits(self) -> ServerLimits | None:
        """The server's limits, on a connection of its own (``None``: no server); may raise."""
        return self._keeper.life.server_limits()

    def reclaimed(self) -> list[Checkout]:
        """The last 64 checkouts dropped unreturned and reclaimed by maintenance, oldest first."""
        return checkouts_of(list(self._keeper.reclaimed), _now())[::-1]

    def stats(self) -> PoolStats:
        """A consistent snapshot of the pool's gauges and totals."""
        with self._lock:
            return self._state.stats()

    def track_use_time(self) -> None:
        """Record how long each checkout is held (``stats().use_time``, observers' ``"use"``
        events). Off by default because it costs a clock read and a histogram update on every
        return (about 0.1 µs, +13-16 % of the bare checkout+return cycle; docs/benchmarks.md);
        the metrics exporters turn it on. Idempotent."""
        with self._lock:
            self._state.track_use = True

    def add_observer(self, observer: Callable[[str, float], object]) -> None:
        """Call ``observer(event, seconds)`` for each ``"wait"`` (a caller that had to wait,
        served or timed out), each ``"create"`` (a connection opened) and, once
        :meth:`track_use_time` is on, each ``"use"`` (a checkout's hold), e.g. to feed an
        external histogram (see :mod:`flask_dbpool.metrics.otel`). It runs with the pool's
        lock held, on the caller's thread: keep it quick, never use the pool from it, and do
        not let it raise."""
        if not callable(observer):
            raise ConfigError(messages.not_callable("observer", observer))
        with self._lock:
            self._state.observers = (*self._state.observers, observer)

    def close(self, timeout: float | None = None) -> None:
        """Close the pool.

        Lending stops at once: waiters are woken with :class:`~flask_dbpool.PoolClosed`,
        later ``acquire()`` calls raise it, the maintenance thread stops and idle connections
        are closed now. Without ``timeout``, connections still checked out are closed when
        they are returned. With ``timeout`` (seconds), waits that long for them, then cancels
        the statements still running on them and closes them under their holders (see
        ``Keeper.cancel_and_close``), so that no server session is left behind: within
        ``timeout`` plus at most 3 s. Idempotent; a later call with a timeout still waits
        and closes what is left.
        """
        if timeout is not None:
            check_timeout(timeout)
        with self._lock:
            first, idle = self._state.close()
            maintenance, self._keeper.maintenance = self._keeper.maintenance, None
        if maintenance is not None:
            maintenance.stop(timeout=1.0)
        for entry in idle:
            self._keeper.life.close(entry)
        if first:
            logger.info("pool %r closed (%d idle connections closed)", self.name, len(idle))
        if timeout is not None:
            self._keeper.wait_then_cancel(timeout)

    def run_maintenance(self) -> float:
        """One maintenance run now; returns the seconds until the next is due.

        The pool's maintenance thread calls it (started lazily); tests and tools may call it
        too, to apply lifetimes, idle timeouts, keepalive checks and leak detection at once.
        Reclaims dropped handles, closes what the state's sweep retires, pings what it asks
        to check (each ping bounded by ``maintenance.PING_TIMEOUT``), logs leaks, then opens
        a connection if waiters or ``min_idle`` need one.
        """
        return self._keeper.run_maintenance()

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.stats()
        state = " closed" if self.closed else ""
        return (
            f"<Pool {self.name!r} {self.target}{state} open={s.open} idle={s.idle} "
            f"in_use={s.in_use} waiting={s.waiting} pool_size={s.pool_size} "
            f"max_overflow={s.max_overflow}>"
        )

    # ------------------------------------------------------------------ fork

    def _after_fork_in_child(self) -> None:
        """Called in a forked child: forget the parent's connections without touching them."""
        old = self._state
        idle = set(old.idle)
        inherited = list(old.entries)
        # Fresh state: the parent's lock may have been held by another thread, and its
        # waiters and maintenance thread do not exist here (maintenance restarts lazily).
        life = self._keeper.life
        self._fresh_state(life, closed=old.closed)
        # What the parent's exporters turned on stays on (they are set up once per pool).
        self._state.observers = old.observers
        self._state.track_use = old.track_use
        abandon_inherited(inherited, idle, life.close)

    # ------------------------------------------------------------------ acquiring

    def _acquire_checked(self, timeout: float | None = None) -> PooledConnection:
        """``acquire`` with pre-ping, suspect checks, leak tracking and ``on_checkout``."""
        if timeout is None:
            timeout = self.config.timeout
        check_timeout(timeout)
        deadline = _now() + timeout
        config = self.config
        while True:
            conn = self._acquire_slow(max(0.0, deadline - _now()))
            entry = entry_of(conn)
            assert entry is not None
            now = entry.lent_at
            try:
                if self._state.suspect(entry) or (
                    config.pre_ping and now - entry.used_at >= config.ping_interval
                ):
                    try:
                        # Bounded by what is left of the caller's timeout (with a floor, so
                        # that a caller out of time still gets a fair check of this one).
                        self._keeper.life.ping(entry, max(deadline - now, _MIN_PING_TIMEOUT))
                    except Exception as error:
                        claimed, _ = self._keeper.claim(conn)
                        why = f"its ping failed ({one_line(error)})"
                        self._keeper.discard(claimed, why, "ping_failed", disconnect=True)
                        continue  # another one, within the caller's deadline
                    entry.checked_at = now
                    entry.allow_fast_return()
                entry.used_at = now
                if config.leak_threshold is not None:
                    entry.site = capture_site()
                    entry.thread_name = threading.current_thread().name
                    entry.caller = describe_caller(self.config.describe_caller)
                if config.on_checkout is not None:
                    config.on_checkout(entry.raw)
            except BaseException as error:
                self._keeper.release_after(conn, error)
                raise
            return conn

    def _acquire_slow(self, timeout: float | None) -> PooledConnection:
        if timeout is None:
            timeout = self.config.timeout
        start = _now()
        deadline = start + timeout
        while True:
            nudge = False
            with self._lock:
                now = _now()  # under the lock: lent_at stamps never go backwards
                got = self._state.request(now, _get_ident(), start, deadline, Waiter)
                if isinstance(got, Entry):
                    return handle_for(got)
                if isinstance(got, Waiter):
                    # A dropped handle may be why the pool ran dry, and maintenance
                    # reclaims those: let it look.
                    nudge = self._state.dry_check_due(now)
            if isinstance(got, Waiter):
                if nudge:
                    self._keeper.nudge()
                conn = self._wait(got, start, deadline)
            elif got is CONNECT or got is PROBE:
                conn = self._keeper.open_in_slot(probe=got is PROBE)
            elif isinstance(got, Refusal):
                raise detached(got.error)
            else:
                assert isinstance(got, TimeoutReport)
                raise messages.timeout_error(self.name, self.target, got, _now())
            if conn is not None:
                return conn
            # Opening a connection failed (the pool backs off before trying again), or this
            # waiter is to make the next attempt: go round.

    def _wait(self, waiter: Waiter, start: float, deadline: float) -> PooledConnection | None:
        """Wait for a connection or a slot. ``None``: the caller should try to connect (the
        database was unreachable and a new attempt is due)."""
        # The handshake: whoever holds the pool lock decides. A releaser hands an item only
        # to a waiter still queued (and dequeues it at once); a waiter giving up dequeues
        # itself only if nothing was handed yet, and otherwise takes (or gives back) the item.
        # Everything from the wait to the hand-back of the handle is covered: an interrupt
        # (KeyboardInterrupt, gevent Timeout) at any point gives back whatever was handed over.
        state = self._state
        try:
            while True:
                wait = state.wait_step(_now(), deadline, waiter.connect_at)
                waiter.signal.acquire(True, min(wait, threading.TIMEOUT_MAX))
                with self._lock:
                    now = _now()  # woken up, or the wait ran out
                    got = state.woken(waiter, now, _get_ident(), now - start, deadline)
                    nudge = got is None and state.dry_check_due(now)
                if got is None:
                    if nudge:  # still dry: dropped handles may hold the slots
                        self._keeper.nudge()
                    continue
                if isinstance(got, TimeoutReport):
                    break
                if got is CONNECT:
                    return None
                if got is CLOSED:
                    raise PoolClosed(messages.closed_while_waiting(self.name))
                if got is NEW_SLOT:
                    return self._keeper.open_in_slot(waiter=waiter)
                if isinstance(got, Refusal):
                    raise detached(got.error)
                assert isinstance(got, Entry)
                conn = handle_for(got)
                waiter.item = None
                return conn
        except BaseException:
            self._abandon(waiter)
            raise
        raise messages.timeout_error(self.name, self.target, got, _now())

    def _abandon(self, waiter: Waiter) -> None:
        """A waiter gave up: leave the queue, or pass on what it was handed and not used."""
        with self._lock:
            item = self._state.abandon(waiter)
        if item is NEW_SLOT:
            self._keeper.free_slot(connecting=True)
        elif isinstance(item, Entry):
            self._keeper.check_in(item)
