"""The threaded pool's waiting caller (see :meth:`flask_dbpool.Pool.acquire`)."""

from __future__ import annotations

import threading

__all__ = ["Waiter"]


class Waiter:
    """One thread waiting for a connection. Created only when a caller must wait.

    The pool's state hands it an item by setting :attr:`item` and calling :meth:`wake`
    (under the pool lock); the thread sleeps on :attr:`signal`.
    """

    __slots__ = ("connect_at", "item", "signal")

    def __init__(self) -> None:
        self.item: object = None
        self.connect_at = float("inf")  # set by the state: see PoolState.patience
        # A lock created held works as a one-shot event, cheaper than threading.Event.
        # Looked up at call time so gevent's monkey-patching applies.
        self.signal = threading.Lock()
        self.signal.acquire()

    def wake(self) -> None:
        """Wake the waiting thread (once; never blocks)."""
        self.signal.release()
