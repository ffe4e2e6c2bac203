"""Driver registry: from a URL scheme or a connection object to the :class:`Driver` for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask_dbpool.drivers.base import (
    BROKEN,
    DEAD,
    ERROR_KINDS,
    FAILED,
    IDLE,
    IN_TRANSACTION,
    RETRYABLE,
    SERVER_CHANGED,
    ConnectFn,
    Driver,
)
from flask_dbpool.drivers.mysql import MySQLdbDriver, PyMySQLDriver
from flask_dbpool.drivers.postgres import Psycopg2Driver, PsycopgDriver
from flask_dbpool.drivers.sqlite import SQLiteDriver
from flask_dbpool.errors import ConfigError
from flask_dbpool.url import parse_url, redact

__all__ = [
    "BROKEN",
    "DEAD",
    "ERROR_KINDS",
    "FAILED",
    "IDLE",
    "IN_TRANSACTION",
    "RETRYABLE",
    "SERVER_CHANGED",
    "Connector",
    "Driver",
    "connection_rejected",
    "driver_for_connection",
    "driver_for_error",
    "resolve_target",
    "supported_schemes",
]

# (dialect, driver-in-scheme) -> candidate drivers, most preferred first.
_BY_SCHEME: dict[tuple[str, str | None], tuple[type[Driver], ...]] = {
    ("sqlite", None): (SQLiteDriver,),
    ("sqlite", "pysqlite"): (SQLiteDriver,),
    ("postgresql", None): (PsycopgDriver, Psycopg2Driver),
    ("postgresql", "psycopg"): (PsycopgDriver,),
    ("postgresql", "psycopg2"): (Psycopg2Driver,),
    ("mysql", None): (PyMySQLDriver, MySQLdbDriver),
    ("mysql", "pymysql"): (PyMySQLDriver,),
    ("mysql", "mysqldb"): (MySQLdbDriver,),
}

# Top-level module of a connection's class -> driver, for callable targets.
_BY_MODULE: dict[str, type[Driver]] = {
    "sqlite3": SQLiteDriver,
    "psycopg": PsycopgDriver,
    "psycopg2": Psycopg2Driver,
    "pymysql": PyMySQLDriver,
    "MySQLdb": MySQLdbDriver,
}


def supported_schemes() -> list[str]:
    """Every URL scheme the pool accepts."""
    schemes = {d if not drv else f"{d}+{drv}" for d, drv in _BY_SCHEME}
    schemes.update({"postgres", "mariadb", "mariadb+pymysql", "mariadb+mysqldb"})
    return sorted(schemes)


@dataclass(frozen=True)
class Connector:
    """How a pool opens connections: the connect callable and what to call it in messages."""

    connect: ConnectFn
    """Zero-argument callable returning a new DB-API connection."""
    description: str
    """A redacted URL or the callable's name: safe to show anywhere."""
    driver: type[Driver] | None
    """The driver, or ``None`` to detect it from each connection (callable targets)."""


def resolve_target(target: str | Callable[[], Any]) -> Connector:
    """Turn a pool target (URL or zero-argument callable) into a :class:`Connector`.

    Raises :class:`ConfigError` for an unknown scheme (listing the supported ones), a driver
    that is not installed (naming the extra to install) or an invalid URL option.
    """
    if isinstance(target, str):
        url = parse_url(target)
        candidates = _BY_SCHEME.get((url.dialect, url.driver))
        if candidates is None:
            raise ConfigError(
                f"unsupported database URL scheme {url.scheme!r} in {redact(target)!r}; "
                f"supported schemes: {', '.join(supported_schemes())}"
            )
        driver = next((d for d in candidates if d.is_installed()), candidates[0])
        return Connector(driver.connect_factory(url), url.redacted(), driver)
    if callable(target):
        name = getattr(target, "__qualname__", None) or type(target).__name__
        return Connector(target, f"<{name}>", None)
    raise ConfigError(
        "pool target must be a database URL string or a zero-argument callable returning a "
        f"DB-API connection, got {type(target).__name__}"
    )


def driver_for_connection(raw: Any) -> type[Driver]:
    """The driver matching ``raw``'s class, or the generic :class:`Driver`."""
    return _BY_MODULE.get(type(raw).__module__.partition(".")[0], Driver)


def driver_for_error(exc: BaseException) -> type[Driver]:
    """The driver whose module raised ``exc``, or the generic :class:`Driver`."""
    return _BY_MODULE.get(type(exc).__module__.partition(".")[0], Driver)


def connection_rejected(exc: BaseException) -> bool:
    """Whether ``exc``, raised while opening a connection, is a refusal for good (wrong
    credentials, unknown database or role, invalid option) rather than an outage."""
    return driver_for_error(exc).is_rejection(exc)
