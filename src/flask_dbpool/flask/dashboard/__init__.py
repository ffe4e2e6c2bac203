"""The live dashboard: one page, no CDN, refreshed from a JSON endpoint.

Off by default. ``DBPOOL_DASHBOARD = True`` mounts it at ``DBPOOL_DASHBOARD_PATH`` (default
``/_dbpool``). A request is served only if it comes straight from loopback (not through a
proxy: a request carrying any header a proxy adds, such as ``Via``, ``Forwarded``,
``X-Forwarded-*`` or ``X-Real-IP``, see :func:`is_proxied`, is not considered local) or
carries ``DBPOOL_DASHBOARD_TOKEN`` (``Authorization: Bearer <token>``, or ``?token=`` to open
the page: its script then moves the token into that header and out of the address bar). Its
static script and stylesheet are served to anyone (they hold no data).
Passwords never appear: the pool's target is the redacted URL.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from flask import Blueprint, Flask, Response, abort, jsonify, request

from flask_dbpool.display import asset, request_allowed
from flask_dbpool.drivers.base import ServerLimits
from flask_dbpool.flask.state import (
    EXTENSION_KEY,
    MonitoredPool,
    endpoint_histograms,
    monitored_pools,
)
from flask_dbpool.fleet import combine, publisher, server_view
from flask_dbpool.report import pool_report

__all__ = ["register_dashboard"]


def _allowed(token: str | None) -> bool:
    return request_allowed(
        request.remote_addr,
        request.headers.items(),
        request.args.get("token", ""),
        request.headers.get("Authorization", ""),
        token,
    )


def _asset(name: str) -> Response:
    found = asset(name)
    if found is None:
        abort(404)
    body, content_type = found
    response = Response(body, content_type=content_type)
    response.headers["Cache-Control"] = "no-cache"
    return response


def register_dashboard(app: Flask, path: str, token: str | None) -> None:
    """Mount the dashboard of ``app``'s pools (:func:`~flask_dbpool.flask.state.monitored_pools`)
    on ``app`` at ``path``. ``GET <path>/data`` is the first pool's report, ``?pool=<name>``
    another's; its ``pools`` key lists the names (a 404 names them for an unknown one)."""
    blueprint = Blueprint("dbpool_dashboard", __name__, url_prefix=path.rstrip("/"))

    def report_of(pool: MonitoredPool) -> dict[str, Any]:
        # Per-endpoint times are those of the DBPool's requests: its pool's only.
        own = app.extensions.get(EXTENSION_KEY) is pool
        return pool_report(pool, endpoint_histograms(app) if own else None)

    limits: dict[str, tuple[float, ServerLimits | None]] = {}
    reading: set[str] = set()

    def limits_of(pool: MonitoredPool) -> ServerLimits | None:
        """The database's connection limits, as last read (``None`` until then): read once
        per process, in a thread of its own, on a connection of its own (nothing counted in
        the pool's stats, nothing waits for one of its connections)."""
        known = limits.get(pool.name)
        due = known is None or (known[1] is None and time.monotonic() >= known[0])
        if due and pool.name not in reading:
            reading.add(pool.name)
            threading.Thread(
                target=read_limits, args=(pool,), name="flask-dbpool limits", daemon=True
            ).start()
        return None if known is None else known[1]

    def read_limits(pool: MonitoredPool) -> None:
        found: ServerLimits | None = None
        try:
            # A Pool reads them on a connection of its own (nothing counted, nothing waits);
            # other pools (SQLAlchemy engines') are not shown against the limit.
            read = getattr(pool, "server_limits", None)
            found = read() if read is not None else None
        except Exception:
            found = None
        finally:
            limits[pool.name] = (time.monotonic() + 60.0, found)  # again in a minute if not
            reading.discard(pool.name)

    # Under a pre-forking server, every worker publishes its pools' reports (once a second,
    # from a thread of its own) for whichever worker answers /data.
    def publish() -> dict[str, dict[str, Any]]:
        reports = {}
        for pool in monitored_pools(app):
            limits_of(pool)  # starts the one read early, off the request path
            reports[pool.name] = report_of(pool)
        return reports

    fleet = publisher(publish)

    @blueprint.before_request
    def guard() -> None:
        # The page's script and stylesheet hold no data, and a browser fetches them without
        # the token that opened the page: serve them to anyone.
        if request.endpoint == f"{blueprint.name}.asset":
            return
        if not _allowed(token):
            abort(403, "the flask-dbpool dashboard is served to loopback or with its token")

    @blueprint.get("/")
    def page() -> Response:
        response = _asset("dashboard.html")
        # Opened as ?token=…: the browser must not pass that URL on as the Referer of the
        # page's own asset requests (access logs record it), nor to any link followed.
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @blueprint.get("/data")
    def data() -> Response:
        pools = monitored_pools(app)
        wanted = request.args.get("pool")
        chosen = [pool for pool in pools if wanted is None or pool.name == wanted][:1]
        if not chosen:
            response = jsonify(
                error=f"no pool named {wanted!r}" if pools else "no pool on this app",
                pools=[pool.name for pool in pools],
            )
            response.status_code = 404
            return response
        (pool,) = chosen
        # The whole server: this worker's report, live, and the others' latest ones.
        report = combine([(os.getpid(), report_of(pool)), *fleet.others(pool.name)])
        report["pools"] = [pool.name for pool in pools]
        server = limits_of(pool)
        if server is not None:
            report["server"] = server_view(server, report)
        response = jsonify(report)
        response.headers["Cache-Control"] = "no-store"
        return response

    @blueprint.get("/static/<name>")
    def asset(name: str) -> Response:
        return _asset(name)

    app.register_blueprint(blueprint)
