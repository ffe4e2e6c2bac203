"""The pool's record of one open driver connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask_dbpool.drivers import Driver

if TYPE_CHECKING:
    from flask_dbpool.pool import Pool

__all__ = ["Entry"]


class Entry:
    """One open driver connection and what the pool knows about it.

    An entry outlives its checkouts: each checkout wraps it in a fresh
    :class:`~flask_dbpool.proxy.PooledConnection`, so a stale handle can never reach it.
    """

    __slots__ = ("created", "driver", "pool", "raw", "tx_state")

    def __init__(self, pool: Pool, raw: Any, driver: type[Driver], created: float) -> None:
        self.pool = pool
        """The pool the connection belongs to (for ever)."""
        self.raw = raw
        """The driver's connection object."""
        self.driver = driver
        """The :class:`Driver` that knows how to reset, ping and classify errors for ``raw``."""
        self.created = created
        """``time.monotonic()`` when the connection was opened."""
        self.tx_state: Callable[[Any], int] = driver.transaction_state
        """The driver's transaction-state reader, bound once: it runs on every return."""
