"""The pool's record of one open driver connection."""

from __future__ import annotations

from typing import Any

from flask_dbpool.drivers import Driver

__all__ = ["Entry"]


class Entry:
    """One open driver connection and what the pool knows about it.

    An entry outlives its checkouts: each checkout wraps it in a fresh
    :class:`~flask_dbpool.proxy.PooledConnection`, so a stale handle can never reach it.
    """

    __slots__ = ("created", "driver", "raw")

    def __init__(self, raw: Any, driver: type[Driver], created: float) -> None:
        self.raw = raw
        """The driver's connection object."""
        self.driver = driver
        """The :class:`Driver` that knows how to reset, ping and classify errors for ``raw``."""
        self.created = created
        """``time.monotonic()`` when the connection was opened."""
