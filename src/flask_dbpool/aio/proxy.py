"""The handle :class:`~flask_dbpool.AsyncPool` lends, and ``pool.connection()``'s block."""

from __future__ import annotations

from collections.abc import Awaitable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from flask_dbpool.drivers import IDLE
from flask_dbpool.errors import PoolError
from flask_dbpool.proxy import PooledConnection, entry_of

if TYPE_CHECKING:
    from flask_dbpool.entry import Entry


__all__ = ["AsyncConnectionBlock", "AsyncLender", "AsyncPooledConnection", "lender"]


class AsyncLender(Protocol):
    """What a handle and a ``pool.connection()`` block call on the pool (an
    :class:`~flask_dbpool.AsyncPool`)."""

    def acquire(self, timeout: float | None = None) -> Awaitable[AsyncPooledConnection]:
        """Check a connection out."""

    def release(
        self, conn: AsyncPooledConnection, error: BaseException | None = None
    ) -> Awaitable[None]:
        """Take ``conn`` back."""


def lender(entry: Entry) -> Any:
    """The :class:`~flask_dbpool.AsyncPool` that lent ``entry`` (``Entry.pool`` is typed
    for the threaded pool's owner protocol, whose methods are not coroutines)."""
    return entry.pool


class AsyncPooledConnection(PooledConnection):
    """A checked-out asyncio connection: a thin proxy to the driver's connection
    (``await conn.execute(…)``, ``conn.cursor()``, ``await conn.commit()`` …), good for one
    checkout. ``await conn.close()`` returns it to the pool (idempotent), ``await
    conn.invalidate()`` discards it; ``async with conn:`` commits (or rolls back if the block
    raised), then returns it. Once returned, any use raises
    :class:`~flask_dbpool.ConnectionReturned`. Settings changed through the handle
    (``await conn.set_autocommit(True)``, ``conn.row_factory = …``) are put back on return.
    """

    __slots__ = ()

    async def close(self) -> None:  # type: ignore[override]
        """Return the connection to the pool; does nothing if it was already returned."""
        entry = entry_of(self)
        if entry is not None:
            await _give_back(entry.pool, self, None)

    async def invalidate(self) -> None:  # type: ignore[override]
        """Close the driver connection and free its slot instead of returning it for
        reuse. Does nothing if the handle was already returned."""
        entry = entry_of(self)
        if entry is not None:
            pool: Any = entry.pool
            await pool.invalidate(self)

    def __enter__(self) -> PooledConnection:
        raise TypeError("an asyncio pooled connection is used with 'async with', not 'with'")

    async def __aenter__(self) -> AsyncPooledConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = entry_of(self)
        if entry is not None:
            await end_block(lender(entry), self, exc)

    def __repr__(self) -> str:
        entry = entry_of(self)
        if entry is None:
            return "<AsyncPooledConnection (returned)>"
        return f"<AsyncPooledConnection {type(entry.raw).__qualname__} pool={entry.pool.name!r}>"


async def end_block(
    pool: AsyncLender, conn: AsyncPooledConnection, exc: BaseException | None
) -> None:
    """The end of an ``async with`` block on ``conn``: commit if it ended normally (and a
    transaction is open), then return it; after ``exc``, return it (rolled back). A pinned
    checkout is committed or rolled back and stays with its holder."""
    entry = entry_of(conn)
    if entry is None:
        return
    driver: Any = entry.driver
    pinned = entry.pinned_for == entry.lent_at  # stays with its holder (see AsyncPool.pin)
    if exc is None and driver.transaction_state(entry.raw) != IDLE:
        try:
            await driver.acommit(entry.raw)
        except BaseException as error:
            if not pinned:
                await _give_back(pool, conn, error)
            raise
    if not pinned:
        await _give_back(pool, conn, exc)
    elif exc is not None:
        try:
            await driver.arollback(entry.raw)
        except Exception:  # the block's own error matters more; a broken connection is
            pass  # discarded when it is returned


async def _give_back(pool: Any, conn: AsyncPooledConnection, error: BaseException | None) -> None:
    """``pool.release``; a handle returned by a racing call meanwhile is fine."""
    try:
        await pool.release(conn, error)
    except PoolError:
        if entry_of(conn) is not None:  # not a racing return: a real error
            raise


class AsyncConnectionBlock:
    """``async with pool.connection() as conn:`` — check out on entry; on exit commit (if
    the block ended normally) or roll back, and return the connection. Also awaitable:
    ``conn = await pool.connection()`` is ``await pool.acquire()``."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: AsyncLender, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: AsyncPooledConnection | None = None

    def __await__(self) -> Any:
        return self._pool.acquire(self._timeout).__await__()

    async def __aenter__(self) -> AsyncPooledConnection:
        self._conn = await self._pool.acquire(self._timeout)
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await end_block(self._pool, conn, exc)
