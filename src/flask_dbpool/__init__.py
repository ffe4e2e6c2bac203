"""flask-dbpool: a production database connection pool for Flask.

The core (:class:`Pool`) never imports Flask; :class:`DBPool`, the Flask extension, is
resolved lazily so that ``import flask_dbpool`` stays light for non-Flask users, as is
:class:`AsyncPool` (asyncio).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask_dbpool.config import PoolConfig
from flask_dbpool.errors import (
    CommitOutcomeUnknown,
    ConfigError,
    ConnectionReturned,
    PingTimeout,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyWaiters,
)
from flask_dbpool.pool import Pool
from flask_dbpool.proxy import PooledConnection
from flask_dbpool.stats import PoolStats

if TYPE_CHECKING:
    from flask_dbpool.aio import AsyncPool, AsyncPooledConnection
    from flask_dbpool.flask import DBPool

__all__ = [
    "AsyncPool",
    "AsyncPooledConnection",
    "CommitOutcomeUnknown",
    "ConfigError",
    "ConnectionReturned",
    "DBPool",
    "PingTimeout",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolStats",
    "PoolTimeout",
    "PooledConnection",
    "TooManyWaiters",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "DBPool":
        from flask_dbpool.flask import DBPool

        return DBPool
    if name in ("AsyncPool", "AsyncPooledConnection"):
        from flask_dbpool import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'flask_dbpool' has no attribute {name!r}")
