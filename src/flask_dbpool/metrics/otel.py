"""OpenTelemetry metrics for flask-dbpool pools (``pip install 'flask-dbpool[otel]'``).

Uses only the OpenTelemetry *API*: the application configures the SDK and its exporters.
Names and attributes follow the database-client semantic conventions; every instrument
carries ``db.client.connection.pool.name``::

    from flask_dbpool.metrics.otel import instrument_pool
    instrument_pool(pool)                      # the global MeterProvider
    instrument_pool(pool, meter_provider=mp)   # or a given one

Gauge-like figures are observed at collection time from :meth:`Pool.stats`; the wait,
create and use time histograms are recorded as they happen (use time turns on
:meth:`Pool.track_use_time`, which costs a little on every return).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from flask_dbpool.errors import ConfigError

if TYPE_CHECKING:
    from flask_dbpool.pool import Pool

__all__ = ["POOL_NAME", "STATE", "instrument_pool"]

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"


def _otel_metrics() -> Any:
    try:
        return importlib.import_module("opentelemetry.metrics")
    except ImportError:
        raise ConfigError(
            "OpenTelemetry metrics need the otel extra: pip install 'flask-dbpool[otel]'"
        ) from None


def instrument_pool(pool: Pool, meter_provider: Any = None) -> None:
    """Report ``pool`` through OpenTelemetry instruments (see the module docstring).

    Raises :class:`~flask_dbpool.ConfigError` naming the extra if ``opentelemetry-api`` is
    missing.
    """
    metrics = _otel_metrics()
    try:
        own_version = version("flask-dbpool")
    except PackageNotFoundError:  # running from a source tree
        own_version = "0"
    meter = metrics.get_meter("flask_dbpool", own_version, meter_provider=meter_provider)
    Observation = metrics.Observation
    name = {POOL_NAME: pool.name}

    def observe(read: Any) -> Any:
        def callback(options: Any) -> Iterable[Any]:
            return [Observation(value, attributes) for value, attributes in read(pool.stats())]

        return callback

    meter.create_observable_up_down_counter(
        "db.client.connection.count",
        [
            observe(
                lambda s: [
                    (s.idle, {**name, STATE: "idle"}),
                    (s.open - s.idle, {**name, STATE: "used"}),
                ]
            )
        ],
        unit="{connection}",
        description="The number of connections that are currently in the state described "
        "by the state attribute.",
    )
    for instrument, read, description in (
        (
            "db.client.connection.max",
            lambda s: s.pool_size + s.max_overflow,
            "The maximum number of open connections allowed.",
        ),
        (
            "db.client.connection.idle.max",
            lambda s: s.pool_size,
            "The maximum number of idle open connections allowed.",
        ),
        (
            "db.client.connection.idle.min",
            lambda s: pool.config.min_idle,
            "The minimum number of idle open connections allowed.",
        ),
        (
            "db.client.connection.pending_requests",
            lambda s: s.waiting,
            "The number of current pending requests for an open connection.",
        ),
    ):
        meter.create_observable_up_down_counter(
            instrument,
            [observe(lambda s, read=read: [(read(s), name)])],
            unit="{request}" if instrument.endswith("pending_requests") else "{connection}",
            description=description,
        )
    meter.create_observable_counter(
        "db.client.connection.timeouts",
        [observe(lambda s: [(s.timeouts, name)])],
        unit="{timeout}",
        description="The number of connection timeouts that have occurred trying to obtain a "
        "connection from the pool.",
    )
    wait_time = meter.create_histogram(
        "db.client.connection.wait_time",
        unit="s",
        description="The time it took to obtain an open connection from the pool.",
    )
    create_time = meter.create_histogram(
        "db.client.connection.create_time",
        unit="s",
        description="The time it took to create a new connection.",
    )
    use_time = meter.create_histogram(
        "db.client.connection.use_time",
        unit="s",
        description="The time between borrowing a connection and returning it to the pool.",
    )
    histograms = {"wait": wait_time, "create": create_time, "use": use_time}

    def record(event: str, seconds: float) -> None:
        histogram = histograms.get(event)
        if histogram is not None:
            try:
                histogram.record(seconds, name)
            except Exception:  # a metrics problem must never fail a checkout
                pass

    pool.add_observer(record)
    pool.track_use_time()
