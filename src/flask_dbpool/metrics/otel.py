"""OpenTelemetry metrics for flask-dbpool pools (``pip install 'flask-dbpool[otel]'``).

Uses only the OpenTelemetry *API*: the application configures the SDK and its exporters.
Names and attributes follow the database-client semantic conventions; every instrument
carries ``db.client.connection.pool.name``::

    from flask_dbpool.metrics.otel import instrument_pool
    instrument_pool(pool)                      # the global MeterProvider
    instrument_pool(pool, meter_provider=mp)   # or a given one

Gauge-like figures are observed at collection time from :meth:`Pool.stats`; the wait,
create and use time histograms are recorded as they happen (use time turns on
:meth:`Pool.track_use_time`, which costs a little on every return). Their bucket boundaries
are :data:`~flask_dbpool.stats.DURATION_BUCKETS` (seconds), given as the advisory.

Any number of pools can be instrumented on one meter provider: the instruments are created
once per meter and report every pool, each under its own pool name. Instrumenting a pool
again is a no-op. A closed (or garbage-collected) pool is no longer observed.
"""

from __future__ import annotations

import importlib
import threading
import weakref
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from flask_dbpool.errors import ConfigError
from flask_dbpool.stats import DURATION_BUCKETS

if TYPE_CHECKING:
    from flask_dbpool.stats import MeteredPool as Pool
    from flask_dbpool.stats import PoolStats

__all__ = ["POOL_NAME", "STATE", "instrument_pool"]

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

#: What an observable instrument reads from one pool: ``(value, attributes)`` pairs.
_Read = Callable[["Pool", "PoolStats", dict[str, str]], Iterable[tuple[float, dict[str, str]]]]


def _otel_metrics() -> Any:
    try:
        return importlib.import_module("opentelemetry.metrics")
    except ImportError:
        raise ConfigError(
            "OpenTelemetry metrics need the otel extra: pip install 'flask-dbpool[otel]'"
        ) from None


def _one(read: Callable[[Pool, PoolStats], float]) -> _Read:
    """A single value per pool, with just the pool name as attributes."""
    return lambda pool, stats, name: [(read(pool, stats), name)]


class _MeterPools:
    """The instruments of one meter and the pools they report.

    A meter keeps one instrument per name: creating it again returns the first one and drops
    the new callbacks, so the instruments are created once here and each observable callback
    reports every registered pool.
    """

    def __init__(self, meter: Any, observation: Any) -> None:
        self._observation = observation
        self._lock = threading.Lock()
        # Weak, so that instrumenting never keeps a pool alive; insertion-ordered.
        self._pools: weakref.WeakKeyDictionary[Pool, None] = weakref.WeakKeyDictionary()
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            [
                self._observe(
                    lambda pool, s, name: [
                        (s.idle, {**name, STATE: "idle"}),
                        (s.in_use + s.checking, {**name, STATE: "used"}),  # not connecting slots
                    ]
                )
            ],
            unit="{connection}",
            description="The number of connections that are currently in the state described "
            "by the state attribute.",
        )
        gauges: tuple[tuple[str, Callable[[Pool, PoolStats], float], str], ...] = (
            (
                "db.client.connection.max",
                lambda pool, s: s.pool_size + s.max_overflow,
                "The maximum number of open connections allowed.",
            ),
            (
                "db.client.connection.idle.max",
                lambda pool, s: s.pool_size,
                "The maximum number of idle open connections allowed.",
            ),
            (
                "db.client.connection.idle.min",
                lambda pool, s: s.min_idle,
                "The minimum number of idle open connections allowed.",
            ),
            (
                "db.client.connection.pending_requests",
                lambda pool, s: s.waiting,
                "The number of current pending requests for an open connection.",
            ),
        )
        for instrument, read, description in gauges:
            meter.create_observable_up_down_counter(
                instrument,
                [self._observe(_one(read))],
                unit="{request}" if instrument.endswith("pending_requests") else "{connection}",
                description=description,
            )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            [self._observe(lambda pool, s, name: [(s.timeouts, name)])],
            unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to obtain "
            "a connection from the pool.",
        )
        # The SDK's default boundaries (0, 5, 10, 25, ... 10000) are meant for milliseconds.
        buckets = list(DURATION_BUCKETS)
        self.histograms: dict[str, Any] = {
            "wait": meter.create_histogram(
                "db.client.connection.wait_time",
                unit="s",
                description="The time it took to obtain an open connection from the pool.",
                explicit_bucket_boundaries_advisory=buckets,
            ),
            "create": meter.create_histogram(
                "db.client.connection.create_time",
                unit="s",
                description="The time it took to create a new connection.",
                explicit_bucket_boundaries_advisory=buckets,
            ),
            "use": meter.create_histogram(
                "db.client.connection.use_time",
                unit="s",
                description="The time between borrowing a connection and returning it to the pool.",
                explicit_bucket_boundaries_advisory=buckets,
            ),
        }

    def add(self, pool: Pool) -> bool:
        """Register ``pool``; ``False`` if it already was."""
        with self._lock:
            if pool in self._pools:
                return False
            self._pools[pool] = None
            return True

    def _open_pools(self) -> list[Pool]:
        with self._lock:  # a snapshot: another thread may register a pool meanwhile
            pools = list(self._pools)
        return [pool for pool in pools if not pool.closed]

    def _observe(self, read: _Read) -> Callable[[Any], Iterable[Any]]:
        # Holds the registry, never a pool: pools are found through the weak mapping.
        def callback(options: Any) -> Iterable[Any]:
            observation = self._observation
            return [
                observation(value, attributes)
                for pool in self._open_pools()
                for value, attributes in read(pool, pool.stats(), {POOL_NAME: pool.name})
            ]

        return callback


_lock = threading.Lock()
# Keyed by meter (weakly: a discarded MeterProvider takes its meters and entries with it).
_registries: weakref.WeakKeyDictionary[Any, _MeterPools] = weakref.WeakKeyDictionary()
# Before the SDK sets the global provider, every get_meter() call returns a new proxy
# meter, and each would later create its own (duplicate) instruments on the real meter:
# one global meter is kept instead.
_global_meter: Any = None


def _meter(metrics: Any, meter_provider: Any) -> Any:
    global _global_meter
    if meter_provider is None and _global_meter is not None:
        return _global_meter
    try:
        own_version = version("flask-dbpool")
    except PackageNotFoundError:  # running from a source tree
        own_version = "0"
    meter = metrics.get_meter("flask_dbpool", own_version, meter_provider=meter_provider)
    if meter_provider is None:
        _global_meter = meter
    return meter


def instrument_pool(pool: Pool, meter_provider: Any = None) -> None:
    """Report ``pool`` through OpenTelemetry instruments (see the module docstring).

    Pools instrumented on the same meter provider share its instruments, each reported
    under its own ``db.client.connection.pool.name``. Idempotent for a given pool and
    provider. Raises :class:`~flask_dbpool.ConfigError` naming the extra if
    ``opentelemetry-api`` is missing.
    """
    metrics = _otel_metrics()
    with _lock:  # so that concurrent first calls do not both create the instruments
        meter = _meter(metrics, meter_provider)
        registry = _registries.get(meter)
        if registry is None:
            registry = _registries[meter] = _MeterPools(meter, metrics.Observation)
        if not registry.add(pool):
            return  # already reported: a second observer would count every event twice
    histograms = registry.histograms
    name = {POOL_NAME: pool.name}

    def record(event: str, seconds: float) -> None:
        histogram = histograms.get(event)
        if histogram is not None:
            try:
                histogram.record(seconds, name)
            except Exception:  # a metrics problem must never fail a checkout
                pass

    pool.add_observer(record)
    pool.track_use_time()
