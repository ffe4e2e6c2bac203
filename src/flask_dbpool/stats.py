"""Immutable snapshots of a pool's state and counters."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

__all__ = [
    "CLOSE_REASONS",
    "DURATION_BUCKETS",
    "Histogram",
    "HistogramSnapshot",
    "MeteredPool",
    "PoolStats",
]

#: Upper bounds (seconds, inclusive) of the duration histograms' buckets; a last bucket
#: counts everything above.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
)  # fmt: skip

#: Why connections were closed (keys of ``PoolStats.closed_by_reason``).
CLOSE_REASONS: tuple[str, ...] = (
    "overflow",  # above pool_size: idle for overflow_idle_timeout (or returned, with 0)
    "idle",  # idle for idle_timeout
    "lifetime",  # reached max_lifetime
    "broken",  # found dead or raised a disconnect error while in use
    "ping_failed",  # failed a check (pre_ping, keepalive, after a disconnect)
    "reset_failed",  # on_checkin, the rollback or the session reset failed on return
    "invalidated",  # conn.invalidate()
    "leaked",  # its handle was garbage-collected without being returned
    "resized",  # surplus after resize()
    "drained",  # retired by drain() (failover, rotated credentials, a server that changed)
    "pool_closed",  # the pool was closed
)


class Histogram:
    """A fixed-memory histogram of durations in seconds (mutated under the pool lock)."""

    # The pool's return path records into this inline, so its layout is chosen for that:
    # the first bucket is a plain attribute (one attribute increment is measurably cheaper
    # than a list item), ``counts[0]`` stays 0, and there is no separate count (the buckets
    # add up to it). See docs/benchmarks.md.
    __slots__ = ("counts", "first", "max", "sum")

    def __init__(self) -> None:
        self.first = 0
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0
        self.max = 0.0

    def record(self, seconds: float) -> None:
        """Count one duration."""
        if seconds <= DURATION_BUCKETS[0]:
            self.first += 1
        else:
            self.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.sum += seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts to this one (for histograms kept in shards)."""
        self.first += other.first
        for index, count in enumerate(other.counts):
            self.counts[index] += count
        self.sum += other.sum
        if other.max > self.max:
            self.max = other.max

    def snapshot(self) -> HistogramSnapshot:
        """An immutable copy."""
        counts = (self.first, *self.counts[1:])
        return HistogramSnapshot(counts, sum(counts), self.sum, self.max)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Durations in seconds: per-bucket counts (bounds :data:`DURATION_BUCKETS`, plus one
    bucket above the last bound), count, sum and max, all since the pool was created."""

    counts: tuple[int, ...] = (0,) * (len(DURATION_BUCKETS) + 1)
    count: int = 0
    sum: float = 0.0
    max: float = 0.0

    @property
    def bounds(self) -> tuple[float, ...]:
        """The buckets' upper bounds (the last bucket has none)."""
        return DURATION_BUCKETS

    @property
    def mean(self) -> float:
        """The average duration (0 when nothing was recorded)."""
        return self.sum / self.count if self.count else 0.0

    def since(self, earlier: HistogramSnapshot) -> HistogramSnapshot:
        """What was recorded after ``earlier`` (``max`` stays the all-time maximum)."""
        return HistogramSnapshot(
            tuple(a - b for a, b in zip(self.counts, earlier.counts, strict=True)),
            self.count - earlier.count,
            self.sum - earlier.sum,
            self.max,
        )

    def as_dict(self) -> dict[str, Any]:
        """Bucket bounds and counts, count, sum and max, ready for JSON."""
        return {
            "buckets": [
                {"le": bound, "count": count}
                for bound, count in zip((*DURATION_BUCKETS, "+Inf"), self.counts, strict=True)
            ],
            "count": self.count,
            "sum": self.sum,
            "max": self.max,
        }


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
    min_idle: int
    """Idle connections maintenance keeps open (0: none)."""
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
    transaction_retries: int = 0
    """Total times ``run_transaction`` ran a unit of work again (after a serialization
    failure, a deadlock, a lock wait timeout, or a connection lost before the commit)."""

    closed_by_reason: Mapping[str, int] = field(default_factory=dict)
    """Total connections closed, by reason (see :data:`CLOSE_REASONS`); sums to ``closed``."""
    wait_time: HistogramSnapshot = field(default_factory=HistogramSnapshot)
    """How long callers that had to wait waited (successful or timed out)."""
    create_time: HistogramSnapshot = field(default_factory=HistogramSnapshot)
    """How long opening a new connection took (successful ones)."""
    use_time: HistogramSnapshot = field(default_factory=HistogramSnapshot)
    """How long checkouts were held, once :meth:`Pool.track_use_time` was called."""

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict, ready for JSON."""
        data = asdict(self)
        data["closed_by_reason"] = dict(self.closed_by_reason)
        data["wait_time"] = self.wait_time.as_dict()
        data["create_time"] = self.create_time.as_dict()
        data["use_time"] = self.use_time.as_dict()
        return data

    def since(self, earlier: PoolStats) -> PoolStats:
        """The totals accumulated since ``earlier`` (a previous snapshot of the same pool),
        with the gauges of this one: for periodic logging, keep the last snapshot and log
        ``pool.stats().since(last)``. Counters are never reset; maxima stay all-time."""
        changes: dict[str, Any] = {}
        for name in _TOTALS:
            changes[name] = getattr(self, name) - getattr(earlier, name)
        changes["closed_by_reason"] = {
            reason: count - earlier.closed_by_reason.get(reason, 0)
            for reason, count in self.closed_by_reason.items()
        }
        changes["wait_time"] = self.wait_time.since(earlier.wait_time)
        changes["create_time"] = self.create_time.since(earlier.create_time)
        changes["use_time"] = self.use_time.since(earlier.use_time)
        return replace(self, **changes)


#: The counters ``PoolStats.since`` subtracts (gauges and maxima are kept as they are).
_TOTALS = (
    "acquired",
    "created",
    "closed",
    "timeouts",
    "rejected",
    "waits",
    "wait_seconds_total",
    "connect_errors",
    "pings_failed",
    "leaks_detected",
    "reclaimed",
    "transaction_retries",
)


class MeteredPool(Protocol):
    """What the metrics exporters read from a pool: :class:`flask_dbpool.Pool` and
    :class:`flask_dbpool.sqlalchemy.SQLAlchemyPool` are such pools."""

    @property
    def name(self) -> str:
        """The pool's name (the ``pool_name`` label)."""

    @property
    def closed(self) -> bool:
        """Whether the pool was closed (a closed pool is no longer reported)."""

    @property
    def config(self) -> Any:
        """The validated :class:`~flask_dbpool.config.PoolConfig` (``min_idle`` is read)."""

    def stats(self) -> PoolStats:
        """A consistent snapshot."""

    def track_use_time(self) -> None:
        """Record how long each checkout is held."""

    def add_observer(self, observer: Callable[[str, float], object]) -> None:
        """Call ``observer(event, seconds)`` for each wait, connect and (with use time
        tracked) hold."""
