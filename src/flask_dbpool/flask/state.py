"""Where an app keeps its pools: the ``app.extensions`` keys and the accessors that read them.

Its own module so that the CLI and the dashboard can find the app's pools without importing
:mod:`flask_dbpool.flask.extension`, which imports them to register them on the app: the
Flask side then imports one way only (extension -> monitor -> cli, dashboard -> state).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from flask import Flask, current_app

from flask_dbpool.config import PoolConfig
from flask_dbpool.display import CONFIG_PREFIX
from flask_dbpool.errors import ConfigError
from flask_dbpool.flask.endpoints import EndpointTimes
from flask_dbpool.leaks import Checkout
from flask_dbpool.pool import Pool
from flask_dbpool.report import EndpointHistograms, ReportSource
from flask_dbpool.stats import MeteredPool, PoolStats

__all__ = [
    "CONFIG_PREFIX",
    "ENDPOINTS_KEY",
    "EXTENSION_KEY",
    "MONITORED_KEY",
    "MonitoredPool",
    "current_pool",
    "current_pools",
    "endpoint_histograms",
    "monitored_pools",
    "pick_pools",
    "pool_of",
]

#: ``app.extensions`` key of the app's :class:`~flask_dbpool.Pool`.
EXTENSION_KEY = "dbpool"
#: ``app.extensions`` key of the app's :class:`~flask_dbpool.flask.endpoints.EndpointTimes`.
ENDPOINTS_KEY = "dbpool.endpoints"
#: ``app.extensions`` key of the pools the app's dashboard, metrics endpoint and
#: ``flask dbpool`` commands show, by name (the :class:`DBPool`'s first).
MONITORED_KEY = "dbpool.monitored"


class MonitoredPool(ReportSource, MeteredPool, Protocol):
    """What the dashboard, the metrics endpoint and ``flask dbpool …`` read of a pool: a
    :class:`~flask_dbpool.Pool`, or an engine's pool through
    :class:`~flask_dbpool.sqlalchemy.EngineSource`. A report source and a metered pool, that
    also lends a connection for the CLI's checks."""

    @property
    def config(self) -> PoolConfig:
        """The pool's settings."""

    def stats(self) -> PoolStats:
        """A snapshot of gauges and totals."""

    def checkouts(self) -> Sequence[Checkout]:
        """The connections checked out now, longest held first."""

    def connection(self, timeout: float | None = None) -> AbstractContextManager[Any]:
        """A connection for a ``with`` block; ``.driver_connection`` is the driver's."""


def pool_of(app: Flask) -> Pool:
    """``app``'s pool. Raises ``RuntimeError`` if ``init_app(app)`` was not called."""
    try:
        pool: Pool = app.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError(
            f"flask-dbpool is not initialised on app {app.name!r}: call DBPool(app) or "
            "db.init_app(app)"
        ) from None
    return pool


def current_pool() -> Pool:
    """The current application's pool (needs an app context); raises like :func:`pool_of`."""
    # The app object itself, not the proxy: the pool is looked up in its extensions.
    return pool_of(current_app._get_current_object())  # type: ignore[attr-defined]


def monitored_pools(app: Flask) -> list[MonitoredPool]:
    """The pools ``app`` shows, in the order they were added (the :class:`DBPool`'s first);
    none before ``DBPool(app)`` or :func:`~flask_dbpool.flask.monitor`."""
    monitored: dict[str, MonitoredPool] = app.extensions.get(MONITORED_KEY, {})
    return list(monitored.values())


def pick_pools(app: Flask, name: str | None) -> list[MonitoredPool]:
    """All of ``app``'s monitored pools, or the one called ``name``. Raises
    :class:`~flask_dbpool.ConfigError` listing the names when there is none or no such one."""
    pools = monitored_pools(app)
    if not pools:
        raise ConfigError(
            f"no pool to show on app {app.name!r}: call DBPool(app), or "
            "flask_dbpool.flask.monitor(app, engine) for a SQLAlchemy engine"
        )
    if name is None:
        return pools
    chosen = [pool for pool in pools if pool.name == name]
    if not chosen:
        names = ", ".join(repr(pool.name) for pool in pools)
        raise ConfigError(f"no pool named {name!r} on app {app.name!r}; its pools: {names}")
    return chosen


def current_pools(name: str | None = None) -> list[MonitoredPool]:
    """:func:`pick_pools` of the current application (needs an app context)."""
    return pick_pools(current_app._get_current_object(), name)  # type: ignore[attr-defined]


def endpoint_histograms(app: Flask) -> EndpointHistograms:
    """``app``'s ``(wait, hold)`` histograms by endpoint name, as :func:`pool_report` and the
    Prometheus ``EndpointCollector`` take them; none if ``init_app(app)`` was not called (a
    dashboard mounted by hand, on an app without the extension, shows none)."""
    times: EndpointTimes | None = app.extensions.get(ENDPOINTS_KEY)
    if times is None:
        return {}
    return {name: (snapshot.wait, snapshot.hold) for name, snapshot in times.snapshot().items()}
