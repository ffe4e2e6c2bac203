"""What an app shows about its pools, free of any web framework: the display keys of the
``DBPOOL_*`` config and the dashboard's access rule and static files. Shared by the Flask
extension (:mod:`flask_dbpool.flask`) and the Quart one (:mod:`flask_dbpool.quart`).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from flask_dbpool.config import PoolConfig, suggest_key
from flask_dbpool.errors import ConfigError

__all__ = [
    "CONFIG_PREFIX",
    "DISPLAY_KEYS",
    "LOOPBACK",
    "PROXY_HEADERS",
    "PROXY_HEADER_PREFIXES",
    "Display",
    "asset",
    "check_keys",
    "config_key",
    "display_settings",
    "is_proxied",
    "request_allowed",
]

#: Prefix of the extensions' config keys (``DBPOOL_URL`` …).
CONFIG_PREFIX = "DBPOOL_"
_ASSETS = files("flask_dbpool") / "static"
_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}

#: The ``DBPOOL_*`` keys (lower case, without the prefix) that say what an app shows, as
#: opposed to how its pool behaves.
DISPLAY_KEYS = frozenset({"metrics_endpoint", "dashboard", "dashboard_path", "dashboard_token"})


def config_key(option: str) -> str:
    """``DBPOOL_<OPTION>``: how the app's config spells ``option``."""
    return CONFIG_PREFIX + option.upper()


@dataclass(frozen=True)
class Display:
    """The validated display keys of an app's config."""

    metrics_endpoint: str | None = None
    dashboard: bool = False
    dashboard_path: str = "/_dbpool"
    dashboard_token: str | None = None


def check_keys(settings: dict[str, Any], extra: frozenset[str] = frozenset()) -> None:
    """Raise :class:`ConfigError` for a ``DBPOOL_*`` key that is neither a pool option, a
    display key nor in ``extra``, with a did-you-mean suggestion."""
    known = PoolConfig.option_names() | DISPLAY_KEYS | extra
    for key in settings:
        if key not in known:
            raise ConfigError(
                f"unknown config key {config_key(key)}" + suggest_key(key, known, config_key)
            )


def display_settings(settings: dict[str, Any]) -> Display:
    """Take the display keys out of ``settings`` (``app.config.get_namespace("DBPOOL_")``)
    and validate them; raises :class:`ConfigError` naming the key."""
    metrics_endpoint = settings.pop("metrics_endpoint", None)
    if metrics_endpoint is not None and (
        not isinstance(metrics_endpoint, str) or not metrics_endpoint.startswith("/")
    ):
        raise ConfigError(
            f"{CONFIG_PREFIX}METRICS_ENDPOINT must be a URL path starting with '/' (such as "
            f"'/metrics') or None, got {metrics_endpoint!r}"
        )
    dashboard = settings.pop("dashboard", False)
    dashboard_path = settings.pop("dashboard_path", "/_dbpool")
    dashboard_token = settings.pop("dashboard_token", None)
    if not isinstance(dashboard, bool):
        raise ConfigError(f"{CONFIG_PREFIX}DASHBOARD must be true or false, got {dashboard!r}")
    if not isinstance(dashboard_path, str) or not dashboard_path.startswith("/"):
        raise ConfigError(
            f"{CONFIG_PREFIX}DASHBOARD_PATH must be a URL path starting with '/', "
            f"got {dashboard_path!r}"
        )
    if dashboard_token is not None and (
        not isinstance(dashboard_token, str) or len(dashboard_token) < 16
    ):
        raise ConfigError(
            f"{CONFIG_PREFIX}DASHBOARD_TOKEN must be None or a string of at least 16 characters"
        )
    return Display(metrics_endpoint, dashboard, dashboard_path, dashboard_token)


LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


#: Headers a reverse proxy or CDN adds: a request carrying any of them is not treated as
#: local. Generous on purpose: a same-host proxy that adds only one of them (``Via``,
#: ``X-Forwarded-Proto``) must not make every request look like loopback.
PROXY_HEADERS = (
    "Forwarded",
    "Via",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Server",
    "X-Forwarded-Ssl",
    "X-Forwarded-Scheme",
    "X-Original-Forwarded-For",
    "X-Original-Host",
    "X-Original-URL",
    "X-Original-URI",
    "X-Real-IP",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "X-ProxyUser-Ip",
    "X-Envoy-External-Address",
    "X-Azure-ClientIP",
    "X-Appengine-User-IP",
    "X-Url-Scheme",
    "X-Scheme",
    "Front-End-Https",
    "Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "Fastly-Client-IP",
)
#: Header name prefixes (lower case) that also mark a proxied request: the ``X-Forwarded-*``
#: and ``X-Original-*`` families have more members than any list.
PROXY_HEADER_PREFIXES = ("x-forwarded-", "x-original-", "x-real-")
_PROXY_NAMES = frozenset(name.lower() for name in PROXY_HEADERS)


def is_proxied(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether any of ``headers`` (name, value pairs) is one a proxy adds (any case)."""
    for name, _ in headers:
        lower = name.lower()
        if lower in _PROXY_NAMES or lower.startswith(PROXY_HEADER_PREFIXES):
            return True
    return False


def request_allowed(
    remote_addr: str | None,
    headers: Iterable[tuple[str, str]],
    query_token: str,
    authorization: str,
    token: str | None,
) -> bool:
    """Whether a dashboard request may be served: straight from loopback (no proxy header),
    or with ``token`` (``Authorization: Bearer <token>``, else ``?token=``), compared in
    constant time. Shared with the Quart extension."""
    if remote_addr in LOOPBACK and not is_proxied(headers):
        return True
    if not token:
        return False
    given = query_token
    if authorization.startswith("Bearer "):
        given = authorization[len("Bearer ") :]
    return hmac.compare_digest(given.encode(), token.encode())


def asset(name: str) -> tuple[bytes, str] | None:
    """The dashboard's static file ``name`` and its content type; ``None`` if there is no
    such file. Shared with the Quart extension."""
    path = _ASSETS / name
    if not path.is_file():
        return None
    suffix = "." + name.rsplit(".", 1)[-1]
    return path.read_bytes(), _CONTENT_TYPES.get(suffix, "text/plain")
