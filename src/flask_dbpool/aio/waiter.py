"""The asyncio pool's waiting caller (see :meth:`flask_dbpool.AsyncPool.acquire`)."""

from __future__ import annotations

import asyncio

__all__ = ["AsyncWaiter"]


class AsyncWaiter:
    """One task waiting for a connection, created only when a caller must wait.

    The pool's state hands it an item by setting :attr:`item` and calling :meth:`wake`; the
    task awaits :attr:`future`, a new one for each round of waiting (a timer wakes it too).
    """

    __slots__ = ("connect_at", "future", "item")

    def __init__(self) -> None:
        self.item: object = None
        self.connect_at = float("inf")  # set by the state: see PoolState.patience
        self.future: asyncio.Future[None] | None = None

    def wake(self) -> None:
        """Wake the waiting task (never blocks; a second wake does nothing)."""
        future = self.future
        if future is not None and not future.done():
            future.set_result(None)
