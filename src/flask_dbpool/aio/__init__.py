"""asyncio support: :class:`AsyncPool` and the handle it lends."""

from flask_dbpool.aio.pool import AsyncPool
from flask_dbpool.aio.proxy import AsyncPooledConnection

__all__ = ["AsyncPool", "AsyncPooledConnection"]
