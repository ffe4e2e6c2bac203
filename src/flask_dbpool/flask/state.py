"""Where an app keeps its pool: the ``app.extensions`` keys and the accessors that read them.

Its own module so that the CLI and the dashboard can find the app's pool without importing
:mod:`flask_dbpool.flask.extension`, which imports them to register them on the app: the
Flask side then imports one way only (extension -> cli, dashboard -> state).
"""

from __future__ import annotations

from flask import Flask, current_app

from flask_dbpool.flask.endpoints import EndpointTimes
from flask_dbpool.pool import Pool
from flask_dbpool.report import EndpointHistograms

__all__ = [
    "CONFIG_PREFIX",
    "ENDPOINTS_KEY",
    "EXTENSION_KEY",
    "current_pool",
    "endpoint_histograms",
    "pool_of",
]

#: Prefix of the extension's config keys (``DBPOOL_URL`` …).
CONFIG_PREFIX = "DBPOOL_"
#: ``app.extensions`` key of the app's :class:`~flask_dbpool.Pool`.
EXTENSION_KEY = "dbpool"
#: ``app.extensions`` key of the app's :class:`~flask_dbpool.flask.endpoints.EndpointTimes`.
ENDPOINTS_KEY = "dbpool.endpoints"


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


def endpoint_histograms(app: Flask) -> EndpointHistograms:
    """``app``'s ``(wait, hold)`` histograms by endpoint name, as :func:`pool_report` and the
    Prometheus ``EndpointCollector`` take them; none if ``init_app(app)`` was not called (a
    dashboard mounted by hand, on an app without the extension, shows none)."""
    times: EndpointTimes | None = app.extensions.get(ENDPOINTS_KEY)
    if times is None:
        return {}
    return {name: (snapshot.wait, snapshot.hold) for name, snapshot in times.snapshot().items()}
