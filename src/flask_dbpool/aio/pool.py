"""The asyncio connection pool: the shell that acts on :class:`~flask_dbpool.state.PoolState`
on one event loop.

The rules are the threaded pool's own (the same state machine decides who gets a connection,
when one is opened, retired or checked); this shell waits with futures instead of locks and
awaits the I/O. It is bound to the loop it is opened in: no asyncio object exists before
:meth:`AsyncPool.open`, and a call from another loop raises :class:`~flask_dbpool.PoolError`
saying so. All of its state changes happen on that loop, between two ``await``s, so it
needs no lock.

Cancellation-safe by construction: a waiter cancelled at any point either never got a
connection or gives it back (the hand-over and the give-back happen without an ``await``
in between); a return settles the books at once and runs the reset in a task of the pool's
own, awaited shielded; timeouts are the pool's timers, not ``wait_for`` around a wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final

from flask_dbpool import messages
from flask_dbpool._fork import abandon_inherited, track
from flask_dbpool.aio.keeper import AsyncKeeper, current_holder
from flask_dbpool.aio.lifecycle import AsyncLifecycle, run_hook
from flask_dbpool.aio.proxy import AsyncConnectionBlock, AsyncPooledConnection, lender
from flask_dbpool.aio.waiter import AsyncWaiter
from flask_dbpool.config import PoolConfig, check_timeout
from flask_dbpool.drivers import IDLE
from flask_dbpool.drivers.aio import resolve_async_target
from flask_dbpool.entry import Entry
from flask_dbpool.errors import ConfigError, PoolClosed, PoolError, PoolTimeout, one_line
from flask_dbpool.keeper import detached
from flask_dbpool.leaks import Checkout, TimeoutReport, capture_site, checkouts_of, describe_caller
from flask_dbpool.proxy import entry_of, handle_for, set_entry
from flask_dbpool.state import CLOSED, CONNECT, NEW_SLOT, PROBE, PoolState, Refusal
from flask_dbpool.stats import PoolStats

__all__ = ["AsyncPool"]

logger = logging.getLogger("flask_dbpool.pool")

_now = time.monotonic
_new_handle = object.__new__
_get_running_loop = asyncio.get_running_loop
_OPTION_NAMES = PoolConfig.option_names()
_MIN_PING_TIMEOUT = 0.05


class AsyncPool:
    """An asyncio pool of database connections, with :class:`~flask_dbpool.Pool`'s options,
    errors, statistics, metrics, leak reports and maintenance.

    ``target`` is a database URL (``postgresql://…`` through psycopg 3's
    ``AsyncConnection``, ``sqlite:///file.db`` through aiosqlite, ``mysql://…`` through
    aiomysql) or a zero-argument callable returning an awaitable connection. Options are
    :class:`~flask_dbpool.config.PoolConfig`'s (a bad one raises
    :class:`~flask_dbpool.ConfigError` here, before any I/O); hooks may be ``async``.

    ``async with AsyncPool(url) as pool:`` opens it (or ``await pool.open()``) and closes it
    on exit (or ``await pool.close(timeout)``). Check connections out with ``async with
    pool.connection() as conn:`` (commits when the block ends normally, rolls back when it
    raised, returns the connection), or ``await pool.acquire()`` / ``await
    pool.release(conn)``.
    """

    __slots__ = ("__weakref__", "_keeper", "_life", "_loop", "_state", "config", "name")

    def __init__(
        self,
        target: str | Callable[[], Awaitable[Any]],
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
        if unknown:
            PoolConfig.from_options(unknown)
        options = {key: value for key, value in locals().items() if key in _OPTION_NAMES}
        self.config: PoolConfig = PoolConfig.from_options(options)
        self.name: Final = self.config.name
        self._life = AsyncLifecycle(resolve_async_target(target), self.config, self)  # type: ignore[arg-type]
        self._life.check_settings()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keeper: AsyncKeeper | None = None
        self._state: PoolState[Entry] = self._new_state(closed=False)
        track(self._after_fork_in_child)

    def _new_state(self, *, closed: bool) -> PoolState[Entry]:
        return PoolState(self.config, target=self._life.connector.description, closed=closed)

    # ------------------------------------------------------------------ opening, closing

    @property
    def target(self) -> str:
        """The redacted URL (or the callable's name) connections are opened from."""
        return self._life.connector.description

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._state.closed

    async def open(self, wait: bool = False, timeout: float | None = None) -> None:
        """Bind the pool to the running event loop and start its maintenance task; with
        ``wait`` (or the ``open_timeout`` option), wait until it can lend
        ``max(1, min_idle)`` connections (see :meth:`wait_ready`). Idempotent on its loop.
        Raises :class:`~flask_dbpool.PoolError` when opened already on another loop,
        :class:`~flask_dbpool.PoolClosed` after :meth:`close`."""
        loop = _get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise PoolError(messages.other_loop(self.name))
        if self._state.closed:
            raise PoolClosed(messages.closed(self.name))
        if self._loop is None:
            self._loop = loop
            self._keeper = AsyncKeeper(self, self._life, self._state, loop)
            self._keeper.nudge()  # maintenance: lifetimes, idle timeouts, min_idle
        if wait or self.config.open_timeout is not None:
            await self.wait_ready(timeout if timeout is not None else self.config.open_timeout)

    async def close(self, timeout: float | None = None) -> None:
        """Close the pool: waiters get :class:`~flask_dbpool.PoolClosed`, idle connections
        are closed now; those checked out are closed when returned. With ``timeout``, waits
        that long for them, then cancels what still runs on them and closes them (within
        ``timeout`` plus at most 3 s). Idempotent."""
        if timeout is not None:
            check_timeout(timeout)
        keeper = self._keeper
        if keeper is None:  # never opened: nothing to close on any loop
            self._state.close()
            return
        self._check_loop()
        first, idle = self._state.close()
        task, keeper.maintenance = keeper.maintenance, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            # Let its cleanup run (a connection it was checking is discarded), for at most
            # a second: a driver may first try to cancel its query on the server.
            await asyncio.wait([task], timeout=1.0)
        await asyncio.gather(*(self._life.aclose(entry) for entry in idle))
        if first:
            logger.info("pool %r closed (%d idle connections closed)", self.name, len(idle))
        if timeout is not None:
            await keeper.wait_then_cancel(timeout)

    async def __aenter__(self) -> AsyncPool:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_loop(self) -> AsyncKeeper:
        """The keeper, on the pool's own loop; else a clear :class:`PoolError`."""
        keeper = self._keeper
        try:
            loop = _get_running_loop()
        except RuntimeError:
            loop = None
        if keeper is None or loop is not self._loop:
            if self._state.closed:
                raise PoolClosed(messages.closed(self.name))
            if keeper is None:
                raise PoolError(messages.not_opened(self.name))
            raise PoolError(messages.other_loop(self.name))
        return keeper

    # ------------------------------------------------------------------ lending

    def connection(self, timeout: float | None = None) -> AsyncConnectionBlock:
        """``async with pool.connection() as conn:`` — a connection for the block: committed
        when it ends normally, rolled back when it raised, then returned. ``timeout``: as
        :meth:`acquire`."""
        return AsyncConnectionBlock(self, timeout)

    async def acquire(self, timeout: float | None = None) -> AsyncPooledConnection:
        """Check a connection out of the pool.

        Waits up to ``timeout`` seconds (default: the pool's ``timeout``; ``0``: do not
        wait), first come first served. Raises :class:`~flask_dbpool.PoolTimeout` (saying
        what the pool was doing and who holds the connections),
        :class:`~flask_dbpool.PoolClosed`, :class:`~flask_dbpool.PoolError` if the pool is
        not opened or this is another event loop, the driver's error at once if the server
        rejected the login, and what ``on_connect`` or ``on_checkout`` raised. A caller
        cancelled while waiting gets no connection and loses none. Return it with
        :meth:`release` or ``await conn.close()``.
        """
        if timeout is not None:
            check_timeout(timeout)
        if self._loop is not _get_running_loop():
            self._check_loop()
        state = self._state
        if state.idle and not state.check_on_acquire:
            # The hot path: nothing awaited, so nothing can be cancelled half-way.
            entry = state.take_idle()
            conn: AsyncPooledConnection = _new_handle(AsyncPooledConnection)
            set_entry(conn, entry)
            entry.lent_at = _now()
            entry.holder = current_holder()
            state.acquired += 1
            return conn
        if state.check_on_acquire:
            return await self._acquire_checked(timeout)
        return await self._acquire_slow(timeout)

    async def release(
        self, conn: AsyncPooledConnection, error: BaseException | None = None
    ) -> None:
        """Return ``conn`` to the pool: what the borrower left open is rolled back (always
        after ``error``, the exception that ended its work; a connection the error shows
        gone is discarded). The books are settled before anything is awaited, and the reset
        runs shielded: a caller cancelled meanwhile still returns the connection. Raises
        :class:`~flask_dbpool.PoolError` if ``conn`` was returned already or is another
        pool's, or if this is another event loop."""
        try:
            entry = entry_of(conn)
        except TypeError:  # not a handle
            raise self._check_loop().foreign(conn) from None
        keeper = self._check_loop() if self._loop is not _get_running_loop() else self._keeper
        assert keeper is not None
        if (
            error is None
            and entry is not None
            and lender(entry) is self
            and entry.tx_state(entry.raw) == IDLE
        ):
            state = self._state
            set_entry(conn, None)
            if state.track_use:
                held = _now() - entry.lent_at
                state.use_time.record(held)
                for observer in state.observers:
                    observer("use", held)
            keeper.check_in(entry)
            return
        await keeper.release_slow(conn, error)

    async def invalidate(self, conn: AsyncPooledConnection) -> None:
        """Close ``conn``'s connection and free its slot instead of reusing it. Raises
        :class:`~flask_dbpool.PoolError` if ``conn`` was returned already or is another
        pool's."""
        keeper = self._check_loop()
        entry, _ = keeper.claim(conn)
        keeper.discard(entry, "invalidate() was called", "invalidated")

    async def _acquire_checked(self, timeout: float | None) -> AsyncPooledConnection:
        """``acquire`` with pre-ping, suspect checks, leak tracking and ``on_checkout``."""
        if timeout is None:
            timeout = self.config.timeout
        deadline = _now() + timeout
        config = self.config
        keeper = self._check_loop()
        while True:
            conn = await self._acquire_slow(max(0.0, deadline - _now()))
            entry = entry_of(conn)
            assert entry is not None
            now = entry.lent_at
            try:
                if self._state.suspect(entry) or (
                    config.pre_ping and now - entry.used_at >= config.ping_interval
                ):
                    try:
                        await self._life.aping(entry, max(deadline - now, _MIN_PING_TIMEOUT))
                    except Exception as error:
                        claimed, _ = keeper.claim(conn)
                        why = f"its ping failed ({one_line(error)})"
                        keeper.discard(claimed, why, "ping_failed", disconnect=True)
                        continue
                    except BaseException:
                        # Cancelled mid-ping: its state is unknown (a query in flight,
                        # autocommit switched on for the ping), so it is not reused.
                        claimed, _ = keeper.claim(conn)
                        keeper.discard(claimed, "its ping was interrupted", "ping_failed")
                        raise
                    entry.checked_at = now
                    entry.allow_fast_return()
                entry.used_at = now
                if config.leak_threshold is not None:
                    entry.site = capture_site()
                    task = asyncio.current_task()
                    entry.thread_name = f"task {task.get_name()}" if task else None
                    entry.caller = describe_caller(config.describe_caller)
                if config.on_checkout is not None:
                    await run_hook(config.on_checkout, entry.raw)
            except BaseException as error:
                await self._give_back_after(conn, error)
                raise
            return conn

    async def _give_back_after(self, conn: AsyncPooledConnection, error: BaseException) -> None:
        """Return ``conn`` after ``error`` cut its checkout short (a cancellation too)."""
        if entry_of(conn) is None:
            return
        try:
            await self.release(conn, error)
        except BaseException:
            pass  # the checkout's own error is the one to raise; the return went ahead

    async def _acquire_slow(self, timeout: float | None) -> AsyncPooledConnection:
        keeper = self._check_loop()
        if timeout is None:
            timeout = self.config.timeout
        start = _now()
        deadline = start + timeout
        state = self._state
        while True:
            now = _now()
            got = state.request(now, current_holder(), start, deadline, AsyncWaiter)
            conn: AsyncPooledConnection | None
            if isinstance(got, Entry):
                return handle_for(got)  # type: ignore[return-value]
            if isinstance(got, AsyncWaiter):
                if state.dry_check_due(now):
                    keeper.nudge()  # dropped handles may hold the slots
                conn = await self._wait(keeper, got, start, deadline)
            elif got is CONNECT or got is PROBE:
                conn = await keeper.open_in_slot(probe=got is PROBE)
            elif isinstance(got, Refusal):
                raise detached(got.error)
            else:
                assert isinstance(got, TimeoutReport)
                raise messages.timeout_error(self.name, self.target, got, _now())
            if conn is not None:
                return conn

    async def _wait(
        self, keeper: AsyncKeeper, waiter: AsyncWaiter, start: float, deadline: float
    ) -> AsyncPooledConnection | None:
        """Wait for a connection or a slot; ``None``: try to connect (a reconnection
        attempt is due). The hand-over and the give-back on cancellation happen without an
        ``await`` in between: a cancelled waiter either never got a connection or gives it
        back (see :meth:`_abandon`)."""
        state = self._state
        loop = keeper.loop
        timer = None
        try:
            while True:
                wait = state.wait_step(_now(), deadline, waiter.connect_at)
                if waiter.item is None:
                    future = waiter.future = loop.create_future()
                    timer = loop.call_later(wait, waiter.wake)
                    try:
                        await future
                    finally:
                        timer.cancel()
                now = _now()
                got = state.woken(waiter, now, current_holder(), now - start, deadline)
                if got is None:
                    if state.dry_check_due(now):
                        keeper.nudge()
                    continue
                if isinstance(got, TimeoutReport):
                    raise messages.timeout_error(self.name, self.target, got, _now())
                if got is CONNECT:
                    return None
                if got is CLOSED:
                    raise PoolClosed(messages.closed_while_waiting(self.name))
                if got is NEW_SLOT:
                    return await keeper.open_in_slot(waiter=waiter)
                if isinstance(got, Refusal):
                    raise detached(got.error)
                assert isinstance(got, Entry)
                waiter.item = None
                return handle_for(got)  # type: ignore[return-value]
        except BaseException:
            self._abandon(keeper, waiter)
            raise

    def _abandon(self, keeper: AsyncKeeper, waiter: AsyncWaiter) -> None:
        """A waiter gave up: leave the queue, or pass on what it was handed and not used."""
        item = self._state.abandon(waiter)
        if item is NEW_SLOT:
            keeper.free_slot(connecting=True)
        elif isinstance(item, Entry):
            keeper.check_in(item)

    # ------------------------------------------------------------------ the rest of the API

    async def warm_up(self) -> int:
        """Open connections until ``pool_size`` are open; return how many were opened.
        Raises the driver's error if one cannot be opened."""
        keeper = self._check_loop()
        opened = 0
        while self._state.reserve(self.config.pool_size):
            entry = await keeper.connect_in_slot()
            if not isinstance(entry, Entry):
                raise entry
            keeper.check_in(entry)
            opened += 1
        return opened

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until ``max(1, min_idle)`` connections can be checked out at once (opening
        them, retrying while the database cannot be reached). Raises
        :class:`~flask_dbpool.PoolTimeout` after ``timeout`` seconds (default: the pool's),
        with the last connection error as its cause."""
        if timeout is None:
            timeout = self.config.timeout
        check_timeout(timeout)
        deadline = _now() + timeout
        held: list[AsyncPooledConnection] = []
        try:
            for _ in range(max(1, self.config.min_idle)):
                held.append(await self._acquire_slow(max(0.0, deadline - _now())))
        except PoolTimeout as error:
            raise PoolTimeout(f"not ready after {timeout:.1f} s: {error}") from error.__cause__
        finally:
            # Each return in a task of the pool's own: a cancellation here loses none.
            keeper = self._check_loop()
            await asyncio.shield(asyncio.gather(*(keeper.spawn(self.release(c)) for c in held)))

    def resize(self, pool_size: int | None = None, max_overflow: int | None = None) -> None:
        """Change ``pool_size`` and/or ``max_overflow`` (see :meth:`flask_dbpool.Pool.resize`).
        Raises :class:`~flask_dbpool.ConfigError` for invalid values (nothing changes)."""
        changes: dict[str, Any] = {}
        if pool_size is not None:
            changes["pool_size"] = pool_size
        if max_overflow is not None:
            changes["max_overflow"] = max_overflow
        current = {f: getattr(self.config, f) for f in _OPTION_NAMES}
        config = PoolConfig.from_options({**current, **changes})
        keeper = self._check_loop()
        surplus = self._state.resize(config)
        self.config = config
        for entry in surplus:
            keeper.close_later(entry)

    def drain(self) -> int:
        """Retire every connection open now (see :meth:`flask_dbpool.Pool.drain`); returns
        how many. Raises :class:`~flask_dbpool.PoolClosed` if the pool is closed."""
        if self._state.closed:
            raise PoolClosed(messages.closed(self.name))
        closed, marked = self._check_loop().drain()
        return closed + marked

    async def run_maintenance(self) -> float:
        """One maintenance run now (the pool's maintenance task calls it); returns the
        seconds until the next is due."""
        return await self._check_loop().run_maintenance()

    def label_checkout(self, conn: AsyncPooledConnection, label: str) -> None:
        """Attach ``label`` to ``conn``'s current checkout (see
        :meth:`flask_dbpool.Pool.label_checkout`)."""
        entry = entry_of(conn) if isinstance(conn, AsyncPooledConnection) else None
        if entry is not None and lender(entry) is self:
            entry.label = label
            entry.label_for = entry.lent_at

    def pin(self, conn: AsyncPooledConnection) -> None:
        """Keep ``conn`` checked out across ``async with conn:`` blocks for this checkout:
        they still commit (or roll back) but the connection stays until :meth:`release`
        (Quart's per-request connection). Raises :class:`~flask_dbpool.PoolError` for a
        handle returned already or of another pool."""
        entry = entry_of(conn) if isinstance(conn, AsyncPooledConnection) else None
        if entry is None or lender(entry) is not self:
            raise self._check_loop().foreign(conn)
        entry.pinned_for = entry.lent_at

    def checkouts(self) -> list[Checkout]:
        """The connections checked out now, longest-held first (see
        :meth:`flask_dbpool.Pool.checkouts`)."""
        return checkouts_of(self._state.holders(), _now())

    def reclaimed(self) -> list[Checkout]:
        """The last 64 checkouts dropped without being returned and reclaimed by
        maintenance (see :meth:`flask_dbpool.Pool.reclaimed`)."""
        keeper = self._keeper
        return checkouts_of(list(keeper.reclaimed), _now())[::-1] if keeper else []

    def stats(self) -> PoolStats:
        """A snapshot of the pool's gauges and totals."""
        return self._state.stats()

    def track_use_time(self) -> None:
        """Record how long each checkout is held (see :meth:`flask_dbpool.Pool.track_use_time`)."""
        self._state.track_use = True

    def add_observer(self, observer: Callable[[str, float], object]) -> None:
        """Call ``observer(event, seconds)`` for each wait, connect and (with
        :meth:`track_use_time`) checkout (see :meth:`flask_dbpool.Pool.add_observer`)."""
        if not callable(observer):
            raise ConfigError(messages.not_callable("observer", observer))
        self._state.observers = (*self._state.observers, observer)

    def __repr__(self) -> str:
        s = self.stats()
        state = " closed" if self.closed else ""
        return (
            f"<AsyncPool {self.name!r} {self.target}{state} open={s.open} idle={s.idle} "
            f"in_use={s.in_use} waiting={s.waiting} pool_size={s.pool_size} "
            f"max_overflow={s.max_overflow}>"
        )

    # ------------------------------------------------------------------ fork

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's connections without a word on their
        sockets, and its loop (the child opens the pool again on its own)."""
        old = self._state
        self._state = self._new_state(closed=old.closed)
        self._state.observers = old.observers
        self._state.track_use = old.track_use
        self._loop = None
        self._keeper = None
        # An async connection cannot be closed without its loop: none is closed, each one's
        # socket points at /dev/null and the object is kept (see abandon_inherited).
        abandon_inherited(list(old.entries), set(), lambda entry: None)
