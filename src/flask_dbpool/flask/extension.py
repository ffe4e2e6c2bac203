"""``DBPool``: the Flask extension.

One :class:`~flask_dbpool.Pool` per application, built from the app's ``DBPOOL_*`` config and
stored in ``app.extensions["dbpool"]``. ``db.connection`` lends each app context (each request,
CLI command or ``with app.app_context():`` block) one connection, checked out on first use and
returned at teardown.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from time import perf_counter
from types import FrameType
from typing import TypeVar

from flask import Flask, current_app, g, has_request_context, request

from flask_dbpool.config import PoolConfig
from flask_dbpool.display import check_keys, config_key, display_settings
from flask_dbpool.errors import ConfigError, PoolError, PoolTimeout
from flask_dbpool.flask.cli import dbpool_cli
from flask_dbpool.flask.endpoints import (
    UNMATCHED,
    EndpointTimes,
    EndpointTimesSnapshot,
    endpoint_label,
)
from flask_dbpool.flask.monitor import add_pool, mount
from flask_dbpool.flask.state import (
    CONFIG_PREFIX,
    ENDPOINTS_KEY,
    EXTENSION_KEY,
    MONITORED_KEY,
    pool_of,
)
from flask_dbpool.pool import Pool
from flask_dbpool.proxy import PooledConnection

__all__ = ["CONFIG_PREFIX", "ENDPOINTS_KEY", "EXTENSION_KEY", "DBPool", "describe_request"]

_G_KEY = "_flask_dbpool_checkout"  # a _Checkout
_R = TypeVar("_R")


class DBPool:
    """Connection pooling for one or more Flask applications.

    ``db = DBPool(app)``, or ``db = DBPool()`` then ``db.init_app(app)`` in an app factory.
    Several apps may share one ``DBPool``; each gets its own pool.

    Config keys (``DBPOOL_URL`` is required; the others default as in :class:`Pool`):
    ``DBPOOL_URL``, ``DBPOOL_POOL_SIZE``, ``DBPOOL_MAX_OVERFLOW``, ``DBPOOL_TIMEOUT``,
    ``DBPOOL_NAME`` (default: the app's name), ``DBPOOL_RESET_ON_RETURN``, ``DBPOOL_LIFO``,
    and every other :class:`~flask_dbpool.config.PoolConfig` option as ``DBPOOL_<OPTION>``
    (``DBPOOL_PRE_PING``, ``DBPOOL_MAX_LIFETIME``, ``DBPOOL_LEAK_THRESHOLD`` …).
    ``DBPOOL_DESCRIBE_CALLER`` defaults to :func:`describe_request` (method and route rule).
    ``DBPOOL_METRICS_ENDPOINT`` (a path such as ``"/metrics"``, default off) serves the pool's
    Prometheus metrics there (needs the ``prometheus`` extra).
    An unknown ``DBPOOL_*`` key is an error, with a did-you-mean suggestion.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Build ``app``'s pool from its config and register the teardown.

        Raises :class:`~flask_dbpool.ConfigError` naming the config key for a missing
        ``DBPOOL_URL``, an unknown ``DBPOOL_*`` key or an invalid value, and if ``app`` was
        already initialised. With ``DBPOOL_OPEN_TIMEOUT`` set, waits for a first connection
        and raises :class:`~flask_dbpool.PoolTimeout` if none opens in time, except when the
        ``flask`` command loads the app for ``flask dbpool …``: those commands report an
        unreachable database themselves.
        """
        if EXTENSION_KEY in app.extensions:
            raise ConfigError(f"flask-dbpool is already initialised on app {app.name!r}")
        settings = app.config.get_namespace(CONFIG_PREFIX)
        check_keys(settings, frozenset({"url"}))
        url = settings.pop("url", None)
        if not url:
            raise ConfigError(
                f"{CONFIG_PREFIX}URL is required: set app.config['{CONFIG_PREFIX}URL'] to a "
                "database URL such as 'sqlite:///app.db' or 'postgresql://user@host/db'"
            )
        display = display_settings(settings)
        settings.setdefault("name", app.name)
        settings.setdefault("describe_caller", describe_request)
        # Validate first so that errors name the DBPOOL_* key, then build from the same values.
        PoolConfig.from_options(settings, label=config_key)
        if settings.get("open_timeout") is not None and _loading_for_dbpool_cli():
            # `flask dbpool check|doctor|status` must run with the database down: they
            # connect with their own --timeout and report a failure themselves. Serving, and
            # every other command, still fails fast.
            settings["open_timeout"] = None
        pool = Pool(url, **settings)
        # The app's own pool is shown first: pools monitor() added before move after it.
        monitored = app.extensions.pop(MONITORED_KEY, {})
        try:
            add_pool(app, pool)
            for other in monitored.values():
                add_pool(app, other)
            mount(app, display)
        except BaseException:
            app.extensions[MONITORED_KEY] = monitored
            pool.close()
            raise
        app.extensions[EXTENSION_KEY] = pool
        app.extensions[ENDPOINTS_KEY] = EndpointTimes()
        app.teardown_appcontext(_return_connection)

    @staticmethod
    def get_pool(app: Flask) -> Pool:
        """``app``'s pool. Raises ``RuntimeError`` if ``init_app(app)`` was not called."""
        return pool_of(app)

    @property
    def pool(self) -> Pool:
        """The current application's :class:`~flask_dbpool.Pool` (needs an app context)."""
        return self.get_pool(current_app._get_current_object())  # type: ignore[attr-defined]

    @property
    def connection(self) -> PooledConnection:
        """The current app context's connection, checked out on first use.

        The same object for the whole request (or app context); returned at teardown, rolled
        back first if the request raised, or if it left a transaction open (unless
        ``DBPOOL_RESET_ON_RETURN`` is false). Commit what you want to keep, or use
        ``with db.connection: …``, which commits when the block ends normally and rolls back
        when it raises, keeping the connection for the rest of the request. Waits and raises
        like :meth:`Pool.acquire`. Needs an app context.
        """
        # Every proxy lookup costs (werkzeug's LocalProxy): resolve ``g`` once, and keep what
        # teardown needs in one record on it, so teardown needs no lookup of the app.
        context_g = g._get_current_object()
        # (g.get, not getattr: a missing attribute costs an AttributeError raised and caught.)
        checkout: _Checkout | None = context_g.get(_G_KEY)
        if checkout is not None and not checkout.conn.returned:
            return checkout.conn
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        pool = pool_of(app)
        times: EndpointTimes = app.extensions[ENDPOINTS_KEY]
        started = perf_counter()
        try:
            conn = pool.acquire()
        except PoolTimeout:  # the wait that ran out counts for this endpoint too
            times.record(endpoint_label(), perf_counter() - started, None)
            raise
        checked_out = perf_counter()
        # `with db.connection:` commits like the driver's own block, but the connection
        # stays with the request until teardown.
        pool.pin(conn)
        endpoint = endpoint_label()
        pool.label_checkout(conn, endpoint)  # the dashboard's "endpoint" column
        setattr(context_g, _G_KEY, _Checkout(conn, pool, times, endpoint, started, checked_out))
        return conn

    def run_transaction(
        self,
        work: Callable[[PooledConnection], _R],
        *,
        retries: int = 3,
        timeout: float | None = None,
    ) -> _R:
        """:meth:`Pool.run_transaction` on the current application's pool: ``work(conn)``
        in a transaction of its own, on a connection of its own (not ``db.connection``),
        committed, run again when the error proves nothing was committed. Raises
        :class:`~flask_dbpool.CommitOutcomeUnknown` when the connection was lost during the
        commit. Needs an app context; while the request holds ``db.connection`` it takes a
        second connection, so size the pool for it or call it before using ``db.connection``.
        """
        return self.pool.run_transaction(work, retries=retries, timeout=timeout)

    @staticmethod
    def endpoint_times(app: Flask) -> dict[str, EndpointTimesSnapshot]:
        """How long each endpoint of ``app`` waited for and held connections (histograms in
        seconds, by endpoint name; ``"<no request>"`` outside requests, ``"<unmatched>"`` for
        requests that matched no route)."""
        times: EndpointTimes = app.extensions[ENDPOINTS_KEY]
        return times.snapshot()


def _loading_for_dbpool_cli() -> bool:
    """Whether the ``flask`` command is loading the app to look up its ``dbpool`` group.

    The ``flask`` command (:class:`flask.cli.FlaskGroup`) loads the app inside
    ``FlaskGroup.get_command(ctx, name)`` to find an app command by name, and sets
    ``FLASK_RUN_FROM_CLI``. Anything else (a WSGI server importing the app, ``flask run``,
    ``flask shell``, other app commands) answers ``False``, as does a Flask whose
    ``get_command`` is not found on the stack: ``open_timeout`` then applies as usual.
    """
    if os.environ.get("FLASK_RUN_FROM_CLI") != "true":
        return False
    from flask.cli import FlaskGroup

    code = FlaskGroup.get_command.__code__
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return frame.f_locals.get("name") == dbpool_cli.name
        frame = frame.f_back
    return False


def describe_request() -> str | None:
    """``"GET /reset/<token>"`` inside a request, ``None`` elsewhere: recorded with each
    checkout when ``DBPOOL_LEAK_THRESHOLD`` is set, so leak reports name the request.

    The method and the matched route's rule, never the raw path: paths carry secrets (reset
    tokens, signed links) and personal data, and these strings reach logs, ``/data`` and
    ``flask dbpool status``. A request that matched no route gives ``"GET <unmatched>"``.
    """
    if not has_request_context():
        return None
    rule = request.url_rule
    return f"{request.method} {rule.rule if rule is not None else UNMATCHED}"


class _Checkout:
    """The app context's connection and what teardown needs to return it and time it."""

    __slots__ = ("checked_out", "conn", "endpoint", "pool", "started", "times")

    def __init__(
        self,
        conn: PooledConnection,
        pool: Pool,
        times: EndpointTimes,
        endpoint: str,
        started: float,
        checked_out: float,
    ) -> None:
        self.conn = conn
        self.pool = pool
        self.times = times
        self.endpoint = endpoint
        self.started = started
        self.checked_out = checked_out


def _return_connection(exc: BaseException | None) -> None:
    checkout: _Checkout | None = g.pop(_G_KEY, None)
    if checkout is None:
        return
    conn = checkout.conn
    if conn.returned:  # returned during the request (conn.close()): nothing held now
        checkout.times.record(checkout.endpoint, checkout.checked_out - checkout.started, None)
        return
    # Wait and hold recorded together: one shard lock per request.
    checked_out = checkout.checked_out
    checkout.times.record(
        checkout.endpoint, checked_out - checkout.started, perf_counter() - checked_out
    )
    # Not conn.__exit__: a ``with`` block commits, the end of a request rolls back what was
    # not committed.
    try:
        checkout.pool.release(conn, exc)
    except PoolError:
        if not conn.returned:  # not a racing return: a real error
            raise
