"""The driver interface of :class:`~flask_dbpool.AsyncPool`: each async driver extends the
sync driver of the same database (see :mod:`flask_dbpool.drivers.aio`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from flask_dbpool.drivers.base import Driver
from flask_dbpool.errors import ConfigError
from flask_dbpool.url import DatabaseURL

__all__ = ["AsyncConnectFn", "AsyncDriver"]

AsyncConnectFn = Callable[[], Awaitable[Any]]


class AsyncDriver(Driver):
    """What the asyncio pool needs of a driver beyond the sync rules (see the module
    docstring). Timeouts are the caller's: it wraps these calls in ``asyncio.timeout``."""

    @classmethod
    def async_connect_factory(cls, url: DatabaseURL) -> AsyncConnectFn:
        """A zero-argument coroutine function opening a connection to ``url``. Raises
        :class:`~flask_dbpool.ConfigError` for options the driver refuses."""
        raise ConfigError(f"no asyncio driver for {url.redacted()}")

    @staticmethod
    async def arollback(raw: Any) -> None:
        """Roll back the open transaction."""
        await raw.rollback()

    @staticmethod
    async def acommit(raw: Any) -> None:
        """Commit the open transaction."""
        await raw.commit()

    @staticmethod
    async def aping(raw: Any) -> None:
        """One round trip; an idle connection stays idle. Raises the driver's error."""
        raise NotImplementedError

    @staticmethod
    async def aclose(raw: Any) -> None:
        """Close the connection."""
        await raw.close()

    @staticmethod
    async def areset_session(raw: Any) -> None:
        """Reset all session state of an idle connection (``reset_on_return="discard"``)."""
        raise NotImplementedError

    @classmethod
    async def arestore_settings(cls, raw: Any, saved: Any) -> None:
        """Put back what :meth:`save_settings` saw (after the rollback)."""

    @classmethod
    async def acancel(cls, raw: Any, timeout: float) -> bool:
        """Ask the server to cancel what runs on ``raw``; ``False`` if the driver cannot."""
        return False
