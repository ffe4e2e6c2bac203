"""The connection pool.

One lock guards all state. The hot path (an idle connection available, an idle connection
returned) is a single short critical section with no I/O, logging or allocation beyond the
handle; a checkout stamps its time and thread so that "who holds the connections" can always
be answered. Everything slow (connecting, rolling back, pinging, closing) happens outside the
lock, with the slot it concerns accounted for under the lock before and after, so an exception
at any point (including ``KeyboardInterrupt`` or a gevent ``Timeout`` while waiting) never
loses a slot.

Waiters queue in FIFO order. A returned connection, or a freed slot, is handed directly to
the oldest waiter under the lock, so a newcomer can never barge past a waiting thread, and a
waiter that has already given up is never handed anything (see :meth:`Pool._wait`).

Health work (lifetimes, idle timeouts, keepalive, reconnecting, leaks) runs in a background
thread (:mod:`flask_dbpool.maintenance`). Features that need
work at checkout (``pre_ping``, ``on_checkout``, ``leak_threshold``, and checking connections
suspected dead after a disconnect) switch the pool to a checked ``acquire``; features that
need work on return route that entry's returns to the slow path. The default hot path tests
two flags for them (checked acquire, use time tracked) and nothing else.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

from flask_dbpool._fork import INHERITED, abandon_inherited, track
from flask_dbpool._handoff import CLOSED, NEW_SLOT, Refusal, Token, Waiter
from flask_dbpool.config import PoolConfig
from flask_dbpool.drivers import (
    BROKEN,
    FAILED,
    IDLE,
    IN_TRANSACTION,
    Connector,
    connection_rejected,
    driver_for_connection,
    resolve_target,
)
from flask_dbpool.entry import FOREVER, Entry, slow_return
from flask_dbpool.errors import (
    ConfigError,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyWaiters,
    one_line,
)
from flask_dbpool.hooks import reset_session, run_on_connect
from flask_dbpool.leaks import (
    Checkout,
    TimeoutReport,
    capture_site,
    checkouts_of,
    holder_of,
    timeout_error,
)
from flask_dbpool.maintenance import Maintenance, backoff_delay, lifetime_jitter
from flask_dbpool.proxy import PooledConnection, set_entry
from flask_dbpool.stats import DURATION_BUCKETS as _DURATION_BUCKETS
from flask_dbpool.stats import Histogram, PoolStats

__all__ = ["Pool"]

logger = logging.getLogger("flask_dbpool.pool")
leak_logger = logging.getLogger("flask_dbpool.leaks")

_new_proxy = object.__new__
_bucket = bisect_left
_now = time.monotonic
_get_ident = threading.get_ident

#: A checkout ping gets at least this long, even when the caller's timeout is nearly spent.
_MIN_PING_TIMEOUT = 0.05


def _detached(error: BaseException) -> BaseException:
    """A copy of ``error`` without its traceback, to keep or to raise in another caller
    (one exception object raised in several threads would collect all their frames)."""
    try:
        twin = copy.copy(error)
    except Exception:  # an exception type that cannot be copied: share the original
        return error.with_traceback(None)
    return twin.with_traceback(None) if isinstance(twin, BaseException) else error


def _check_timeout(timeout: object) -> None:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not timeout >= 0  # rejects NaN too
    ):
        raise ConfigError(f"timeout must be a number of seconds >= 0, got {timeout!r}")


class _Health:
    """The pool's state that the hot path never touches: outages, suspicion after a
    disconnect, and the counters of rare events. Kept apart so that the pool object itself
    stays small (CPython's attribute access is faster on objects with few attributes)."""

    __slots__ = (
        "closed_by",
        "connect_error",
        "connect_errors",
        "connect_failures",
        "create_time",
        "disconnect_at",
        "failed_at",
        "leaks_detected",
        "next_dry_check",
        "pings_failed",
        "probing",
        "reclaimed",
        "refill_at",
        "refill_failures",
        "rejected",
        "rejection",
        "retry_at",
        "suspects",
        "timeouts",
        "wait_max",
        "wait_time",
        "wait_total",
        "waits",
    )

    def __init__(self) -> None:
        self.disconnect_at = -FOREVER  # connections last checked before this are suspect
        self.suspects = False  # whether some may still be lent or idle unchecked
        self.connect_failures = 0  # consecutive; > 0 means "the database is unreachable"
        self.connect_error: BaseException | None = None
        # The last attempt's error when the server refused the login for good (see
        # Driver.is_rejection): callers get it at once instead of waiting out an "outage".
        self.rejection: BaseException | None = None
        self.retry_at = 0.0  # when the next attempt to connect is due
        self.failed_at = 0.0  # when the last attempt failed
        self.probing = False  # an attempt to reconnect is under way
        self.refill_at = 0.0  # maintenance's min_idle refill backs off after on_connect errors
        self.refill_failures = 0
        self.next_dry_check = 0.0
        self.timeouts = 0
        self.rejected = 0
        self.waits = 0
        self.wait_total = 0.0
        self.wait_max = 0.0
        self.connect_errors = 0
        self.pings_failed = 0
        self.leaks_detected = 0
        self.reclaimed = 0
        self.closed_by: dict[str, int] = {}
        self.wait_time = Histogram()
        self.create_time = Histogram()


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

    # Slots keep attribute access on the hot path at its cheapest: a plain instance dict
    # shares its keys with other instances only up to a limit (30 names in CPython 3.11),
    # and past it, or once an attribute is added after __init__, every access slows down
    # (+0.08 µs per checkout, measured; docs/benchmarks.md).
    __slots__ = (
        "__weakref__",
        "_acquired",
        "_check_on_acquire",
        "_checked_checkouts",
        "_checking",
        "_closed",
        "_closed_count",
        "_connecting",
        "_connector",
        "_created",
        "_drained",
        "_entries",
        "_health",
        "_idle",
        "_keep",
        "_lock",
        "_maintenance",
        "_max_open",
        "_observers",
        "_open",
        "_rollback_on_return",
        "_session_reset",
        "_slow_returns",
        "_take_idle",
        "_timeout",
        "_to_check",
        "_track_use",
        "_use_time",
        "_waiters",
        "config",
        "name",
    )

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
        min_idle: int = 0,
        keepalive_interval: float | None = None,
        leak_threshold: float | None = None,
        open_timeout: float | None = None,
        describe_caller: Callable[[], str | None] | None = None,
        **unknown: object,
    ) -> None:
        if unknown:  # a ConfigError naming the option, not Python's bare TypeError
            PoolConfig.from_options(unknown)
        self.config: PoolConfig = PoolConfig.from_options(
            {
                "pool_size": pool_size,
                "max_overflow": max_overflow,
                "timeout": timeout,
                "name": name,
                "reset_on_return": reset_on_return,
                "lifo": lifo,
                "max_waiting": max_waiting,
                "on_connect": on_connect,
                "on_checkout": on_checkout,
                "on_checkin": on_checkin,
                "pre_ping": pre_ping,
                "ping_interval": ping_interval,
                "max_lifetime": max_lifetime,
                "idle_timeout": idle_timeout,
                "min_idle": min_idle,
                "keepalive_interval": keepalive_interval,
                "leak_threshold": leak_threshold,
                "open_timeout": open_timeout,
                "describe_caller": describe_caller,
            }
        )
        config = self.config
        self._connector: Connector = resolve_target(target)
        self.name: Final = config.name
        self._timeout = config.timeout
        self._max_open = config.max_open
        reset = config.reset_on_return
        self._rollback_on_return = reset is not False
        # A session reset on every return ("discard" or a callable) runs on the slow path.
        self._session_reset: str | Callable[[Any], object] | None = (
            None if isinstance(reset, bool) else reset
        )
        driver = self._connector.driver
        if reset == "discard" and driver is not None and not driver.supports_session_reset:
            raise ConfigError(
                f"reset_on_return='discard' is not supported by the {driver.name} driver "
                "(PostgreSQL only); pass a callable that resets the session instead"
            )
        self._slow_returns = self._session_reset is not None or config.on_checkin is not None
        self._checked_checkouts = (
            config.pre_ping or config.on_checkout is not None or config.leak_threshold is not None
        )

        self._closed = False
        self._observers: tuple[Callable[[str, float], object], ...] = ()
        # Modes are flags read on the hot path, not methods swapped in as instance
        # attributes (which slots rule out, and which cost more than a flag before them).
        self._check_on_acquire = False  # see _select_acquire
        self._track_use = False  # see track_use_time
        self._init_state()
        self._select_acquire()
        track(self)
        if config.min_idle:
            self._nudge()  # maintenance opens them
        if config.open_timeout is not None:
            try:
                self.wait_ready(config.open_timeout)
            except BaseException:
                self.close()
                raise

    def _init_state(self) -> None:
        """A pool with nothing open: at construction, and in a forked child."""
        self._lock = threading.Lock()
        self._entries: set[Entry] = set()  # every open connection; changed under the lock only
        self._idle: deque[Entry] = deque()
        self._take_idle = self._idle.pop if self.config.lifo else self._idle.popleft
        self._waiters: deque[Waiter] = deque()
        self._open = 0  # slots taken: open connections plus those being opened
        self._connecting = 0
        self._checking: set[Entry] = set()  # out of circulation while maintenance pings them
        self._to_check: list[Entry] = []  # ...of which not picked up yet
        self._keep = 0 if self._closed else self.config.pool_size  # most idle ones kept
        self._drained = threading.Event()  # set once closed and every slot is free
        self._health = _Health()
        self._use_time = Histogram()  # recorded only once track_use_time() was called
        self._maintenance: Maintenance | None = None

        self._acquired = 0
        self._created = 0
        self._closed_count = 0

    # ------------------------------------------------------------------ public API

    @property
    def target(self) -> str:
        """The redacted URL (or the callable's name) connections are opened from."""
        return self._connector.description

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

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
            _check_timeout(timeout)  # also on the fast path: a bad value must not wait for load
        if self._check_on_acquire:
            return self._acquire_checked(timeout)
        # The hot path. lock.acquire()/try/finally is measurably cheaper than ``with``.
        lock = self._lock
        lock.acquire()
        try:
            # Waiters exist only while nothing is idle, so an idle connection is fair to take.
            if self._idle:
                entry = self._take_idle()
                try:
                    conn = _new_proxy(PooledConnection)
                    set_entry(conn, entry)
                except BaseException:  # interrupted: the connection must not be lost
                    self._idle.append(entry)
                    raise
                entry.lent_at = _now()
                entry.holder = _get_ident()
                self._acquired += 1
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
        if conn.__class__ is not PooledConnection:
            raise self._foreign(conn)
        if error is not None:
            self._release_slow(conn, error)
            return
        entry = conn._entry
        if entry is not None and entry.pool is self and entry.tx_state(entry.raw) == IDLE:
            lock = self._lock
            lock.acquire()
            try:
                if conn._entry is entry:  # claimed under the lock: a racing release loses
                    set_entry(conn, None)
                    if self._track_use:
                        # Histogram.record written out, because every nanosecond here is
                        # paid on each return (docs/benchmarks.md). What it costs matters
                        # relative to the hold: a hold under the first bound (100 µs) pays
                        # one comparison, a longer one a bisect (~50 ns, under 0.05% of it).
                        held = _now() - entry.lent_at
                        use = self._use_time
                        if held <= 0.0001:  # DURATION_BUCKETS[0]; a test checks the buckets
                            use.first += 1
                        else:
                            use.counts[_bucket(_DURATION_BUCKETS, held)] += 1
                        use.sum += held
                        if held > use.max:
                            use.max = held
                        if self._observers:
                            self._notify_use(held)
                    if self._waiters and self._open <= self._max_open:
                        self._hand_off(entry)
                        return
                    if len(self._idle) < self._keep:
                        self._idle.append(entry)
                        return
                    # pool_size connections are idle already (or the pool is closed): this
                    # one is surplus. Closing only then avoids reopening overflow connections
                    # over and over while demand stays between pool_size and the maximum.
                    self._forget_locked(entry, "pool_closed" if self._closed else "overflow")
                    surplus = entry
                else:
                    surplus = None
            finally:
                lock.release()
            if surplus is not None:
                self._close_raw(surplus)
                return
        self._release_slow(conn, None)

    def warm_up(self) -> int:
        """Open connections now until ``pool_size`` are open; return how many were opened.

        Raises the driver's error if a connection cannot be opened (those opened before it
        stay in the pool).
        """
        opened = 0
        while True:
            with self._lock:
                if self._closed:
                    raise PoolClosed(f"pool {self.name!r} is closed")
                if self._open >= self.config.pool_size:
                    return opened
                self._open += 1
                self._connecting += 1
            entry = self._connect_in_slot()
            if not isinstance(entry, Entry):
                raise entry  # this attempt's own error (not a racing attempt's)
            self._check_in(entry)
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
            timeout = self._timeout
        _check_timeout(timeout)
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
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} is closed")
            self.config = config
            self._max_open = config.max_open
            # While more are open than the new maximum, returned connections are closed
            # (keep 0) until _after_shrink_locked sees the pool back under it.
            self._keep = config.pool_size if self._open <= self._max_open else 0
            self._fill_waiters_locked()
            surplus = []
            while len(self._idle) > self._keep:
                entry = self._idle.popleft()  # the least recently used go first
                self._forget_locked(entry, "resized")
                surplus.append(entry)
        for entry in surplus:
            self._close_raw(entry)
        logger.info(
            "pool %r resized to pool_size=%d, max_overflow=%d (%d idle closed)",
            self.name,
            config.pool_size,
            config.max_overflow,
            len(surplus),
        )

    def label_checkout(self, conn: PooledConnection, label: str) -> None:
        """Attach ``label`` (short; e.g. the Flask endpoint or a job name) to ``conn``'s
        current checkout, for :meth:`checkouts` and the dashboard. It lasts until the
        connection is returned. Costs nothing on the pool's hot path."""
        with self._lock:
            entry = conn._entry
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
        entry = conn._entry if conn.__class__ is PooledConnection else None
        if entry is None or entry.pool is not self:
            raise self._foreign(conn)
        entry.pinned_for = entry.lent_at

    def checkouts(self) -> list[Checkout]:
        """The connections checked out right now, longest-held first: how long, by which
        thread, their :meth:`label_checkout` label, and (with ``leak_threshold``) from where
        and for which request. For dashboards and debugging; costs a scan of the pool's
        connections."""
        with self._lock:
            idle = set(self._idle)
            holders = [
                holder_of(entry)
                for entry in self._entries
                if entry not in idle and entry not in self._checking
            ]
        return checkouts_of(holders, _now())

    def stats(self) -> PoolStats:
        """A consistent snapshot of the pool's gauges and totals."""
        with self._lock:
            idle = len(self._idle)
            checking = len(self._checking)
            return PoolStats(
                name=self.name,
                pool_size=self.config.pool_size,
                max_overflow=self.config.max_overflow,
                min_idle=self.config.min_idle,
                open=self._open,
                idle=idle,
                in_use=self._open - idle - self._connecting - checking,
                connecting=self._connecting,
                checking=checking,
                waiting=len(self._waiters),
                acquired=self._acquired,
                created=self._created,
                closed=self._closed_count,
                timeouts=self._health.timeouts,
                rejected=self._health.rejected,
                waits=self._health.waits,
                wait_seconds_total=self._health.wait_total,
                wait_seconds_max=self._health.wait_max,
                connect_errors=self._health.connect_errors,
                pings_failed=self._health.pings_failed,
                leaks_detected=self._health.leaks_detected,
                reclaimed=self._health.reclaimed,
                closed_by_reason=dict(self._health.closed_by),
                wait_time=self._health.wait_time.snapshot(),
                create_time=self._health.create_time.snapshot(),
                use_time=self._use_time.snapshot(),
            )

    def track_use_time(self) -> None:
        """Record how long each checkout is held (``stats().use_time``, observers' ``"use"``
        events). Off by default because it costs a clock read and a histogram update on every
        return (about 0.1 µs, +13-16 % of the bare checkout+return cycle; docs/benchmarks.md);
        the metrics exporters turn it on.
        Idempotent."""
        with self._lock:
            self._track_use = True

    def _notify_use(self, held: float) -> None:
        for observer in self._observers:
            observer("use", held)

    def _record_use(self, held: float) -> None:
        with self._lock:
            self._use_time.record(held)
            self._notify_use(held)

    def add_observer(self, observer: Callable[[str, float], object]) -> None:
        """Call ``observer(event, seconds)`` for each ``"wait"`` (a caller that had to wait,
        served or timed out) and each ``"create"`` (a connection opened), e.g. to feed an
        external histogram (see :mod:`flask_dbpool.metrics.otel`). It runs with the pool's
        lock held, on the caller's thread: keep it quick, never use the pool from it, and do
        not let it raise."""
        if not callable(observer):
            raise ConfigError(f"observer must be callable, got {observer!r}")
        with self._lock:
            self._observers = (*self._observers, observer)

    def close(self, timeout: float | None = None) -> None:
        """Close the pool.

        Lending stops at once: waiters are woken with :class:`~flask_dbpool.PoolClosed`,
        later ``acquire()`` calls raise it, the maintenance thread stops and idle connections
        are closed now. Without ``timeout``, connections still checked out are closed when
        they are returned. With ``timeout`` (seconds), waits that long for them to come back,
        then closes those still out (their holders' next use fails) so that no server session
        is left behind. Idempotent; a later call with a timeout still waits and closes what
        is left.
        """
        if timeout is not None:
            _check_timeout(timeout)
        with self._lock:
            first = not self._closed
            self._closed = True
            self._keep = 0
            while self._waiters:
                self._hand_off(CLOSED)
            # Idle ones, and those waiting for a check maintenance will not make now.
            idle = [*self._idle, *self._to_check]
            self._idle.clear()
            self._to_check.clear()
            for entry in idle:
                self._forget_locked(entry, "pool_closed")
            self._after_shrink_locked()
            maintenance, self._maintenance = self._maintenance, None
        if maintenance is not None:
            maintenance.stop(timeout=1.0)
        for entry in idle:
            self._close_raw(entry)
        if first:
            logger.info("pool %r closed (%d idle connections closed)", self.name, len(idle))
        if timeout is None or self._drained.wait(timeout):
            return
        # Borrowers did not return in time: close their connections under them.
        with self._lock:
            leftovers = [entry for entry in self._entries if entry not in self._checking]
        if leftovers:
            logger.warning(
                "pool %r: %d connection(s) still checked out after %.1f s; closing them",
                self.name,
                len(leftovers),
                timeout,
            )
        for entry in leftovers:
            self._close_raw(entry)

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
        state = " closed" if self._closed else ""
        return (
            f"<Pool {self.name!r} {self.target}{state} open={s.open} idle={s.idle} "
            f"in_use={s.in_use} waiting={s.waiting} pool_size={s.pool_size} "
            f"max_overflow={s.max_overflow}>"
        )

    # ------------------------------------------------------------------ fork

    def _after_fork_in_child(self) -> None:
        """Called in a forked child: forget the parent's connections without touching them."""
        idle = set(self._idle)
        inherited = list(self._entries)
        # Fresh state: the parent's lock may have been held by another thread, and its
        # waiters and maintenance thread do not exist here (maintenance restarts lazily).
        self._init_state()
        self._select_acquire()
        abandon_inherited(inherited, idle, self._close_raw)

    # ------------------------------------------------------------------ acquiring

    def _select_acquire(self) -> None:
        """Take the checked ``acquire`` only while something needs work at checkout."""
        self._check_on_acquire = self._checked_checkouts or self._health.suspects

    def _acquire_checked(self, timeout: float | None = None) -> PooledConnection:
        """``acquire`` with pre-ping, suspect checks, leak tracking and ``on_checkout``."""
        if timeout is None:
            timeout = self._timeout
        _check_timeout(timeout)
        deadline = _now() + timeout
        config = self.config
        while True:
            conn = self._acquire_slow(max(0.0, deadline - _now()))
            entry = conn._entry
            assert entry is not None
            now = entry.lent_at
            try:
                if entry.checked_at < self._health.disconnect_at or (
                    config.pre_ping and now - entry.used_at >= config.ping_interval
                ):
                    try:
                        # Bounded by what is left of the caller's timeout (with a floor, so
                        # that a caller out of time still gets a fair check of this one).
                        entry.driver.ping(entry.raw, max(deadline - now, _MIN_PING_TIMEOUT))
                    except Exception as error:
                        self._ping_failed(conn, error)
                        continue  # another one, within the caller's deadline
                    entry.checked_at = now
                    self._restore_tx_state(entry)
                entry.used_at = now
                if config.leak_threshold is not None:
                    entry.site = capture_site()
                    entry.thread_name = threading.current_thread().name
                    entry.caller = self._describe_caller()
                if config.on_checkout is not None:
                    config.on_checkout(entry.raw)
            except BaseException as error:
                self._release_quietly(conn, error)
                raise
            return conn

    def _describe_caller(self) -> str | None:
        describe = self.config.describe_caller
        if describe is None:
            return None
        try:
            return describe()
        except Exception as error:  # a diagnostic must never fail a checkout
            return f"<describe_caller failed: {error!r}>"

    def _ping_failed(self, conn: PooledConnection, error: Exception) -> None:
        entry, _ = self._claim(conn)
        with self._lock:
            self._health.pings_failed += 1
        self._discard(
            entry, f"its ping failed ({one_line(error)})", "ping_failed", disconnect=True
        )

    def _acquire_slow(self, timeout: float | None) -> PooledConnection:
        if timeout is None:
            timeout = self._timeout
        start = _now()
        deadline = start + timeout
        while True:
            now = _now()
            nudge = False
            with self._lock:
                if self._closed:
                    raise PoolClosed(f"pool {self.name!r} is closed")
                waiter = None
                probe = False
                if not self._waiters and self._idle:
                    entry = self._take_idle()
                    self._acquired += 1
                    return self._lend(entry)
                failing = self._health.connect_failures
                if (
                    self._health.rejection is not None
                    and not self._entries
                    and (self._health.probing or now < self._health.retry_at)
                ):
                    # The server refused the last login and nothing is open that could come
                    # back: waiting would only wait out the timeout. Back-off still spaces
                    # the attempts (the next caller after retry_at tries again).
                    raise _detached(self._health.rejection)
                if self._open < self._max_open and (
                    (not failing and not self._waiters)
                    # The database was unreachable: one caller at a time tries again once the
                    # back-off delay has passed; the others wait for its outcome.
                    or (failing and now >= self._health.retry_at and not self._health.probing)
                ):
                    self._open += 1
                    self._connecting += 1
                    if failing:
                        probe = self._health.probing = True
                else:
                    waiter = Waiter()
                    max_waiting = self.config.max_waiting
                    if max_waiting and len(self._waiters) >= max_waiting:
                        self._health.rejected += 1
                        raise TooManyWaiters(
                            f"pool {self.name!r} ({self.target}) refused a caller: "
                            f"max_waiting={max_waiting} callers already wait; "
                            + self._state_locked()
                        )
                    self._waiters.append(waiter)
                    if now >= deadline:
                        report = self._timeout_report_locked(now - start)
                        self._waiters.pop()
                        raise timeout_error(self.name, self.target, report, _now())
                    # A dropped handle may be why the pool ran dry, and maintenance reclaims
                    # those: let it look (at most once a second).
                    if now >= self._health.next_dry_check:
                        self._health.next_dry_check = now + 1.0
                        nudge = True
            if waiter is None:
                conn = self._open_in_slot(probe=probe)
            else:
                if nudge:
                    self._nudge()
                conn = self._wait(waiter, start, deadline)
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
        try:
            while True:
                now = _now()
                # At least once a second, so that an outage that began during the wait is
                # noticed; while the database is unreachable, when a new attempt is due, in
                # case nobody else makes it.
                wait = min(deadline - now, 1.0)
                if self._health.connect_failures:
                    due = now + 0.25 if self._health.probing else self._health.retry_at
                    wait = min(wait, max(due - now, 0.01))
                waiter.wake.acquire(True, min(max(wait, 0.0), threading.TIMEOUT_MAX))
                now = _now()  # woken up, or the wait ran out
                with self._lock:
                    item = waiter.item
                    if item is None:
                        if now < deadline:
                            if (
                                self._health.connect_failures
                                and now >= self._health.retry_at
                                and not self._health.probing
                                and self._open < self._max_open
                            ):
                                self._waiters.remove(waiter)
                                return None
                            continue
                        # Timed out with nothing handed over: leave the queue.
                        self._count_wait_locked(now - start)
                        report = self._timeout_report_locked(now - start)
                        self._waiters.remove(waiter)
                        break
                    self._count_wait_locked(now - start)
                    if isinstance(item, Entry):
                        # Counted when taken, not when handed over: an acquisition counter
                        # must never go down, even for a waiter interrupted right here.
                        self._acquired += 1
                if item is CLOSED:
                    raise PoolClosed(
                        f"pool {self.name!r} was closed while waiting for a connection"
                    )
                if item is NEW_SLOT:
                    return self._open_in_slot(waiter=waiter)
                if isinstance(item, Refusal):
                    raise _detached(item.error)
                assert isinstance(item, Entry)
                conn = self._lend(item)
                waiter.item = None
                return conn
        except BaseException:
            self._abandon(waiter)
            raise
        raise timeout_error(self.name, self.target, report, _now())

    def _count_wait_locked(self, waited: float) -> None:
        health = self._health
        health.waits += 1
        health.wait_total += waited
        if waited > health.wait_max:
            health.wait_max = waited
        health.wait_time.record(waited)
        for observer in self._observers:
            observer("wait", waited)

    def _abandon(self, waiter: Waiter) -> None:
        """A waiter gave up: leave the queue, or pass on what it was handed and not used."""
        with self._lock:
            item = waiter.item
            waiter.item = None
            if item is None:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                return
        if item is NEW_SLOT:
            self._free_slot(connecting=True)
        elif isinstance(item, Entry):
            self._check_in(item)

    def _lend(self, entry: Entry) -> PooledConnection:
        conn = _new_proxy(PooledConnection)
        set_entry(conn, entry)
        entry.lent_at = _now()
        entry.holder = _get_ident()
        return conn

    def _open_in_slot(
        self, *, probe: bool = False, waiter: Waiter | None = None
    ) -> PooledConnection | None:
        """Open a connection in a slot already reserved and lend it; ``None`` if the database
        could not be reached (the slot is released and the failure recorded)."""
        entry = self._connect_in_slot(probe=probe, waiter=waiter)
        if not isinstance(entry, Entry):
            if self._is_rejection(entry):
                raise entry  # refused for good: the caller gets the driver's error now
            return None
        with self._lock:
            if not self._closed:
                self._acquired += 1
                return self._lend(entry)
            self._forget_locked(entry, "pool_closed")
        self._close_raw(entry)
        raise PoolClosed(f"pool {self.name!r} was closed while a connection was being opened")

    def _connect_in_slot(
        self, *, probe: bool = False, waiter: Waiter | None = None
    ) -> Entry | Exception:
        """Connect in a reserved slot (counted in open and connecting).

        Returns the new entry, accounted for but not lent; the driver's error if connecting
        failed (the slot is released and back-off starts); raises what ``on_connect`` raised
        (the slot is released, to a waiter if one exists). ``probe``: this is the one attempt
        allowed while the database is unreachable. ``waiter``: the slot was handed to this
        waiter.
        """
        started = _now()
        try:
            if waiter is not None:
                waiter.item = None  # from here on this call owns the slot
            raw = self._connector.connect()
        except Exception as error:
            self._connect_failed(error, probe, started)
            return error
        except BaseException:
            self._free_slot(connecting=True, probe=probe)
            raise
        try:
            driver = self._connector.driver or driver_for_connection(raw)
            if self.config.on_connect is not None:
                run_on_connect(self.config.on_connect, self.name, raw, driver)
        except BaseException:
            self._free_slot(connecting=True, probe=probe)
            raise
        accounted = False
        try:
            now = _now()
            lifetime = self.config.max_lifetime
            expires = FOREVER if lifetime is None else now + lifetime * lifetime_jitter()
            entry = Entry(self, raw, driver, now, expires)
            entry.saved_settings = driver.save_settings(raw)
            if self._slow_returns:
                entry.tx_state = slow_return  # every return takes the slow path
            with self._lock:
                self._entries.add(entry)
                self._connecting -= 1
                self._created += 1
                accounted = True
                self._health.create_time.record(now - started)
                for observer in self._observers:
                    observer("create", now - started)
                if probe:
                    self._health.probing = False
                recovered = self._health.connect_failures
                if recovered:
                    self._health.connect_failures = 0
                    self._health.connect_error = None
                    self._health.rejection = None
                    self._fill_waiters_locked()  # the database is back: waiters connect too
        except BaseException:
            if not accounted:  # interrupted before the pool knew of it
                try:
                    driver.close(raw)
                finally:
                    self._free_slot(connecting=True, probe=probe)
            raise
        if recovered:
            logger.warning(
                "pool %r: connected to %s again after %d failed attempt(s)",
                self.name,
                self.target,
                recovered,
            )
        try:
            self._nudge()  # starts maintenance, or lets it schedule the new connection
        except BaseException:
            self._check_in(entry)  # interrupted (gevent): the connection must not be lost
            raise
        return entry

    def _is_rejection(self, error: BaseException) -> bool:
        driver = self._connector.driver
        return driver.is_rejection(error) if driver is not None else connection_rejected(error)

    def _connect_failed(self, error: Exception, probe: bool, started: float) -> None:
        """Release the slot of a failed connection attempt and schedule a retry."""
        rejected = self._is_rejection(error)
        # Kept without its traceback: the frames would keep callers' locals alive.
        kept = _detached(error)
        with self._lock:
            self._health.connect_errors += 1
            self._health.connect_error = kept
            self._health.rejection = kept if rejected else None
            now = _now()
            # Attempts under way when the outage began fail together: they are one failure
            # for the back-off, not several.
            if started >= self._health.failed_at or not self._health.connect_failures:
                self._health.connect_failures += 1
                self._health.retry_at = now + backoff_delay(self._health.connect_failures)
            self._health.failed_at = now
            failures = self._health.connect_failures
            delay = max(0.0, self._health.retry_at - now)
            if probe:
                self._health.probing = False
            self._connecting -= 1
            self._open -= 1
            if rejected and not self._entries:
                # Nothing open could come back to them: waiters get the refusal now.
                while self._waiters:
                    self._hand_off(Refusal(kept))
            self._after_shrink_locked()
        log = logger.warning if failures == 1 else logger.debug
        log(
            "pool %r: %s %s (%s); attempt %d, retrying in %.2f s",
            self.name,
            "the database rejected the connection to" if rejected else "cannot connect to",
            self.target,
            one_line(error),
            failures,
            delay,
        )
        self._nudge()

    # ------------------------------------------------------------------ returning

    def _hand_off(self, item: Entry | Token) -> None:
        """Give ``item`` to the oldest waiter. Caller holds the lock; waiters exist."""
        waiter = self._waiters.popleft()
        waiter.item = item
        if item is NEW_SLOT:
            self._connecting += 1
        waiter.wake.release()

    def _fill_waiters_locked(self) -> None:
        """Give free slots to waiters (unless the database is unreachable: maintenance
        reconnects then, and hands the connection over)."""
        if self._health.connect_failures or self._closed:
            return
        while self._waiters and self._open < self._max_open:
            self._open += 1
            self._hand_off(NEW_SLOT)

    def _check_in(self, entry: Entry, *, checked: bool = False, fast: bool = False) -> None:
        """Put a reset, healthy entry back: to the oldest waiter, the idle deque, or close it.

        ``checked``: the entry comes back from a maintenance check. ``fast``: its next return
        may take the fast path again (decided under the lock, where maintenance marks entries
        to retire).
        """
        with self._lock:
            if checked:
                self._checking.discard(entry)
            if fast:
                self._restore_tx_state(entry)
            if self._waiters and self._open <= self._max_open:
                self._hand_off(entry)
                return
            if len(self._idle) < self._keep:
                self._idle.append(entry)
                return
            self._forget_locked(entry, "pool_closed" if self._closed else "overflow")
        self._close_raw(entry)

    def _free_slot(self, *, connecting: bool = False, probe: bool = False) -> None:
        """A slot's connection is gone: hand the slot to the oldest waiter, or release it."""
        with self._lock:
            if connecting:
                self._connecting -= 1
            if probe:
                self._health.probing = False
            if (
                self._waiters
                and not self._closed
                and not self._health.connect_failures
                and self._open <= self._max_open
            ):
                self._hand_off(NEW_SLOT)
                return
            self._open -= 1
            self._after_shrink_locked()
            reconnect = bool(self._waiters and self._health.connect_failures and not self._closed)
        if reconnect:
            self._nudge()  # a slot for maintenance's next reconnection attempt

    def _forget_locked(self, entry: Entry, reason: str) -> None:
        """``entry`` is about to be closed (``reason``: see ``stats.CLOSE_REASONS``): release
        its slot. Caller holds the lock."""
        self._entries.discard(entry)
        self._checking.discard(entry)
        self._open -= 1
        self._count_closed_locked(reason)
        self._after_shrink_locked()

    def _count_closed_locked(self, reason: str) -> None:
        self._closed_count += 1
        closed_by = self._health.closed_by
        closed_by[reason] = closed_by.get(reason, 0) + 1

    def _after_shrink_locked(self) -> None:
        """A slot was released: signal a draining close(), or finish a shrinking resize()."""
        if self._closed:
            if self._open == 0:
                self._drained.set()
        elif self._keep != self.config.pool_size and self._open <= self._max_open:
            # Back under the new maximum: keep idle connections again, fill free slots.
            self._keep = self.config.pool_size
            self._fill_waiters_locked()

    def _claim(self, conn: PooledConnection) -> tuple[Entry, bool]:
        """Take the entry out of ``conn`` under the lock, so that only one release wins.

        Also returns whether a leak warning was logged for this checkout. From here on, no
        new one is: a slow reset on return is not the holder's doing.
        """
        if conn.__class__ is not PooledConnection:
            raise self._foreign(conn)
        with self._lock:
            entry = conn._entry
            if entry is None:
                raise PoolError("connection was already returned to the pool")
            if entry.pool is not self:
                raise self._foreign(conn)
            set_entry(conn, None)
            reported = entry.warned_for == entry.lent_at
            entry.warned_for = entry.lent_at
            return entry, reported

    def _release_slow(self, conn: PooledConnection, exc: BaseException | None) -> None:
        entry, reported = self._claim(conn)
        held = _now() - entry.lent_at
        self._reset_and_check_in(entry, exc)
        # After the connection is safe (checked in or discarded): an observer or a log
        # handler interrupted here can lose nothing.
        if self._track_use:  # (returns with an exception come here directly)
            self._record_use(held)
        if reported:
            # It was reported as a possible leak: say how it ended, so that a slow request
            # and a real leak can be told apart.
            leak_logger.warning(
                "pool %r: the connection held longer than leak_threshold=%g s by thread %r "
                "came back after %.1f s",
                self.name,
                self.config.leak_threshold,
                entry.thread_name,
                held,
            )

    def _reset_and_check_in(self, entry: Entry, exc: BaseException | None) -> None:
        """Reset a claimed entry and put it back, or discard it if that fails."""
        try:
            driver = entry.driver
            if self.config.on_checkin is not None:
                self.config.on_checkin(entry.raw)
            if exc is not None and driver.is_disconnect(exc, entry.raw):
                why = f"a disconnect error was raised while it was in use ({one_line(exc)})"
                self._discard(entry, why, "broken", disconnect=True)
                return
            if entry.retire:
                self._discard(entry, "it reached max_lifetime", "lifetime", quiet=True)
                return
            state = driver.transaction_state(entry.raw)
            if state == BROKEN:
                self._discard(entry, "the driver reports it broken", "broken", disconnect=True)
                return
            # After an error, roll back even if the flag says idle: some drivers (PyMySQL)
            # only refresh it from successful replies.
            rolled_back = (
                state == FAILED
                or exc is not None
                or (state == IN_TRANSACTION and self._rollback_on_return)
            )
            if rolled_back:
                driver.rollback(entry.raw)
            if entry.settings_changed:
                if not rolled_back and state != IDLE:
                    # reset_on_return=False left the borrower's transaction open, and some
                    # drivers would commit it to put a setting back (sqlite3's
                    # isolation_level, SET autocommit): discard the connection instead.
                    raise PoolError(
                        "client-side settings were changed and the transaction was left open "
                        "(reset_on_return=False): they cannot be restored without ending it"
                    )
                # After the rollback: some settings cannot change inside a transaction.
                driver.restore_settings(entry.raw, entry.saved_settings)
                entry.settings_changed = False
            if self._session_reset is not None:
                reset_session(
                    self._session_reset, self.config.on_connect, self.name, entry.raw, driver
                )
        except BaseException as error:
            # Its session state is unknown now: never lend it again.
            gone = isinstance(error, Exception) and entry.driver.is_disconnect(error, entry.raw)
            why = f"on_checkin or the reset failed ({one_line(error)})"
            self._discard(entry, why, "broken" if gone else "reset_failed", disconnect=gone)
            if not isinstance(error, Exception):
                raise
            return
        if entry.checked_at < self._health.disconnect_at:
            self._send_to_check(entry)  # lent across a disconnect: maintenance pings it
        else:
            self._check_in(entry, fast=True)

    def _release_quietly(self, conn: PooledConnection, exc: BaseException | None) -> None:
        """``close()`` / ``__exit__``: return ``conn``; a handle already returned is fine."""
        try:
            if exc is None:
                self.release(conn)
            else:
                self._release_slow(conn, exc)
        except PoolError:
            if conn._entry is not None:
                raise

    def _invalidate(self, conn: PooledConnection) -> None:
        entry, _ = self._claim(conn)
        self._discard(entry, "invalidate() was called", "invalidated")

    def _discard(
        self,
        entry: Entry,
        why: str,
        reason: str,
        *,
        disconnect: bool = False,
        quiet: bool = False,
    ) -> None:
        """Close ``entry`` for good and free its slot, whatever happens on the way.

        ``disconnect``: the connection was found dead; unless it was already suspect, others
        opened before now are suspect too and get checked before reuse.
        """
        try:
            with self._lock:
                self._count_closed_locked(reason)
                self._entries.discard(entry)
                self._checking.discard(entry)
                # A suspect found dead confirms what is known: checking the ones that
                # passed again would only repeat the work (quadratically in an outage).
                disconnect = disconnect and entry.checked_at >= self._health.disconnect_at
                if disconnect:
                    self._note_disconnect_locked(_now())
            (logger.debug if quiet else logger.info)(
                "pool %r: discarding a connection because %s", self.name, why
            )
            self._close_raw(entry)
        finally:
            self._free_slot()
            if disconnect:
                self._nudge()

    def _close_raw(self, entry: Entry) -> None:
        try:
            entry.driver.close(entry.raw)
        except Exception as error:  # already broken: nothing more to do
            logger.debug("pool %r: error closing a connection: %r", self.name, error)

    # ------------------------------------------------------------------ health

    def _note_disconnect_locked(self, now: float) -> None:
        """A connection turned out dead: the server may have restarted, killing every session
        opened before now. Idle ones go to maintenance for a ping; lent ones are checked when
        returned; meanwhile checkouts verify what they get. Caller holds the lock."""
        self._health.disconnect_at = now
        suspects = [entry for entry in self._idle if entry.checked_at < now]
        if suspects:
            for entry in suspects:
                self._idle.remove(entry)
            self._checking.update(suspects)
            self._to_check.extend(suspects)
        idle = set(self._idle)
        for entry in self._entries:
            if entry not in idle and entry not in self._checking and entry.checked_at < now:
                entry.tx_state = slow_return
        self._health.suspects = True
        self._select_acquire()

    def _send_to_check(self, entry: Entry) -> None:
        with self._lock:
            closed = self._closed
            if not closed:
                self._checking.add(entry)
                self._to_check.append(entry)
        if closed:
            self._check_in(entry)  # closes it
        else:
            self._nudge()

    def _nudge(self) -> None:
        """Wake the maintenance thread, starting it if needed (again, if it died)."""
        maintenance = self._maintenance
        if maintenance is not None and not maintenance.dead:
            maintenance.nudge()
            return
        with self._lock:
            if self._closed:
                return
            if self._maintenance is not maintenance:  # another thread just started one
                return
            maintenance = self._maintenance = Maintenance(self)
        # Outside the lock: under gevent, starting a thread switches greenlets.
        try:
            maintenance.start()
        except BaseException as error:
            with self._lock:
                if self._maintenance is maintenance:
                    self._maintenance = None  # the next nudge tries again
            if isinstance(error, RuntimeError):  # e.g. "can't create new thread" at exit
                logger.debug("pool %r: cannot start maintenance: %r", self.name, error)
                return
            raise

    def _restore_tx_state(self, entry: Entry) -> None:
        """A suspect entry passed its check, or a return that needed the slow path is done:
        let its returns take the fast path again."""
        if not self._slow_returns and not entry.retire and not entry.settings_changed:
            entry.tx_state = entry.driver.transaction_state

    # ------------------------------------------------------------------ messages

    def _state_locked(self) -> str:
        idle = len(self._idle)
        checking = len(self._checking)
        return (
            f"pool_size={self.config.pool_size}, max_overflow={self.config.max_overflow}, "
            f"open={self._open}, in_use={self._open - idle - self._connecting - checking}, "
            f"idle={idle}, connecting={self._connecting}, checking={checking}, "
            f"waiting={len(self._waiters)}"
        )

    def _timeout_report_locked(self, waited: float) -> TimeoutReport:
        """What a ``PoolTimeout`` for a caller that waited ``waited`` s (and is still counted
        as waiting) will say. Caller holds the lock; the message is built after."""
        self._health.timeouts += 1
        idle = set(self._idle)
        return TimeoutReport(
            waited,
            self._state_locked(),
            self._health.connect_failures,
            self._health.connect_error if self._health.connect_failures else None,
            self._health.rejection is not None,
            [
                holder_of(entry)
                for entry in self._entries
                if entry not in idle and entry not in self._checking
            ],
        )

    def _foreign(self, conn: object) -> PoolError:
        if isinstance(conn, PooledConnection):
            entry = conn._entry
            if entry is None:
                return PoolError("connection was already returned to its pool")
            if entry.pool is INHERITED:
                return PoolError(
                    "connection was checked out before os.fork(); it belongs to the parent "
                    "process and was closed in this one"
                )
            return PoolError(
                f"connection belongs to pool {entry.pool.name!r}, not to pool {self.name!r}"
            )
        return PoolError(
            f"pool {self.name!r} can only take back connections it lent, got "
            f"{type(conn).__name__}"
        )
