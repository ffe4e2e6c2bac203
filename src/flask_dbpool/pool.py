"""The connection pool.

One lock guards all state. The hot path (an idle connection available, an idle connection
returned) is a single short critical section with no I/O, logging or clock reads. Everything
slow (connecting, rolling back, closing) happens outside the lock, with the slot it concerns
accounted for under the lock before and after, so an exception at any point (including
``KeyboardInterrupt`` or a gevent ``Timeout`` while waiting) never loses a slot.

Waiters queue in FIFO order. A returned connection, or a freed slot, is handed directly to
the oldest waiter under the lock, so a newcomer can never barge past a waiting thread, and a
waiter that has already given up is never handed anything (see :meth:`Pool._wait`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, cast

from flask_dbpool._fork import detach_fd, keep_forever, track
from flask_dbpool.config import PoolConfig
from flask_dbpool.drivers import (
    BROKEN,
    FAILED,
    IDLE,
    IN_TRANSACTION,
    Connector,
    Driver,
    driver_for_connection,
    resolve_target,
)
from flask_dbpool.entry import Entry
from flask_dbpool.errors import ConfigError, PoolClosed, PoolError, PoolTimeout, TooManyWaiters
from flask_dbpool.proxy import PooledConnection, set_entry
from flask_dbpool.stats import PoolStats

__all__ = ["Pool"]

logger = logging.getLogger("flask_dbpool.pool")

_new_proxy = object.__new__


class _Token:
    """A marker handed to a waiter instead of a connection."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Handed to a waiter: "a slot is yours, open a new connection in it".
_NEW_SLOT: Final = _Token("NEW_SLOT")
#: Handed to a waiter: "the pool was closed".
_CLOSED: Final = _Token("CLOSED")


def _check_timeout(timeout: object) -> None:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not timeout >= 0  # rejects NaN too
    ):
        raise ConfigError(f"timeout must be a number of seconds >= 0, got {timeout!r}")


def _needs_reset(raw: Any) -> int:
    """Transaction reader of entries that need a session reset on every return."""
    return IN_TRANSACTION


class _Inherited:
    """Stands in as the pool of connections inherited across ``fork()`` (closed in the child):
    returning such a handle just empties it."""

    name = "<inherited across fork>"

    def release(self, conn: PooledConnection) -> None:
        set_entry(conn, None)

    def _release_quietly(self, conn: PooledConnection, exc: BaseException | None) -> None:
        set_entry(conn, None)

    def _invalidate(self, conn: PooledConnection) -> None:
        set_entry(conn, None)


_INHERITED = cast("Pool", _Inherited())


class _Waiter:
    """One caller waiting for a connection. Created only when a caller must wait."""

    __slots__ = ("item", "wake")

    def __init__(self) -> None:
        self.item: Entry | _Token | None = None
        # A lock created held works as a one-shot event, cheaper than threading.Event.
        # Looked up at call time so gevent's monkey-patching applies.
        self.wake = threading.Lock()
        self.wake.acquire()


class Pool:
    """A thread-safe pool of DB-API 2.0 connections.

    ``target`` is a database URL (``sqlite:///app.db``, ``postgresql://user:pw@host/db``,
    ``mysql://user:pw@host/db`` …) or a zero-argument callable returning a new DB-API
    connection. Keyword options are described in :class:`~flask_dbpool.config.PoolConfig`;
    invalid values raise :class:`~flask_dbpool.ConfigError` naming the parameter.

    Connections are opened lazily (see :meth:`warm_up`). Use :meth:`connection` in a ``with``
    block, or :meth:`acquire` / :meth:`release`. ``with Pool(...) as pool:`` closes the pool
    on exit.
    """

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
    ) -> None:
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
            }
        )
        self._connector: Connector = resolve_target(target)
        self.name: Final = self.config.name
        self._timeout = self.config.timeout
        self._max_open = self.config.max_open
        reset = self.config.reset_on_return
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

        self._lock = threading.Lock()
        self._entries: set[Entry] = set()  # every open connection, idle or lent (for fork)
        self._idle: deque[Entry] = deque()
        self._take_idle = self._idle.pop if self.config.lifo else self._idle.popleft
        self._waiters: deque[_Waiter] = deque()
        self._open = 0  # slots taken: open connections plus those being opened
        self._connecting = 0
        self._keep = self.config.pool_size  # most idle connections kept; 0 once closed
        self._closed = False
        self._drained = threading.Event()  # set once closed and every slot is free

        self._acquired = 0
        self._created = 0
        self._closed_count = 0
        self._timeouts = 0
        self._rejected = 0
        self._waits = 0
        self._wait_total = 0.0
        self._wait_max = 0.0
        track(self)

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
        :class:`~flask_dbpool.PoolTimeout` when none became available,
        :class:`~flask_dbpool.PoolClosed` if the pool is closed, and the driver's own error if
        opening a new connection failed. Return the connection with :meth:`release` or its
        ``close()``.
        """
        if timeout is not None:
            _check_timeout(timeout)  # also on the fast path: a bad value must not wait for load
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
                self._acquired += 1
                return conn
        finally:
            lock.release()
        return self._acquire_slow(timeout)

    def connection(self, timeout: float | None = None) -> PooledConnection:
        """Check out a connection for a ``with`` block: ``with pool.connection() as conn:``.

        The connection is returned when the block exits; if the block raised, its transaction
        is rolled back first, and a connection the error shows to be broken is discarded.
        Waits and raises like :meth:`acquire`.
        """
        return self.acquire(timeout)

    def release(self, conn: PooledConnection) -> None:
        """Return ``conn`` to the pool.

        An open transaction is rolled back (if ``reset_on_return``); a broken connection, or
        one whose rollback fails, is closed and its slot freed. Raises
        :class:`~flask_dbpool.PoolError` if ``conn`` was already returned or belongs to
        another pool.
        """
        if conn.__class__ is not PooledConnection:
            raise self._foreign(conn)
        entry = conn._entry
        if entry is not None and entry.pool is self and entry.tx_state(entry.raw) == IDLE:
            lock = self._lock
            lock.acquire()
            try:
                if conn._entry is entry:  # claimed under the lock: a racing release loses
                    set_entry(conn, None)
                    if self._waiters and self._open <= self._max_open:
                        self._hand_off(entry)
                        return
                    if len(self._idle) < self._keep:
                        self._idle.append(entry)
                        return
                    # pool_size connections are idle already (or the pool is closed): this
                    # one is surplus. Closing only then avoids reopening overflow connections
                    # over and over while demand stays between pool_size and the maximum.
                    self._open -= 1
                    self._closed_count += 1
                    self._after_shrink_locked()
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
            with self._lock:
                self._connecting -= 1
                self._created += 1
            self._check_in(entry)
            opened += 1

    def resize(self, pool_size: int | None = None, max_overflow: int | None = None) -> None:
        """Change ``pool_size`` and/or ``max_overflow`` at runtime, safely under load.

        Growing hands the new slots to waiting callers at once. Shrinking closes surplus idle
        connections now; connections in use above the new limits are closed as they come
        back, and waiters are served only once the pool is under its new maximum. Invalid
        values raise :class:`~flask_dbpool.ConfigError` and change nothing.
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
            while self._waiters and self._open < self._max_open:
                self._open += 1
                self._hand_off(_NEW_SLOT)
            surplus = []
            while len(self._idle) > self._keep:
                surplus.append(self._idle.popleft())  # the least recently used go first
            self._open -= len(surplus)
            self._closed_count += len(surplus)
            self._after_shrink_locked()
        for entry in surplus:
            self._close_raw(entry)
        logger.info(
            "pool %r resized to pool_size=%d, max_overflow=%d (%d idle closed)",
            self.name,
            config.pool_size,
            config.max_overflow,
            len(surplus),
        )

    def stats(self) -> PoolStats:
        """A consistent snapshot of the pool's gauges and totals."""
        with self._lock:
            idle = len(self._idle)
            return PoolStats(
                name=self.name,
                pool_size=self.config.pool_size,
                max_overflow=self.config.max_overflow,
                open=self._open,
                idle=idle,
                in_use=self._open - idle - self._connecting,
                connecting=self._connecting,
                waiting=len(self._waiters),
                acquired=self._acquired,
                created=self._created,
                closed=self._closed_count,
                timeouts=self._timeouts,
                rejected=self._rejected,
                waits=self._waits,
                wait_seconds_total=self._wait_total,
                wait_seconds_max=self._wait_max,
            )

    def close(self, timeout: float | None = None) -> None:
        """Close the pool.

        Lending stops at once: waiters are woken with :class:`~flask_dbpool.PoolClosed`,
        later ``acquire()`` calls raise it, and idle connections are closed now. Without
        ``timeout``, connections still checked out are closed when they are returned. With
        ``timeout`` (seconds), waits that long for them to come back, then closes those still
        out (their holders' next use fails) so that no server session is left behind.
        Idempotent; a later call with a timeout still waits and closes what is left.
        """
        if timeout is not None:
            _check_timeout(timeout)
        with self._lock:
            idle = list(self._idle)
            self._idle.clear()
            self._open -= len(idle)
            self._closed_count += len(idle)
            first = not self._closed
            self._closed = True
            self._keep = 0
            while self._waiters:
                self._hand_off(_CLOSED)
            self._after_shrink_locked()
        for entry in idle:
            self._close_raw(entry)
        if first:
            logger.info("pool %r closed (%d idle connections closed)", self.name, len(idle))
        if timeout is None or self._drained.wait(timeout):
            return
        # Borrowers did not return in time: close their connections under them.
        with self._lock:
            leftovers = list(self._entries)
        if leftovers:
            logger.warning(
                "pool %r: %d connection(s) still checked out after %.1f s; closing them",
                self.name,
                len(leftovers),
                timeout,
            )
        for entry in leftovers:
            self._close_raw(entry)

    def _after_shrink_locked(self) -> None:
        """A slot was released: signal a draining close(), or finish a shrinking resize()."""
        if self._closed:
            if self._open == 0:
                self._drained.set()
        elif self._keep != self.config.pool_size and self._open <= self._max_open:
            # Back under the new maximum: keep idle connections again, fill free slots.
            self._keep = self.config.pool_size
            while self._waiters and self._open < self._max_open:
                self._open += 1
                self._hand_off(_NEW_SLOT)

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
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self._drained = threading.Event()
        idle = set(self._idle)
        inherited = list(self._entries)
        self._entries.clear()
        self._idle.clear()
        self._waiters.clear()  # their threads do not exist here
        self._open = self._connecting = 0
        self._acquired = self._created = self._closed_count = 0
        self._timeouts = self._rejected = self._waits = 0
        self._wait_total = self._wait_max = 0.0
        self._keep = 0 if self._closed else self.config.pool_size
        for entry in inherited:
            entry.pool = _INHERITED  # handles lent before the fork become inert
            fd = entry.driver.socket_fd(entry.raw)
            if fd is not None:
                detach_fd(fd)
            if entry in idle:
                self._close_raw(entry)
            else:
                # Lent at fork time: another parent thread may have been inside the driver,
                # holding a lock no thread here will release, so close() could hang (and
                # SQLite could roll back the parent's journal). Keep it, untouched, forever.
                keep_forever(entry.raw)

    # ------------------------------------------------------------------ acquiring

    def _acquire_slow(self, timeout: float | None) -> PooledConnection:
        if timeout is None:
            timeout = self._timeout
        with self._lock:
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} is closed")
            if not self._waiters:
                if self._idle:
                    entry = self._take_idle()
                    self._acquired += 1
                    return self._lend(entry)
                if self._open < self._max_open:
                    self._open += 1
                    self._connecting += 1
                    waiter = None
                else:
                    waiter = _Waiter()
            else:
                waiter = _Waiter()
            if waiter is not None:
                max_waiting = self.config.max_waiting
                if max_waiting and len(self._waiters) >= max_waiting:
                    self._rejected += 1
                    raise TooManyWaiters(
                        f"pool {self.name!r} ({self.target}) refused a caller: "
                        f"max_waiting={max_waiting} callers already wait; "
                        + self._state_locked()
                    )
                self._waiters.append(waiter)
                if timeout == 0:
                    message = self._timeout_message_locked(0.0)
                    self._waiters.pop()
                    self._timeouts += 1
                    raise PoolTimeout(message)
        if waiter is None:
            return self._open_in_slot()
        return self._wait(waiter, timeout)

    def _wait(self, waiter: _Waiter, timeout: float) -> PooledConnection:
        # The handshake: whoever holds the pool lock decides. A releaser hands an item only
        # to a waiter still queued (and dequeues it at once); a waiter giving up dequeues
        # itself only if nothing was handed yet, and otherwise takes (or gives back) the item.
        # Everything from the wait to the hand-back of the handle is covered: an interrupt
        # (KeyboardInterrupt, gevent Timeout) at any point gives back whatever was handed over.
        start = time.monotonic()
        try:
            waiter.wake.acquire(True, min(timeout, threading.TIMEOUT_MAX))
            waited = time.monotonic() - start
            with self._lock:
                self._waits += 1
                self._wait_total += waited
                if waited > self._wait_max:
                    self._wait_max = waited
                item = waiter.item
                if item is None:
                    # Timed out with nothing handed over: leave the queue.
                    message = self._timeout_message_locked(waited)
                    self._waiters.remove(waiter)
                    self._timeouts += 1
                    raise PoolTimeout(message)
            if item is _CLOSED:
                raise PoolClosed(f"pool {self.name!r} was closed while waiting for a connection")
            if item is _NEW_SLOT:
                waiter.item = None  # from here on _open_in_slot owns the slot
                return self._open_in_slot()
            assert isinstance(item, Entry)
            conn = self._lend(item)
            waiter.item = None
            return conn
        except BaseException:
            self._abandon(waiter)
            raise

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter gave up: leave the queue, or pass on what it was handed and not used."""
        with self._lock:
            item = waiter.item
            waiter.item = None
            if item is None:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                return
            if isinstance(item, Entry):
                self._acquired -= 1  # counted at the hand-off; it was never used
        if item is _NEW_SLOT:
            self._free_slot(connecting=True)
        elif isinstance(item, Entry):
            self._check_in(item)

    def _lend(self, entry: Entry) -> PooledConnection:
        conn = _new_proxy(PooledConnection)
        set_entry(conn, entry)
        return conn

    def _open_in_slot(self) -> PooledConnection:
        """Open a connection in a slot already reserved (counted in open and connecting)."""
        entry = self._connect_in_slot()
        with self._lock:
            self._connecting -= 1
            self._created += 1
            if not self._closed:
                self._acquired += 1
                return self._lend(entry)
            self._open -= 1
            self._closed_count += 1
            self._after_shrink_locked()
        self._close_raw(entry)
        raise PoolClosed(f"pool {self.name!r} was closed while a connection was being opened")

    def _connect_in_slot(self) -> Entry:
        """Connect; on any failure give the reserved slot back (to a waiter, if one exists)."""
        ok = False
        try:
            raw = self._connector.connect()
            driver = self._connector.driver or driver_for_connection(raw)
            if self.config.on_connect is not None:
                self._run_on_connect(raw, driver)
            entry = Entry(self, raw, driver, time.monotonic())
            if self._session_reset is not None:
                entry.tx_state = _needs_reset  # every return takes the resetting slow path
            self._entries.add(entry)
            ok = True
        finally:
            if not ok:
                self._free_slot(connecting=True)
        return entry

    def _reset_session(self, entry: Entry) -> None:
        """The full reset of ``reset_on_return="discard"`` or a callable; raises on failure."""
        driver, raw = entry.driver, entry.raw
        if self._session_reset == "discard":
            if not driver.supports_session_reset:
                raise PoolError(f"reset_on_return='discard' is not supported by {driver.name}")
            driver.reset_session(raw)
            if self.config.on_connect is not None:
                self._run_on_connect(raw, driver)  # DISCARD ALL wiped what it had set
        elif callable(self._session_reset):
            self._session_reset(raw)
            if driver.transaction_state(raw) != IDLE:
                raw.commit()  # e.g. SET ROLE NONE issued inside an implicit transaction

    def _run_on_connect(self, raw: Any, driver: type[Driver]) -> None:
        """Run the ``on_connect`` hook; commit what it left open; close ``raw`` if it fails."""
        assert self.config.on_connect is not None
        try:
            self.config.on_connect(raw)
            state = driver.transaction_state(raw)
            if state in (BROKEN, FAILED):
                # Committing an aborted transaction would silently roll the hook's work back.
                raise PoolError(
                    f"pool {self.name!r}: on_connect left the connection "
                    + ("broken" if state == BROKEN else "in an aborted transaction")
                )
            if state != IDLE:
                raw.commit()  # so that SET / PRAGMA statements outlive the first reset
        except BaseException:
            try:
                driver.close(raw)
            except Exception:
                pass
            raise

    # ------------------------------------------------------------------ returning

    def _hand_off(self, item: Entry | _Token) -> None:
        """Give ``item`` to the oldest waiter. Caller holds the lock; waiters exist."""
        waiter = self._waiters.popleft()
        waiter.item = item
        if item is _NEW_SLOT:
            self._connecting += 1
        elif item is not _CLOSED:
            self._acquired += 1
        waiter.wake.release()

    def _check_in(self, entry: Entry) -> None:
        """Put a reset, healthy entry back: to the oldest waiter, the idle deque, or close it."""
        with self._lock:
            if self._waiters and self._open <= self._max_open:
                self._hand_off(entry)
                return
            if len(self._idle) < self._keep:
                self._idle.append(entry)
                return
            self._open -= 1
            self._closed_count += 1
            self._after_shrink_locked()
        self._close_raw(entry)

    def _free_slot(self, *, connecting: bool = False) -> None:
        """A slot's connection is gone: hand the slot to the oldest waiter, or release it."""
        with self._lock:
            if connecting:
                self._connecting -= 1
            if self._waiters and not self._closed and self._open <= self._max_open:
                self._hand_off(_NEW_SLOT)
            else:
                self._open -= 1
                self._after_shrink_locked()

    def _claim(self, conn: PooledConnection) -> Entry:
        """Take the entry out of ``conn`` under the lock, so that only one release wins."""
        if conn.__class__ is not PooledConnection:
            raise self._foreign(conn)
        with self._lock:
            entry = conn._entry
            if entry is None:
                raise PoolError("connection was already returned to the pool")
            if entry.pool is not self:
                raise self._foreign(conn)
            set_entry(conn, None)
            return entry

    def _release_slow(self, conn: PooledConnection, exc: BaseException | None) -> None:
        entry = self._claim(conn)
        try:
            driver = entry.driver
            if exc is not None and driver.is_disconnect(exc, entry.raw):
                self._discard(entry, "a disconnect error was raised while it was in use")
                return
            state = driver.transaction_state(entry.raw)
            if state == BROKEN:
                self._discard(entry, "the driver reports it broken")
                return
            # After an error, roll back even if the flag says idle: some drivers (PyMySQL)
            # only refresh it from successful replies.
            if (
                state == FAILED
                or exc is not None
                or (state == IN_TRANSACTION and self._rollback_on_return)
            ):
                driver.rollback(entry.raw)
            if self._session_reset is not None:
                self._reset_session(entry)
        except BaseException as error:
            # Its session state is unknown now: never lend it again.
            self._discard(entry, f"resetting it on return failed ({error!r})")
            if not isinstance(error, Exception):
                raise
            return
        self._check_in(entry)

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
        entry = self._claim(conn)
        self._discard(entry, "invalidate() was called")

    def _discard(self, entry: Entry, why: str) -> None:
        """Close ``entry`` for good and free its slot, whatever happens on the way."""
        try:
            with self._lock:
                self._closed_count += 1
            logger.info("pool %r: discarding a connection because %s", self.name, why)
            self._close_raw(entry)
        finally:
            self._free_slot()

    def _close_raw(self, entry: Entry) -> None:
        self._entries.discard(entry)
        try:
            entry.driver.close(entry.raw)
        except Exception as error:  # already broken: nothing more to do
            logger.debug("pool %r: error closing a connection: %r", self.name, error)

    # ------------------------------------------------------------------ messages

    def _state_locked(self) -> str:
        idle = len(self._idle)
        return (
            f"pool_size={self.config.pool_size}, max_overflow={self.config.max_overflow}, "
            f"open={self._open}, in_use={self._open - idle - self._connecting}, idle={idle}, "
            f"connecting={self._connecting}, waiting={len(self._waiters)}"
        )

    def _timeout_message_locked(self, waited: float) -> str:
        return (
            f"pool {self.name!r} ({self.target}) timed out after {waited:.3f} s waiting for a "
            f"connection: {self._state_locked()} (this caller included)"
        )

    def _foreign(self, conn: object) -> PoolError:
        if isinstance(conn, PooledConnection):
            entry = conn._entry
            if entry is None:
                return PoolError("connection was already returned to its pool")
            if entry.pool is _INHERITED:
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
