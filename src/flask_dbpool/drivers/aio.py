"""The asyncio drivers' registry: from a URL scheme or a connection object to the
:class:`~flask_dbpool.drivers.aio_base.AsyncDriver` for it.

Each async driver extends the sync driver of the same database (in the same module), so the
rules that read no I/O are the same ones: the transaction state read on every return, error
classification, rejected logins, which methods change settings and how they are saved. What
does I/O is a coroutine, under an ``a`` prefix (``arollback``, ``aping`` …); the sync
methods of the base classes are never called on an async connection.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from flask_dbpool.drivers import Connector
from flask_dbpool.drivers.aio_base import AsyncConnectFn, AsyncDriver
from flask_dbpool.drivers.mysql import AiomysqlDriver
from flask_dbpool.drivers.postgres import AsyncpgDriver, AsyncPsycopgDriver
from flask_dbpool.drivers.sqlite import AiosqliteDriver
from flask_dbpool.errors import ConfigError
from flask_dbpool.url import parse_url, redact

__all__ = [
    "AiomysqlDriver",
    "AiosqliteDriver",
    "AsyncDriver",
    "AsyncPsycopgDriver",
    "AsyncpgDriver",
    "async_driver_for_connection",
    "resolve_async_target",
]

# (dialect, driver-in-scheme) -> the async driver.
_BY_SCHEME: dict[tuple[str, str | None], type[AsyncDriver]] = {
    ("postgresql", None): AsyncPsycopgDriver,
    ("postgresql", "psycopg"): AsyncPsycopgDriver,
    ("postgresql", "asyncpg"): AsyncpgDriver,
    ("sqlite", None): AiosqliteDriver,
    ("sqlite", "aiosqlite"): AiosqliteDriver,
    ("mysql", None): AiomysqlDriver,
    ("mysql", "aiomysql"): AiomysqlDriver,
}
# Top-level module of a connection's class -> driver, for callable targets.
_BY_MODULE: dict[str, type[AsyncDriver]] = {
    "psycopg": AsyncPsycopgDriver,
    "asyncpg": AsyncpgDriver,
    "aiosqlite": AiosqliteDriver,
    "aiomysql": AiomysqlDriver,
}


def resolve_async_target(target: str | Callable[[], Awaitable[Any]]) -> Connector:
    """Turn an :class:`~flask_dbpool.AsyncPool` target (URL, or a zero-argument callable
    returning an awaitable connection) into a :class:`~flask_dbpool.drivers.Connector` whose
    ``connect`` is a coroutine function. Raises :class:`~flask_dbpool.ConfigError` for an
    unsupported scheme, a driver that is not installed (naming the package) or a bad
    option."""
    if isinstance(target, str):
        url = parse_url(target)
        driver = _BY_SCHEME.get((url.dialect, url.driver))
        if driver is None:
            schemes = sorted(
                {d if not drv else f"{d}+{drv}" for d, drv in _BY_SCHEME} | {"postgres", "mariadb"}
            )
            raise ConfigError(
                f"unsupported database URL scheme {url.scheme!r} for AsyncPool in "
                f"{redact(target)!r}; supported schemes: {', '.join(schemes)}"
            )
        if not driver.is_installed():
            raise ConfigError(
                f"{url.redacted()}: AsyncPool needs the {driver.module!r} package "
                f"(pip install {driver.module})"
            )
        return Connector(driver.async_connect_factory(url), url.redacted(), driver)
    if callable(target):
        name = getattr(target, "__qualname__", None) or type(target).__name__
        return Connector(_awaiting(target), f"<{name}>", None)
    raise ConfigError(
        "AsyncPool target must be a database URL string or a zero-argument callable "
        f"returning an awaitable connection, got {type(target).__name__}"
    )


def _awaiting(target: Callable[[], Any]) -> AsyncConnectFn:
    async def aconnect() -> Any:
        connection = target()
        if not inspect.isawaitable(connection):
            close = getattr(connection, "close", None)
            if callable(close):
                close()  # a sync connection opened by mistake: not left to the GC
            raise ConfigError(
                "AsyncPool's callable target must return an awaitable connection (an async "
                f"function), got {type(connection).__name__}"
            )
        return await connection

    return aconnect


def async_driver_for_connection(raw: Any) -> type[AsyncDriver]:
    """The async driver matching ``raw``'s class. Raises
    :class:`~flask_dbpool.ConfigError` for a connection of no known async driver."""
    driver = _BY_MODULE.get(type(raw).__module__.partition(".")[0])
    if driver is None:
        raise ConfigError(
            f"AsyncPool cannot use a {type(raw).__module__}.{type(raw).__qualname__}: "
            "supported are psycopg's AsyncConnection, asyncpg, aiosqlite and aiomysql connections"
        )
    return driver
