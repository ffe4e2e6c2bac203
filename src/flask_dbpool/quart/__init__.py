"""``QuartDBPool``: the Quart extension (the asyncio member of the Flask family).

One :class:`~flask_dbpool.AsyncPool` per application, built from the app's ``DBPOOL_*``
config (the same keys as :class:`~flask_dbpool.DBPool`), opened in ``before_serving`` and
closed in ``after_serving``. ``await db.connection()`` lends each request one connection,
checked out on first use and returned at teardown (rolled back first if the request raised).
"""

from __future__ import annotations

from typing import Any

from quart import (
    Blueprint,
    Quart,
    Response,
    abort,
    current_app,
    g,
    has_request_context,
    jsonify,
    request,
)

from flask_dbpool.aio import AsyncPool, AsyncPooledConnection
from flask_dbpool.config import PoolConfig, suggest_key
from flask_dbpool.display import (
    CONFIG_PREFIX,
    DISPLAY_KEYS,
    asset,
    config_key,
    display_settings,
    request_allowed,
)
from flask_dbpool.errors import ConfigError, PoolError
from flask_dbpool.report import pool_report

__all__ = ["CONFIG_PREFIX", "EXTENSION_KEY", "QuartDBPool", "describe_request"]

#: ``app.extensions`` key of the app's :class:`~flask_dbpool.AsyncPool`.
EXTENSION_KEY = "dbpool"
_G_KEY = "_flask_dbpool_connection"
# DBPool's keys: the pool's options, and the display keys (metrics endpoint, dashboard).
_KEYS = PoolConfig.option_names() | {"url"} | DISPLAY_KEYS


class QuartDBPool:
    """Connection pooling for Quart applications.

    ``db = QuartDBPool(app)``, or ``db = QuartDBPool()`` then ``db.init_app(app)``. Config:
    ``DBPOOL_URL`` (required), every :class:`~flask_dbpool.config.PoolConfig` option as
    ``DBPOOL_<OPTION>`` (``DBPOOL_POOL_SIZE``, ``DBPOOL_TIMEOUT``, ``DBPOOL_PRE_PING`` …),
    ``DBPOOL_NAME`` (default: the app's name) and ``DBPOOL_METRICS_ENDPOINT`` (a path such as
    ``"/metrics"``: the pool's Prometheus metrics, with the ``prometheus`` extra),
    ``DBPOOL_DASHBOARD`` / ``_PATH`` / ``_TOKEN`` (the same live page as Flask's, served to
    loopback or with the token). An unknown or invalid key raises
    :class:`~flask_dbpool.ConfigError` naming it, at ``init_app``.
    """

    def __init__(self, app: Quart | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        """Build ``app``'s pool (no I/O yet), open it in ``before_serving``, close it in
        ``after_serving`` (waiting up to 5 s for borrowed connections), return request
        connections at teardown. Raises :class:`~flask_dbpool.ConfigError` for a missing
        ``DBPOOL_URL``, an unknown ``DBPOOL_*`` key or a bad value, or a second
        ``init_app`` on the same app."""
        if EXTENSION_KEY in app.extensions:
            raise ConfigError(f"flask-dbpool is already initialised on app {app.name!r}")
        settings: dict[str, Any] = app.config.get_namespace(CONFIG_PREFIX)
        for key in settings:
            if key not in _KEYS:
                hint = suggest_key(key, _KEYS, config_key)
                raise ConfigError(f"unknown config key {config_key(key)}{hint}")
        url = settings.pop("url", None)
        if not url:
            raise ConfigError(
                f"{CONFIG_PREFIX}URL is required: set app.config['{CONFIG_PREFIX}URL'] to a "
                "database URL such as 'postgresql://user@host/db'"
            )
        display = display_settings(settings)  # validated, named by key; taken out
        settings.setdefault("name", app.name)
        settings.setdefault("describe_caller", describe_request)
        PoolConfig.from_options(settings, label=config_key)  # errors name the DBPOOL_* key
        pool = AsyncPool(url, **settings)
        app.extensions[EXTENSION_KEY] = pool
        if display.metrics_endpoint is not None:
            _serve_metrics(app, pool, display.metrics_endpoint)
        if display.dashboard:
            _register_dashboard(app, pool, display.dashboard_path, display.dashboard_token)

        @app.before_serving
        async def open_pool() -> None:
            await pool.open()

        @app.after_serving
        async def close_pool() -> None:
            await pool.close(timeout=5.0)

        app.teardown_appcontext(_return_connection)

    @staticmethod
    def get_pool(app: Quart) -> AsyncPool:
        """``app``'s pool. Raises ``RuntimeError`` if ``init_app(app)`` was not called."""
        pool = app.extensions.get(EXTENSION_KEY)
        if not isinstance(pool, AsyncPool):
            raise RuntimeError(f"QuartDBPool.init_app() was not called on app {app.name!r}")
        return pool

    @property
    def pool(self) -> AsyncPool:
        """The current application's :class:`~flask_dbpool.AsyncPool` (needs an app
        context)."""
        pool = current_app.extensions.get(EXTENSION_KEY)
        if not isinstance(pool, AsyncPool):
            raise RuntimeError("QuartDBPool.init_app() was not called on the current app")
        return pool

    async def connection(self) -> AsyncPooledConnection:
        """The current request's connection, checked out on first use (waits and raises
        like :meth:`AsyncPool.acquire`). The same one for the whole request; returned at
        teardown, rolled back first if the request raised or left a transaction open.
        ``async with await db.connection() as conn:`` commits when the block ends normally
        (rolls back if it raised) and keeps the connection for the rest of the request."""
        conn: AsyncPooledConnection | None = g.get(_G_KEY)
        if conn is not None and not conn.returned:
            return conn
        pool = self.pool
        conn = await pool.acquire()
        pool.pin(conn)
        if has_request_context():
            rule = request.url_rule
            pool.label_checkout(conn, rule.endpoint if rule is not None else "<unmatched>")
        setattr(g, _G_KEY, conn)
        return conn


def describe_request() -> str | None:
    """``"GET /orders/<int:id>"`` inside a request, ``None`` elsewhere (the method and the
    route's rule, never the raw path, which may carry secrets): recorded with each checkout
    when ``DBPOOL_LEAK_THRESHOLD`` is set."""
    if not has_request_context():
        return None
    rule = request.url_rule
    return f"{request.method} {rule.rule if rule is not None else '<unmatched>'}"


async def _return_connection(exc: BaseException | None) -> None:
    conn: AsyncPooledConnection | None = g.pop(_G_KEY, None)
    if conn is None or conn.returned:
        return
    pool = current_app.extensions[EXTENSION_KEY]
    try:
        await pool.release(conn, exc)
    except PoolError:
        if not conn.returned:  # not a racing return: a real error
            raise


def _serve_metrics(app: Quart, pool: AsyncPool, path: str) -> None:
    """Serve ``pool``'s metrics in Prometheus text format at ``path``."""
    from flask_dbpool.metrics.prometheus import PoolCollector, prometheus_core

    prometheus_core()  # raises ConfigError naming the extra if missing
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    collector: Any = PoolCollector(pool)
    registry.register(collector)

    async def dbpool_metrics() -> tuple[bytes, int, dict[str, str]]:
        return generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    app.add_url_rule(path, "dbpool_metrics", dbpool_metrics)


def _register_dashboard(app: Quart, pool: AsyncPool, path: str, token: str | None) -> None:
    """The dashboard of :mod:`flask_dbpool.flask.dashboard` (its page, script, guard and
    ``/data`` JSON), served by Quart for ``pool``."""
    blueprint = Blueprint("dbpool_dashboard", __name__, url_prefix=path.rstrip("/"))

    @blueprint.before_request
    async def guard() -> None:
        if request.endpoint == f"{blueprint.name}.static_asset":
            return  # the page's script and stylesheet hold no data
        query_token = request.args.get("token", "")
        authorization = request.headers.get("Authorization", "")
        headers = list(request.headers.items())
        if not request_allowed(request.remote_addr, headers, query_token, authorization, token):
            abort(403, "the flask-dbpool dashboard is served to loopback or with its token")

    def served(name: str) -> Response:
        found = asset(name)
        if found is None:
            abort(404)
        body, content_type = found
        return Response(body, content_type=content_type, headers={"Cache-Control": "no-cache"})

    @blueprint.get("/")
    async def page() -> Response:
        response = served("dashboard.html")
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @blueprint.get("/data")
    async def data() -> Response:
        wanted = request.args.get("pool")
        if wanted is not None and wanted != pool.name:
            response = jsonify(error=f"no pool named {wanted!r}", pools=[pool.name])
            response.status_code = 404
            return response
        report = pool_report(pool)
        report["pools"] = [pool.name]
        response = jsonify(report)
        response.headers["Cache-Control"] = "no-store"
        return response

    @blueprint.get("/static/<name>")
    async def static_asset(name: str) -> Response:
        return served(name)

    app.register_blueprint(blueprint)
