"""Immutable snapshots of a pool's state and counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PoolStats"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A consistent snapshot of one pool, taken under its lock by :meth:`Pool.stats`.

    Gauges describe the moment of the snapshot; totals count since the pool was created and
    only ever grow.
    """

    name: str
    """The pool's name."""
    pool_size: int
    """Connections kept open once created."""
    max_overflow: int
    """Extra connections allowed under bursts."""
    open: int
    """Connections open or being opened (never above ``pool_size + max_overflow``)."""
    idle: int
    """Open connections waiting in the pool."""
    in_use: int
    """Connections checked out by callers."""
    connecting: int
    """Connections being opened right now."""
    checking: int
    """Idle connections taken aside by maintenance for a check (keepalive, or after a
    disconnect)."""
    waiting: int
    """Callers waiting for a connection."""
    acquired: int
    """Total successful checkouts."""
    created: int
    """Total connections opened."""
    closed: int
    """Total connections closed (overflow, broken, invalidated, pool closed)."""
    timeouts: int
    """Total ``acquire()`` calls that failed with ``PoolTimeout``."""
    rejected: int
    """Total ``acquire()`` calls refused with ``TooManyWaiters`` (``max_waiting``)."""
    waits: int
    """Total checkouts that had to wait (successful or not)."""
    wait_seconds_total: float
    """Sum of the time spent waiting by callers that had to wait."""
    wait_seconds_max: float
    """Longest single wait."""
    connect_errors: int
    """Total failed attempts to open a connection."""
    pings_failed: int
    """Total connections found dead by a check (``pre_ping``, keepalive, after a disconnect)."""
    leaks_detected: int
    """Total checkouts held longer than ``leak_threshold`` (each warned about once)."""
    reclaimed: int
    """Total connections whose handle was garbage-collected without being returned (their
    slot was given back)."""

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict, ready for JSON."""
        return asdict(self)
