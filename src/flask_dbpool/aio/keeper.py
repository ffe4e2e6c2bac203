"""The asyncio pool's hands: what :class:`~flask_dbpool.keeper.Keeper` does for the threaded
pool, on one event loop.

Everything runs on the pool's loop, so the state needs no lock: each decision
(a :class:`~flask_dbpool.state.PoolState` method) runs between two ``await``s, and the I/O it
calls for is awaited after it. A step a cancelled caller must not cut short (the reset of a
returned connection, closing one) runs in a task of the keeper's own, which the caller may
await (shielded) but not cancel; every slot is accounted for at every ``await``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from flask_dbpool import messages
from flask_dbpool.aio.lifecycle import AsyncLifecycle
from flask_dbpool.aio.proxy import AsyncPooledConnection, lender
from flask_dbpool.drivers.aio_base import AsyncDriver
from flask_dbpool.entry import Entry
from flask_dbpool.errors import PoolClosed, PoolError, one_line
from flask_dbpool.keeper import RECLAIMED_KEPT, SHUTDOWN_BOUND, detached
from flask_dbpool.leaks import Holder, find_orphans
from flask_dbpool.maintenance import PING_TIMEOUT
from flask_dbpool.proxy import entry_of, handle_for, set_entry
from flask_dbpool.state import MAX_SLEEP, PROBE, PoolState

if TYPE_CHECKING:
    from flask_dbpool.aio.waiter import AsyncWaiter


class KeptAsyncPool(Protocol):
    """The pool an :class:`AsyncKeeper` works for, as its maintenance task sees it."""

    @property
    def name(self) -> str:
        """The pool's name."""

    @property
    def closed(self) -> bool:
        """Whether it was closed."""

    def run_maintenance(self) -> Awaitable[float]:
        """One maintenance run; the seconds until the next is due."""


__all__ = ["AsyncKeeper"]

logger = logging.getLogger("flask_dbpool.pool")
maintenance_logger = logging.getLogger("flask_dbpool.maintenance")
leak_logger = logging.getLogger("flask_dbpool.leaks")

_now = time.monotonic
#: close(timeout): each cancel request's bound, and the grace holders get to return a
#: cancelled connection (as the threaded pool's).
CANCEL_TIMEOUT = 1.0
CANCEL_GRACE = 1.0


def current_holder() -> int:
    """The checkout stamp's holder: the current task's id (``0`` outside a task)."""
    task = asyncio.current_task()
    return id(task) if task is not None else 0


class AsyncKeeper:
    """Carries out one asyncio pool's decisions that take I/O (see the module docstring)."""

    __slots__ = (
        "drained",
        "life",
        "loop",
        "maintenance",
        "name",
        "nudged",
        "pool_ref",
        "reclaimed",
        "returning",
        "state",
        "tasks",
    )

    def __init__(
        self, owner: KeptAsyncPool, life: AsyncLifecycle, state: PoolState[Entry], loop: Any
    ) -> None:
        self.pool_ref = weakref.ref(owner)  # the maintenance task must not keep it alive
        self.name = owner.name
        self.life = life
        self.state = state
        self.loop: asyncio.AbstractEventLoop = loop
        self.drained = asyncio.Event()  # set once closed and every slot is free
        state.on_drained = self.drained.set
        self.nudged = asyncio.Event()
        self.maintenance: asyncio.Task[None] | None = None
        self.returning: set[Entry] = set()
        self.reclaimed: deque[Holder] = deque(maxlen=RECLAIMED_KEPT)
        self.tasks: set[asyncio.Task[Any]] = set()  # strong references until done

    # ------------------------------------------------------------------ background work

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` in a task of the keeper's own (not cancelled with the caller)."""
        task = self.loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here, so that an error nobody awaited is logged once, by us.
            logger.debug("pool %r: background step failed: %r", self.name, task.exception())

    def close_later(self, entry: Entry) -> None:
        """Close ``entry``'s connection in the background (its slot is released already)."""
        self.spawn(self.life.aclose(entry))

    def nudge(self) -> None:
        """Wake the maintenance task, starting it if needed."""
        if self.state.closed:
            return
        task = self.maintenance
        if task is None or task.done():
            self.maintenance = self.loop.create_task(_maintain(self.pool_ref, self.nudged))
        self.nudged.set()

    # ------------------------------------------------------------------ maintenance

    async def run_maintenance(self) -> float:
        """One maintenance run (see :meth:`flask_dbpool.AsyncPool.run_maintenance`)."""
        state = self.state
        if state.closed:
            return MAX_SLEEP
        swept_at = _now()
        sweep = state.sweep(swept_at, find_orphans)
        self.reclaimed.extend(sweep.orphan_holders)
        next_run = sweep.next_run
        for orphan in sweep.orphans:
            self.close_later(orphan)
            self.free_slot()
        for entry, reason in sweep.to_close:
            maintenance_logger.debug("pool %r: closing an idle connection (%s)", self.name, reason)
            self.close_later(entry)
        to_ping = sweep.to_ping
        try:
            while to_ping:
                entry = to_ping.pop()
                try:
                    await self.life.aping(entry, PING_TIMEOUT)
                except Exception as error:
                    why = f"its check failed ({one_line(error)})"
                    self.discard(entry, why, "ping_failed", disconnect=True)
                    continue
                except BaseException:
                    # Cancelled mid-ping (close() cancels this task): the connection's
                    # state is unknown (a query in flight, autocommit switched on).
                    self.discard(entry, "its check was interrupted", "ping_failed")
                    raise
                surplus = state.passed_check(entry, _now())
                if surplus is not None:
                    self.close_later(surplus)
                next_run = min(next_run, entry.expires_at)
                keepalive = state.config.keepalive_interval
                if keepalive is not None:
                    next_run = min(next_run, entry.checked_at + keepalive)
        finally:
            for entry in to_ping:  # interrupted: the next run checks the rest
                self.send_to_check(entry)
        for holder in sweep.orphan_holders:
            leak_logger.warning("%s", messages.orphan_report(self.name, holder, swept_at))
        for holder in sweep.leaks:
            threshold = state.config.leak_threshold or 0.0
            leak_logger.warning("%s", messages.leak_report(self.name, holder, swept_at, threshold))
        plan, due = state.plan_connect(_now())
        if plan is None:
            return max(0.0, min(next_run, due) - _now())
        try:
            opened = await self.connect_in_slot(probe=plan is PROBE)
        except Exception as error:  # on_connect failed: retry later, quietly
            delay = state.refill_failed(_now())
            maintenance_logger.warning(
                "pool %r: cannot open a connection for min_idle (%s); retrying in %.1f s",
                self.name,
                one_line(error),
                delay,
            )
            return delay
        if isinstance(opened, Entry):
            state.refill_failures = 0
            self.check_in(opened)
            return 0.0
        return max(0.0, next_run - _now())

    # ------------------------------------------------------------------ connecting

    async def open_in_slot(
        self, *, probe: bool = False, waiter: AsyncWaiter | None = None
    ) -> AsyncPooledConnection | None:
        """Open a connection in a slot already reserved and lend it; ``None`` if the
        database could not be reached (the slot is released and the failure recorded)."""
        entry = await self.connect_in_slot(probe=probe, waiter=waiter)
        if not isinstance(entry, Entry):
            if self.life.is_rejection(entry):
                raise entry
            return None
        if not self.state.closed:
            conn = handle_for(self.state.lend(entry, _now(), current_holder()))
            assert isinstance(conn, AsyncPooledConnection)
            return conn
        self.state.forget(entry, "pool_closed")
        self.close_later(entry)
        raise PoolClosed(messages.closed_while_connecting(self.name))

    async def connect_in_slot(
        self, *, probe: bool = False, waiter: AsyncWaiter | None = None
    ) -> Entry | Exception:
        """Connect in a reserved slot: the new entry (accounted for, not lent), or the
        driver's error (the slot is released and back-off starts); raises what
        ``on_connect`` raised, or a cancellation (the slot is released, to a waiter if one
        exists)."""
        started = _now()
        if waiter is not None:
            waiter.item = None  # from here on this call owns the slot
        try:
            raw = await self.life.aconnect()
        except Exception as error:
            self.connect_failed(error, probe, started)
            return error
        except BaseException:
            self.free_slot(connecting=True, probe=probe)
            raise
        try:
            entry = await self.life.aprepare(raw, _now)
        except BaseException:
            self.free_slot(connecting=True, probe=probe)
            raise
        state = self.state
        recovered = state.connected(entry, started, entry.created, probe)
        try:
            state.notify("create", entry.created - started)
        except BaseException:
            self.check_in(entry)  # an observer raised: the connection is the pool's already
            raise
        if recovered:
            logger.warning(
                "pool %r: connected to %s again after %d failed attempt(s)",
                self.name,
                self.life.connector.description,
                recovered,
            )
        self.nudge()
        return entry

    def connect_failed(self, error: Exception, probe: bool, started: float) -> None:
        """Release the slot of a failed connection attempt and schedule a retry."""
        rejected = self.life.is_rejection(error)
        failures, delay = self.state.connect_failed(
            detached(error), rejected, started, _now(), probe
        )
        (logger.warning if failures == 1 else logger.debug)(
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
        """Put a reset, healthy entry back: to the oldest waiter, idle, or closed."""
        surplus = self.state.check_in(entry)
        if surplus is not None:
            self.close_later(surplus)

    def free_slot(self, *, connecting: bool = False, probe: bool = False) -> None:
        """A slot's connection is gone: hand the slot to the oldest waiter, or release it."""
        if self.state.slot_freed(connecting=connecting, probe=probe):
            self.nudge()

    def claim(self, conn: object, *, returning: bool = False) -> tuple[Entry, bool]:
        """Take the entry out of ``conn`` (only one release wins); also whether a leak
        warning was logged for this checkout."""
        if not isinstance(conn, AsyncPooledConnection):
            raise self.foreign(conn)
        entry = entry_of(conn)
        if entry is None:
            raise PoolError(messages.already_returned())
        if lender(entry) is not self.pool_ref():
            raise self.foreign(conn)
        set_entry(conn, None)
        if returning:
            self.returning.add(entry)
        return entry, self.state.claim(entry)

    async def release_slow(self, conn: AsyncPooledConnection, exc: BaseException | None) -> None:
        """Return ``conn`` the slow way: its books are settled at once (the handle is
        empty), the reset runs in a task of the keeper's own, awaited shielded: a caller
        cancelled meanwhile leaves it to finish."""
        entry, reported = self.claim(conn, returning=True)
        await asyncio.shield(self.spawn(self._finish_return(entry, reported, exc)))

    async def _finish_return(self, entry: Entry, reported: bool, exc: BaseException | None) -> None:
        held = _now() - entry.lent_at
        try:
            verdict = await self.life.areset(entry, exc)
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
                if verdict.interrupt is not None and not isinstance(
                    verdict.interrupt, asyncio.CancelledError
                ):
                    raise verdict.interrupt
            else:
                state = self.state
                if state.suspect(entry) and state.send_to_check(entry):
                    self.nudge()
                else:
                    self.check_in(entry)
        finally:
            self.returning.discard(entry)
        if self.state.track_use:
            self.state.use_time.record(held)
            for observer in self.state.observers:
                observer("use", held)
        if reported:
            leak_logger.warning(
                "pool %r: the connection held longer than leak_threshold=%g s by %r came "
                "back after %.1f s",
                self.name,
                self.state.config.leak_threshold,
                entry.thread_name,
                held,
            )

    def discard(
        self, entry: Entry, why: str, reason: str, *, disconnect: bool = False, quiet: bool = False
    ) -> None:
        """Close ``entry`` for good (in the background) and free its slot at once."""
        news = self.state.discarded(entry, reason, disconnect=disconnect, now=_now())
        (logger.debug if quiet else logger.info)(
            "pool %r: discarding a connection because %s", self.name, why
        )
        self.close_later(entry)
        self.free_slot()
        if news:
            self.nudge()

    def drain(self) -> tuple[int, int]:
        """Retire every connection open now (see :meth:`flask_dbpool.Pool.drain`)."""
        if self.state.closed:
            return 0, 0
        to_close, marked = self.state.drain(_now())
        for entry in to_close:
            self.close_later(entry)
        logger.info(
            "pool %r drained: %d idle connection(s) closed, %d in use closed when returned",
            self.name,
            len(to_close),
            marked,
        )
        return len(to_close), marked

    def send_to_check(self, entry: Entry) -> None:
        if self.state.send_to_check(entry):
            self.nudge()
        else:
            self.check_in(entry)

    # ------------------------------------------------------------------ closing

    async def wait_then_cancel(self, timeout: float) -> None:
        """The end of ``close(timeout)``: wait up to ``timeout`` for the borrowed
        connections; then cancel what still runs on them and close them (within
        :data:`~flask_dbpool.keeper.SHUTDOWN_BOUND` more seconds)."""
        if await _wait_event(self.drained, timeout):
            return
        leftovers = [e for e in self.state.entries if e not in self.state.checking]
        if not leftovers:
            return
        logger.warning(
            "pool %r: %d connection(s) still checked out after %.1f s; cancelling their "
            "statements and closing them",
            self.name,
            len(leftovers),
            timeout,
        )
        deadline = self.loop.time() + SHUTDOWN_BOUND

        def left() -> float:
            return max(0.0, deadline - self.loop.time())

        async def cancel(entry: Entry) -> None:
            driver = entry.driver
            if issubclass(driver, AsyncDriver):
                try:
                    await driver.acancel(entry.raw, CANCEL_TIMEOUT)
                except Exception as error:
                    logger.debug("pool %r: cancel failed: %s", self.name, one_line(error))

        await _within(asyncio.gather(*(cancel(e) for e in leftovers)), left())
        if await _wait_event(self.drained, min(CANCEL_GRACE, left())):
            return
        still = [e for e in leftovers if e in self.state.entries and e not in self.returning]
        await _within(asyncio.gather(*(self.life.aclose(e) for e in still)), left())

    def foreign(self, conn: object) -> PoolError:
        if isinstance(conn, AsyncPooledConnection):
            entry = entry_of(conn)
            if entry is None:
                return PoolError(messages.already_returned())
            return PoolError(messages.of_another_pool(entry.pool.name, self.name))
        return PoolError(messages.foreign_object(self.name, conn))


async def _maintain(pool_ref: weakref.ref[KeptAsyncPool], nudged: asyncio.Event) -> None:
    """The maintenance task: one run, then sleep until due or nudged; ends with the pool
    (closed, or garbage-collected)."""
    while True:
        pool = pool_ref()
        if pool is None or pool.closed:
            return
        nudged.clear()
        try:
            delay = await pool.run_maintenance()
        except Exception:
            maintenance_logger.exception("pool %r: maintenance run failed", pool.name)
            delay = 1.0
        del pool
        await _wait_event(nudged, min(delay, MAX_SLEEP))


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Whether ``event`` was set within ``timeout`` seconds."""
    if event.is_set():
        return True
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        return False
    return True


async def _within(work: Awaitable[Any], timeout: float) -> None:
    """Await ``work`` for at most ``timeout`` seconds (then it is cancelled); its errors
    are dropped (best effort at shutdown)."""
    try:
        await asyncio.wait_for(work, timeout)
    except (asyncio.TimeoutError, Exception):
        pass
