"""Which pools an app shows, and the pages and commands that show them.

``DBPool(app)`` shows its own pool; :func:`monitor` adds others, above all the pools of
SQLAlchemy engines on :class:`~flask_dbpool.sqlalchemy.SQLAlchemyPool` (Flask-SQLAlchemy's,
found without arguments). Both mount, once per app and as the ``DBPOOL_*`` display keys say,
the dashboard (``DBPOOL_DASHBOARD``), the Prometheus endpoint (``DBPOOL_METRICS_ENDPOINT``) and
the ``flask dbpool`` commands; these read the app's list of pools when they run, so a pool
added later shows too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response

from flask_dbpool.display import Display, check_keys, display_settings
from flask_dbpool.errors import ConfigError
from flask_dbpool.flask.cli import dbpool_cli
from flask_dbpool.flask.dashboard import register_dashboard
from flask_dbpool.flask.state import (
    CONFIG_PREFIX,
    EXTENSION_KEY,
    MONITORED_KEY,
    MonitoredPool,
    endpoint_histograms,
    monitored_pools,
)
from flask_dbpool.pool import Pool

__all__ = ["add_pool", "monitor", "mount"]

_MOUNTED_KEY = "dbpool.mounted"
#: The multiprocess snapshot writer, with ``PROMETHEUS_MULTIPROC_DIR`` set.
_WRITER_KEY = "dbpool.metrics_writer"

logger = logging.getLogger("flask_dbpool.flask")


def add_pool(app: Flask, pool: MonitoredPool) -> bool:
    """Show ``pool`` on ``app``'s pages and commands; ``False`` if it is shown already.
    Raises :class:`ConfigError` if another pool of ``app`` has its name."""
    monitored: dict[str, MonitoredPool] = app.extensions.setdefault(MONITORED_KEY, {})
    if any(_same(pool, shown) for shown in monitored.values()):
        return False
    if pool.name in monitored:
        raise ConfigError(
            f"two pools named {pool.name!r} on app {app.name!r}: give each its own name "
            "(DBPOOL_NAME, Pool(name=…), engine_options(name=…), or monitor(app, engine, "
            "name=…))"
        )
    monitored[pool.name] = pool
    display: Display | None = app.extensions.get(_MOUNTED_KEY)
    if display is not None and display.metrics_endpoint is not None:
        pool.track_use_time()  # the metrics endpoint reports use time from now on
        writer = app.extensions.get(_WRITER_KEY)
        if writer is not None:  # pre-forking server: every worker writes it from now on
            writer.add(pool)
    return True


def _same(one: MonitoredPool, other: MonitoredPool) -> bool:
    if one is other:
        return True
    engine = getattr(one, "engine", None)
    return engine is not None and engine is getattr(other, "engine", None)


def mount(app: Flask, display: Display) -> None:
    """Mount the dashboard, the metrics endpoint and the ``flask dbpool`` commands on
    ``app`` as ``display`` says, once (a second call does nothing). Raises
    :class:`ConfigError` naming the ``prometheus`` extra if the endpoint needs it."""
    if app.extensions.get(_MOUNTED_KEY) is not None:
        return
    if display.metrics_endpoint is not None:
        _serve_metrics(app, display.metrics_endpoint)
    if display.dashboard:
        register_dashboard(app, display.dashboard_path, display.dashboard_token)
    if dbpool_cli.name not in app.cli.commands:
        app.cli.add_command(dbpool_cli)  # `flask dbpool status|check|doctor`
    app.extensions[_MOUNTED_KEY] = display


def monitor(app: Flask, *sources: Any, name: str | None = None) -> list[str]:
    """Show more pools on ``app``'s dashboard, metrics endpoint and ``flask dbpool`` commands,
    mounted as the app's ``DBPOOL_DASHBOARD*`` and ``DBPOOL_METRICS_ENDPOINT`` keys say
    (``DBPOOL_URL`` is not needed: an app on Flask-SQLAlchemy alone can use this).

    ``sources`` are SQLAlchemy engines on :class:`~flask_dbpool.sqlalchemy.SQLAlchemyPool`
    (followed across ``engine.dispose()``) or :class:`~flask_dbpool.Pool` objects. Without
    any, the engines of the app's Flask-SQLAlchemy (or Flask-SQLAlchemy-Lite) extension whose
    pool is a ``SQLAlchemyPool`` are shown; a bind's engine whose pool has the default name
    is shown as ``sqlalchemy.<bind key>``. ``name`` names the one source given. Returns the
    names now shown. A source already shown is skipped. Raises
    :class:`~flask_dbpool.ConfigError` for something that is not such an engine or pool, for
    two pools of one name, for an invalid or unknown ``DBPOOL_*`` key, and when there is
    nothing to show.
    """
    settings = app.config.get_namespace(CONFIG_PREFIX)
    check_keys(settings, frozenset({"url"}))
    display = display_settings(settings)
    if name is not None and len(sources) != 1:
        raise ConfigError(f"monitor(name={name!r}) names one source, got {len(sources)}")
    if sources:
        pools = [_as_monitored(source, name) for source in sources]
    else:
        pools = list(_flask_sqlalchemy_pools(app))
    for pool in pools:
        add_pool(app, pool)
    mount(app, display)
    return [pool.name for pool in monitored_pools(app)]


def _as_monitored(source: Any, name: str | None) -> MonitoredPool:
    if isinstance(source, Pool):
        if name is not None and name != source.name:
            raise ConfigError(f"a Pool is shown by its own name {source.name!r}, not {name!r}")
        return source
    if hasattr(source, "pool") and hasattr(source, "url"):  # a SQLAlchemy Engine
        from flask_dbpool.sqlalchemy import EngineSource

        return EngineSource(source, name)
    raise ConfigError(
        f"monitor() shows SQLAlchemy engines (on flask_dbpool.sqlalchemy.SQLAlchemyPool) and "
        f"flask_dbpool.Pool objects, got {type(source).__name__}"
    )


def _flask_sqlalchemy_pools(app: Flask) -> Iterator[MonitoredPool]:
    extension = app.extensions.get("sqlalchemy")
    # (On the class: the property itself needs an app context.)
    if extension is None or not hasattr(type(extension), "engines"):
        raise ConfigError(
            f"monitor(app) without engines shows Flask-SQLAlchemy's, but app {app.name!r} has "
            "no Flask-SQLAlchemy (or -Lite) extension: pass the engines or pools to show"
        )
    from flask_dbpool.sqlalchemy import EngineSource, SQLAlchemyPool

    with app.app_context():  # (their `engines` belong to the current app)
        engines = dict(extension.engines)
    found = 0
    # The default engine first (key None in Flask-SQLAlchemy, "default" in -Lite), then the
    # binds by name.
    for key, engine in sorted(
        engines.items(), key=lambda item: (item[0] not in (None, "default"), item[0] or "")
    ):
        if not isinstance(engine.pool, SQLAlchemyPool):
            logger.warning(
                "flask-dbpool does not show app %r's engine %s: it uses %s; for a bind, give "
                "its dict the options (SQLALCHEMY_BINDS = {%r: {'url': …, "
                "**engine_options(…)}}): SQLALCHEMY_ENGINE_OPTIONS is for the default engine",
                app.name,
                "(default)" if key is None else repr(key),
                type(engine.pool).__name__,
                key,
            )
            continue
        found += 1
        name = None
        if key not in (None, "default") and engine.pool.name == "sqlalchemy":
            name = f"sqlalchemy.{key}"
        yield EngineSource(engine, name)
    if not found:
        raise ConfigError(
            f"none of app {app.name!r}'s Flask-SQLAlchemy engines uses SQLAlchemyPool: set "
            "SQLALCHEMY_ENGINE_OPTIONS = flask_dbpool.sqlalchemy.engine_options(…)"
        )


class _AppCollector:
    """A Prometheus collector of ``app``'s pools as they are at each scrape."""

    def __init__(self, app: Flask) -> None:
        self._app = app

    def describe(self) -> list[Any]:
        """Nothing: lets the registry accept the collector without a first scrape."""
        return []

    def collect(self) -> Iterator[Any]:
        """Every monitored pool's metrics, and the app's per-endpoint times."""
        from flask_dbpool.metrics.prometheus import EndpointCollector, PoolCollector

        yield from PoolCollector(*monitored_pools(self._app)).collect()
        own: Pool | None = self._app.extensions.get(EXTENSION_KEY)
        if own is not None:
            app = self._app
            yield from EndpointCollector(own.name, lambda: endpoint_histograms(app)).collect()


def _serve_metrics(app: Flask, path: str) -> None:
    """Serve the app's pools' metrics in Prometheus text format at ``path``."""
    from flask_dbpool.metrics.prometheus import prometheus_core

    prometheus_core()  # raises ConfigError naming the extra if missing
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc_dir:
        # Pre-forking server: every worker writes its pools' snapshots, any worker serves all.
        from flask_dbpool.metrics.multiprocess import MultiProcessCollector, shared_writer

        writer = shared_writer(multiproc_dir)
        for pool in monitored_pools(app):
            writer.add(pool)
        app.extensions[_WRITER_KEY] = writer  # pools added later are written too
        registry.register(MultiProcessCollector(multiproc_dir))
        # Per-endpoint times stay per process: one worker's alone would mislead, so they are
        # left out here (DBPool.endpoint_times(app) still has them in each worker).
    else:
        registry.register(_AppCollector(app))
        for pool in monitored_pools(app):
            pool.track_use_time()

    def dbpool_metrics() -> Response:
        if multiproc_dir:
            for pool in monitored_pools(app):
                # (Re)starts the writer in a forked worker, writes a fresh snapshot.
                writer.add(pool)
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule(path, endpoint="dbpool_metrics", view_func=dbpool_metrics)
