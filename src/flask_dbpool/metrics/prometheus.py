"""Prometheus metrics for flask-dbpool pools (``pip install 'flask-dbpool[prometheus]'``).

A scrape-time collector: nothing is recorded on the pool's hot path; each scrape reads
:meth:`Pool.stats`. Names follow the OpenTelemetry database-client semantic conventions in
Prometheus form, with the pool name as the ``pool_name`` label, so one dashboard serves both::

    from prometheus_client import REGISTRY
    from flask_dbpool.metrics.prometheus import PoolCollector
    REGISTRY.register(PoolCollector(pool))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from flask_dbpool.errors import ConfigError
from flask_dbpool.stats import CLOSE_REASONS, DURATION_BUCKETS, HistogramSnapshot

if TYPE_CHECKING:
    from flask_dbpool.stats import MeteredPool as Pool

__all__ = ["EndpointCollector", "PoolCollector"]


def prometheus_core() -> Any:
    """``prometheus_client.core``; raises :class:`~flask_dbpool.ConfigError` naming the extra
    if ``prometheus_client`` is missing."""
    try:
        return importlib.import_module("prometheus_client.core")
    except ImportError:
        raise ConfigError(
            "Prometheus metrics need the prometheus extra: pip install 'flask-dbpool[prometheus]'"
        ) from None


class PoolCollector:
    """A ``prometheus_client`` collector for one or more pools.

    Metrics (all labelled ``pool_name``): ``db_client_connection_count`` (gauge, ``state`` =
    ``idle`` | ``used``), ``db_client_connection_max``, ``db_client_connection_idle_max``,
    ``db_client_connection_idle_min``, ``db_client_connection_pending_requests`` (gauges),
    ``db_client_connection_timeouts_total`` (counter),
    ``db_client_connection_wait_time_seconds``, ``db_client_connection_create_time_seconds``
    and ``db_client_connection_use_time_seconds`` (histograms; registering a pool turns on
    :meth:`Pool.track_use_time`), plus flask-dbpool's own counters
    ``flask_dbpool_connections_created_total``,
    ``flask_dbpool_connections_closed_total`` (``reason`` label),
    ``flask_dbpool_checkouts_total``, ``flask_dbpool_rejected_total``,
    ``flask_dbpool_connect_errors_total``, ``flask_dbpool_pings_failed_total``,
    ``flask_dbpool_leaks_detected_total``, ``flask_dbpool_reclaimed_total`` and
    ``flask_dbpool_transaction_retries_total``.
    Raises :class:`~flask_dbpool.ConfigError` naming the extra if ``prometheus_client`` is
    missing.
    """

    def __init__(self, *pools: Pool) -> None:
        self._core = prometheus_core()
        self._pools = list(pools)
        for pool in pools:
            pool.track_use_time()

    def add(self, pool: Pool) -> None:
        """Also report ``pool`` (and start tracking its use time)."""
        pool.track_use_time()
        self._pools.append(pool)

    def describe(self) -> Iterable[Any]:
        """Nothing: lets the registry accept the collector without a first scrape."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metric families of every pool, read from ``stats()`` now."""
        families = self.families()
        for pool in self._pools:
            self.add_snapshot(families, pool.name, pool.stats(), pool.config.min_idle)
        yield from families.values()

    def families(self, extra_labels: list[str] | None = None) -> dict[str, Any]:
        """Empty metric families, by name, whose series are labelled ``pool_name`` (then
        ``extra_labels``)."""
        core = self._core
        extra = extra_labels or []

        def gauge(name: str, doc: str, labels: list[str] | None = None) -> Any:
            return core.GaugeMetricFamily(name, doc, labels=["pool_name", *extra, *(labels or [])])

        def counter(name: str, doc: str, labels: list[str] | None = None) -> Any:
            return core.CounterMetricFamily(
                name, doc, labels=["pool_name", *extra, *(labels or [])]
            )

        def histogram(name: str, doc: str) -> Any:
            return core.HistogramMetricFamily(name, doc, labels=["pool_name", *extra])

        return {
            "count": gauge(
                "db_client_connection_count", "Connections by state (idle or used).", ["state"]
            ),
            "max": gauge("db_client_connection_max", "Most connections the pool may open."),
            "idle_max": gauge("db_client_connection_idle_max", "Most idle connections kept."),
            "idle_min": gauge("db_client_connection_idle_min", "Idle connections kept open."),
            "pending": gauge(
                "db_client_connection_pending_requests", "Callers waiting for a connection."
            ),
            "timeouts": counter(
                "db_client_connection_timeouts", "Checkouts that timed out waiting (PoolTimeout)."
            ),
            "wait_time": histogram(
                "db_client_connection_wait_time_seconds",
                "Time callers that had to wait spent waiting for a connection.",
            ),
            "create_time": histogram(
                "db_client_connection_create_time_seconds", "Time it took to open a new connection."
            ),
            "use_time": histogram(
                "db_client_connection_use_time_seconds",
                "Time between borrowing a connection and returning it to the pool.",
            ),
            "created": counter("flask_dbpool_connections_created", "Connections opened."),
            "acquired": counter("flask_dbpool_checkouts", "Successful checkouts."),
            "rejected": counter("flask_dbpool_rejected", "Checkouts refused by max_waiting."),
            "connect_errors": counter(
                "flask_dbpool_connect_errors", "Failed attempts to open a connection."
            ),
            "pings_failed": counter(
                "flask_dbpool_pings_failed", "Connections found dead by a check."
            ),
            "leaks_detected": counter(
                "flask_dbpool_leaks_detected", "Checkouts held longer than leak_threshold."
            ),
            "reclaimed": counter(
                "flask_dbpool_reclaimed", "Handles garbage-collected without being returned."
            ),
            "transaction_retries": counter(
                "flask_dbpool_transaction_retries",
                "Units of work run_transaction ran again (nothing had been committed).",
            ),
            "closed": counter("flask_dbpool_connections_closed", "Connections closed.", ["reason"]),
        }

    @staticmethod
    def add_snapshot(
        families: dict[str, Any],
        name: str,
        stats: Any,
        min_idle: int,
        extra: list[str] | None = None,
    ) -> None:
        """Add one pool's figures (a :class:`PoolStats` or an object with its attributes)."""
        labels = [name, *(extra or [])]
        families["count"].add_metric([*labels, "idle"], stats.idle)
        # Open connections not idle: lent out, or taken aside by maintenance for a check.
        # Slots still connecting are not connections yet.
        families["count"].add_metric([*labels, "used"], stats.in_use + stats.checking)
        families["max"].add_metric(labels, stats.pool_size + stats.max_overflow)
        families["idle_max"].add_metric(labels, stats.pool_size)
        families["idle_min"].add_metric(labels, min_idle)
        families["pending"].add_metric(labels, stats.waiting)
        families["timeouts"].add_metric(labels, stats.timeouts)
        families["wait_time"].add_metric(labels, *_histogram(stats.wait_time))
        families["create_time"].add_metric(labels, *_histogram(stats.create_time))
        families["use_time"].add_metric(labels, *_histogram(stats.use_time))
        for field in (
            "created",
            "acquired",
            "rejected",
            "connect_errors",
            "pings_failed",
            "leaks_detected",
            "reclaimed",
            "transaction_retries",
        ):
            families[field].add_metric(labels, getattr(stats, field))
        # Every reason from the start, at 0: rate() needs a series before its first close.
        closed = stats.closed_by_reason
        for reason in (*CLOSE_REASONS, *sorted(set(closed) - set(CLOSE_REASONS))):
            families["closed"].add_metric([*labels, reason], closed.get(reason, 0))


class EndpointCollector:
    """Wait and hold time histograms per endpoint (the Flask extension feeds it):
    ``flask_dbpool_endpoint_wait_time_seconds`` and ``flask_dbpool_endpoint_hold_time_seconds``,
    labelled ``pool_name`` and ``endpoint`` (the endpoint name, never the raw path)."""

    def __init__(
        self,
        pool_name: str,
        source: Callable[[], Mapping[str, tuple[HistogramSnapshot, HistogramSnapshot]]],
    ) -> None:
        self._core = prometheus_core()
        self._pool_name = pool_name
        self._source = source

    def describe(self) -> Iterable[Any]:
        """Nothing: lets the registry accept the collector without a first scrape."""
        return []

    def collect(self) -> Iterator[Any]:
        """The two histogram families, one series per endpoint."""
        core = self._core
        labels = ["pool_name", "endpoint"]
        wait = core.HistogramMetricFamily(
            "flask_dbpool_endpoint_wait_time_seconds",
            "Time each endpoint waited for a connection.",
            labels=labels,
        )
        hold = core.HistogramMetricFamily(
            "flask_dbpool_endpoint_hold_time_seconds",
            "Time each endpoint held its connection.",
            labels=labels,
        )
        for endpoint, (waited, held) in sorted(self._source().items()):
            wait.add_metric([self._pool_name, endpoint], *_histogram(waited))
            hold.add_metric([self._pool_name, endpoint], *_histogram(held))
        yield wait
        yield hold


def _histogram(snapshot: HistogramSnapshot) -> tuple[list[tuple[str, int]], float]:
    """Prometheus buckets (cumulative, ``le`` as text) and the sum."""
    buckets = []
    running = 0
    for bound, count in zip((*DURATION_BUCKETS, float("inf")), snapshot.counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return buckets, snapshot.sum
