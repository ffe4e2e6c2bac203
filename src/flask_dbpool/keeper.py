"""The threaded pool's hands: it carries out the decisions of
:class:`~flask_dbpool.state.PoolState` that involve a connection's I/O.

Opening a connection in a reserved slot, putting one back or discarding it, freeing a slot,
the slow return (reset, then keep or discard) and the maintenance run all follow the same
pattern: decide under the pool's lock (a state method), do the I/O outside it through
:class:`~flask_dbpool.lifecycle.Lifecycle`, and report the outcome under the lock again, with
the slot accounted for at every point, so that an exception anywhere (``KeyboardInterrupt``,
a gevent ``Timeout``) never loses one. :class:`~flask_dbpool.Pool` keeps the public API, the
inlined hot path and the waiting; everything slower is delegated here.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from flask_dbpool import messages
from flask_dbpool._fork import INHERITED
from flask_dbpool.entry import Entry, Owner
from flask_dbpool.errors import PoolClosed, PoolError, one_line
from flask_dbpool.leaks import Holder, find_orphans
from flask_dbpool.lifecycle import Lifecycle
from flask_dbpool.maintenance import PING_TIMEOUT, Maintenance
from flask_dbpool.proxy import PooledConnection, entry_of, handle_for, set_entry
from flask_dbpool.state import MAX_SLEEP, PROBE, PoolState

#: close(timeout): how long cancelling the statements still running and closing the
#: connections may add to the timeout, at most (each cancel request is bounded by
#: CANCEL_TIMEOUT; holders get CANCEL_GRACE to give a cancelled connection back).
SHUTDOWN_BOUND = 3.0
CANCEL_TIMEOUT = 1.0
CANCEL_GRACE = 1.0
#: How many reclaimed checkouts a pool remembers (Pool.reclaimed).
RECLAIMED_KEPT = 64

if TYPE_CHECKING:
    from flask_dbpool._handoff import Waiter

__all__ = ["Keeper", "KeptPool", "detached"]

logger = logging.getLogger("flask_dbpool.pool")
maintenance_logger = logging.getLogger("flask_dbpool.maintenance")
leak_logger = logging.getLogger("flask_dbpool.leaks")

_now = time.monotonic
_get_ident = threading.get_ident


def detached(error: BaseException) -> BaseException:
    """A copy of ``error`` without its traceback, to keep or to raise in another caller
    (one exception object raised in several threads would collect all their frames)."""
    try:
        twin = copy.copy(error)
    except Exception:  # an exception type that cannot be copied: share the original
        return error.with_traceback(None)
    return twin.with_traceback(None) if isinstance(twin, BaseException) else error


class KeptPool(Owner, Protocol):
    """The pool a :class:`Keeper` works for: the owner of its entries, and what the
    maintenance thread calls."""

    def run_maintenance(self) -> float:
        """One maintenance run; the seconds until the next is due."""


class Keeper:
    """Carries out one pool's decisions that take I/O (see the module docstring).

    ``lock`` and ``state`` are the pool's; the pool's hot path uses them directly too.
    A forked child gets a new keeper with a new lock and state.
    """

    __slots__ = (
        "drained",
        "life",
        "lock",
        "maintenance",
        "name",
        "owner",
        "reclaimed",
        "returning",
        "state",
    )

    def __init__(self, owner: KeptPool, life: Lifecycle, state: PoolState[Entry]) -> None:
        self.owner = owner
        self.name = owner.name
        self.life = life
        self.lock = threading.Lock()
        self.state = state
        self.drained = threading.Event()  # set once closed and every slot is free
        # Entries whose holders are returning them (claimed, reset under way): close(timeout)
        # must not close one under the thread resetting it.
        self.returning: set[Entry] = set()
        state.on_drained = self.drained.set
        self.maintenance: Maintenance | None = None
        #: The last checkouts found dropped without being returned (see Pool.reclaimed).
        self.reclaimed: deque[Holder] = deque(maxlen=RECLAIMED_KEPT)

    def run_maintenance(self) -> float:
        """One maintenance run (see :meth:`flask_dbpool.Pool.run_maintenance`); returns the
        seconds until the next is due."""
        state, lock = self.state, self.lock
        with lock:
            if state.closed:
                return MAX_SLEEP
            swept_at = _now()
            sweep = state.sweep(swept_at, find_orphans)
            # Under the lock with the sweep: a reclaimed checkout is always either lent
            # (Pool.checkouts) or in this list (Pool.reclaimed), never in neither.
            self.reclaimed.extend(sweep.orphan_holders)
        next_run = sweep.next_run
        # The I/O, outside the lock. Slots first: each dropped handle's slot is given back
        # even if something below (a logging handler, say) raises.
        for orphan in sweep.orphans:
            try:
                self.life.close(orphan)
            finally:
                self.free_slot()
        for entry, reason in sweep.to_close:
            maintenance_logger.debug("pool %r: closing an idle connection (%s)", self.name, reason)
            self.life.close(entry)
        to_ping = sweep.to_ping
        try:
            while to_ping:
                entry = to_ping.pop()
                try:
                    self.life.ping(entry, PING_TIMEOUT)
                except Exception as error:
                    why = f"its check failed ({one_line(error)})"
                    self.discard(entry, why, "ping_failed", disconnect=True)
                    continue
                except BaseException:  # interrupted mid-ping: its state is unknown
                    self.discard(entry, "its check was interrupted", "ping_failed")
                    raise
                with lock:
                    surplus = state.passed_check(entry, _now())
                if surplus is not None:
                    self.life.close(surplus)
                next_run = min(next_run, entry.expires_at)
                keepalive = self.state.config.keepalive_interval
                if keepalive is not None:
                    next_run = min(next_run, entry.checked_at + keepalive)
        finally:
            for entry in to_ping:  # interrupted: the next run checks the rest
                self.send_to_check(entry)
        now = swept_at  # hold times as the sweep saw them
        for holder in sweep.orphan_holders:
            leak_logger.warning("%s", messages.orphan_report(self.name, holder, now))
        for holder in sweep.leaks:
            threshold = self.state.config.leak_threshold or 0.0
            leak_logger.warning("%s", messages.leak_report(self.name, holder, now, threshold))
        # Reconnect (with back-off) for waiters, or refill min_idle. Last, so that a
        # reserved slot goes straight to the attempt.
        with lock:
            plan, due = state.plan_connect(_now())
        if plan is None:
            return max(0.0, min(next_run, due) - _now())
        try:
            opened = self.connect_in_slot(probe=plan is PROBE)
        except Exception as error:  # on_connect failed: retry later, quietly
            with lock:
                delay = state.refill_failed(_now())
            maintenance_logger.warning(
                "pool %r: cannot open a connection for min_idle (%s); retrying in %.1f s",
                self.name,
                one_line(error),
                delay,
            )
            return delay
        if isinstance(opened, Entry):
            with lock:
                state.refill_failures = 0
            self.check_in(opened)
            return 0.0  # there may be more to open
        return max(0.0, next_run - _now())

    def open_in_slot(
        self, *, probe: bool = False, waiter: Waiter | None = None
    ) -> PooledConnection | None:
        """Open a connection in a slot already reserved and lend it; ``None`` if the database
        could not be reached (the slot is released and the failure recorded)."""
        entry = self.connect_in_slot(probe=probe, waiter=waiter)
        if not isinstance(entry, Entry):
            if self.life.is_rejection(entry):
                raise entry  # refused for good: the caller gets the driver's error now
            return None
        with self.lock:
            if not self.state.closed:
                return handle_for(self.state.lend(entry, _now(), _get_ident()))
            self.state.forget(entry, "pool_closed")
        self.life.close(entry)
        raise PoolClosed(messages.closed_while_connecting(self.name))

    def connect_in_slot(
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
            raw = self.life.connect()
        except Exception as error:
            self.connect_failed(error, probe, started)
            return error
        except BaseException:
            self.free_slot(connecting=True, probe=probe)
            raise
        try:
            entry = self.life.prepare(raw, _now)
        except BaseException:
            self.free_slot(connecting=True, probe=probe)
            raise
        accounted = False
        try:
            with self.lock:
                recovered = self.state.connected(entry, started, entry.created, probe)
                accounted = True
                self.state.notify("create", entry.created - started)
        except BaseException:
            if accounted:  # an observer raised: the connection is the pool's already
                self.check_in(entry)
            else:  # interrupted before the pool knew of it
                try:
                    self.life.close(entry)
                finally:
                    self.free_slot(connecting=True, probe=probe)
            raise
        if recovered:
            logger.warning(
                "pool %r: connected to %s again after %d failed attempt(s)",
                self.name,
                self.life.connector.description,
                recovered,
            )
        try:
            self.nudge()  # starts maintenance, or lets it schedule the new connection
        except BaseException:
            self.check_in(entry)  # interrupted (gevent): the connection must not be lost
            raise
        return entry

    def connect_failed(self, error: Exception, probe: bool, started: float) -> None:
        """Release the slot of a failed connection attempt and schedule a retry."""
        rejected = self.life.is_rejection(error)
        # Kept without its traceback: the frames would keep callers' locals alive.
        kept = detached(error)
        with self.lock:
            failures, delay = self.state.connect_failed(kept, rejected, started, _now(), probe)
        log = logger.warning if failures == 1 else logger.debug
        log(
            "pool %r: %s %s (%s); attempt %d, retrying in %.2f s",
            self.name,
            "the database rejected the connection to" if rejected else "cannot connect to",
            self.life.connector.description,
            one_line(error),
            failures,
            delay,
        )
        self.nudge()

    # ------------------------------------------------------------------ returning

    def check_in(self, entry: Entry) -> None:
        """Put a reset, healthy entry back: to the oldest waiter, the idle deque, or close it."""
        with self.lock:
            surplus = self.state.check_in(entry)
        if surplus is not None:
            self.life.close(surplus)

    def free_slot(self, *, connecting: bool = False, probe: bool = False) -> None:
        """A slot's connection is gone: hand the slot to the oldest waiter, or release it."""
        with self.lock:
            reconnect = self.state.slot_freed(connecting=connecting, probe=probe)
        if reconnect:
            self.nudge()  # a slot for maintenance's next reconnection attempt

    def claim(self, conn: PooledConnection, *, returning: bool = False) -> tuple[Entry, bool]:
        """Take the entry out of ``conn`` under the lock, so that only one release wins.

        Also returns whether a leak warning was logged for this checkout. From here on, no
        new one is: a slow reset on return is not the holder's doing. ``returning``: the
        caller resets it next (listed in :attr:`returning` until it is done).
        """
        if not isinstance(conn, PooledConnection):
            raise self.foreign(conn)
        with self.lock:
            entry = entry_of(conn)
            if entry is None:
                raise PoolError(messages.already_returned())
            if entry.pool is not self.owner:
                raise self.foreign(conn)
            set_entry(conn, None)
            if returning:
                self.returning.add(entry)
            return entry, self.state.claim(entry)

    def release_slow(self, conn: PooledConnection, exc: BaseException | None) -> None:
        entry, reported = self.claim(conn, returning=True)
        try:
            self._finish_return(entry, reported, exc)
        finally:
            with self.lock:
                self.returning.discard(entry)

    def _finish_return(self, entry: Entry, reported: bool, exc: BaseException | None) -> None:
        held = _now() - entry.lent_at
        verdict = self.life.reset(entry, exc)
        if verdict is not None:
            self.discard(
                entry,
                verdict.why,
                verdict.reason,
                disconnect=verdict.disconnect,
                quiet=verdict.quiet,
            )
            if verdict.drain:
                self.drain()
            if verdict.interrupt is not None:
                raise verdict.interrupt
        else:
            with self.lock:
                state = self.state
                # Lent across a disconnect: maintenance pings it before it is lent again.
                checking = state.suspect(entry) and state.send_to_check(entry)
                surplus = None if checking else state.check_in(entry, fast=True)
            if surplus is not None:
                self.life.close(surplus)
            if checking:
                self.nudge()
        # After the connection is safe (checked in or discarded): an observer or a log
        # handler interrupted here can lose nothing.
        if self.state.track_use:  # (returns with an exception come here directly)
            with self.lock:
                self.state.use_time.record(held)
                for observer in self.state.observers:
                    observer("use", held)
        if reported:
            # It was reported as a possible leak: say how it ended, so that a slow request
            # and a real leak can be told apart.
            leak_logger.warning(
                "pool %r: the connection held longer than leak_threshold=%g s by thread %r "
                "came back after %.1f s",
                self.name,
                self.state.config.leak_threshold,
                entry.thread_name,
                held,
            )

    def release_after(self, conn: PooledConnection, exc: BaseException) -> None:
        """Return ``conn`` after ``exc`` interrupted its checkout; a handle already returned
        (by a racing ``close()``) is fine."""
        try:
            self.release_slow(conn, exc)
        except PoolError:
            if entry_of(conn) is not None:
                raise

    def discard(
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
        news = False
        try:
            with self.lock:
                news = self.state.discarded(entry, reason, disconnect=disconnect, now=_now())
            (logger.debug if quiet else logger.info)(
                "pool %r: discarding a connection because %s", self.name, why
            )
            self.life.close(entry)
        finally:
            self.free_slot()
            if news:
                self.nudge()

    def drain(self) -> tuple[int, int]:
        """Retire every connection open now (see :meth:`flask_dbpool.Pool.drain`): close the
        idle ones; returns how many were closed now and how many will be on return."""
        with self.lock:
            if self.state.closed:
                return 0, 0
            to_close, marked = self.state.drain(_now())
        for entry in to_close:
            self.life.close(entry)
        logger.info(
            "pool %r drained: %d idle connection(s) closed, %d in use closed when returned",
            self.name,
            len(to_close),
            marked,
        )
        return len(to_close), marked

    def count_retry(self) -> None:
        """``run_transaction`` runs a unit of work again."""
        with self.lock:
            self.state.transaction_retries += 1

    def wait_then_cancel(self, timeout: float) -> None:
        """The end of ``close(timeout)``: wait up to ``timeout`` for the borrowed connections;
        then cancel what still runs on them and close them (:meth:`cancel_and_close`)."""
        if self.drained.wait(timeout):
            return
        with self.lock:
            leftovers = [e for e in self.state.entries if e not in self.state.checking]
        if leftovers:
            logger.warning(
                "pool %r: %d connection(s) still checked out after %.1f s; cancelling their "
                "statements and closing them",
                self.name,
                len(leftovers),
                timeout,
            )
            self.cancel_and_close(leftovers)

    def cancel_and_close(self, leftovers: list[Entry]) -> int:
        """The end of ``close(timeout)``: cancel what still runs on ``leftovers`` (the
        connections not given back in time), give their holders :data:`CANCEL_GRACE` to
        return them, then close those still out under their holders. Each step runs in
        daemon threads, so that a server or network that stopped answering cannot hold this
        past :data:`SHUTDOWN_BOUND`. Returns how many were closed under their holders."""
        deadline = _now() + SHUTDOWN_BOUND
        connect = self.life.connector.connect

        def cancel(entry: Entry) -> None:
            try:
                entry.driver.cancel(entry.raw, CANCEL_TIMEOUT, connect)
            except Exception as error:
                logger.debug("pool %r: cancel failed: %s", self.name, one_line(error))

        _run_bounded([functools.partial(cancel, e) for e in leftovers], deadline, "cancel")
        self.drained.wait(max(0.0, min(CANCEL_GRACE, deadline - _now())))
        with self.lock:
            # (Not those being returned: their holders close them, the pool being closed.)
            still = [
                entry
                for entry in leftovers
                if entry in self.state.entries and entry not in self.returning
            ]
        _run_bounded([functools.partial(self.life.close, e) for e in still], deadline, "close")
        return len(still)

    def send_to_check(self, entry: Entry) -> None:
        with self.lock:
            queued = self.state.send_to_check(entry)
        if queued:
            self.nudge()
        else:
            self.check_in(entry)  # the pool is closed: this closes it

    def nudge(self) -> None:
        """Wake the maintenance thread, starting it if needed (again, if it died)."""
        maintenance = self.maintenance
        if maintenance is not None and not maintenance.dead:
            maintenance.nudge()
            return
        with self.lock:
            if self.state.closed:
                return
            if self.maintenance is not maintenance:  # another thread just started one
                return
            maintenance = self.maintenance = Maintenance(self.owner)
        # Outside the lock: under gevent, starting a thread switches greenlets.
        try:
            maintenance.start()
        except BaseException as error:
            with self.lock:
                if self.maintenance is maintenance:
                    self.maintenance = None  # the next nudge tries again
            if isinstance(error, RuntimeError):  # e.g. "can't create new thread" at exit
                logger.debug("pool %r: cannot start maintenance: %r", self.name, error)
                return
            raise

    def foreign(self, conn: object) -> PoolError:
        if isinstance(conn, PooledConnection):
            entry = entry_of(conn)
            if entry is None:
                return PoolError(messages.already_returned())
            if entry.pool is INHERITED:
                return PoolError(messages.inherited_across_fork())
            return PoolError(messages.of_another_pool(entry.pool.name, self.name))
        return PoolError(messages.foreign_object(self.name, conn))


def _run_bounded(calls: list[Callable[[], object]], deadline: float, what: str) -> None:
    """Run ``calls`` in parallel daemon threads; return when all are done or at
    ``deadline`` (a call still blocked is left to finish on its own)."""
    threads = [
        threading.Thread(target=call, name=f"flask-dbpool {what}", daemon=True) for call in calls
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - _now()))
