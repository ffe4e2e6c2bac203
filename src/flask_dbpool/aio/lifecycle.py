"""The I/O half of :class:`~flask_dbpool.AsyncPool`: one asyncio connection's life.

The decisions are :class:`~flask_dbpool.lifecycle.Lifecycle`'s own (settings checks, what a
return needs, verdicts, error classification); this subclass awaits the I/O they call for.
Hooks (``on_connect``, ``on_checkout``, ``on_checkin``, a reset callable) may be plain or
``async`` functions.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from flask_dbpool import messages
from flask_dbpool.aio.proxy import AsyncPooledConnection
from flask_dbpool.drivers import BROKEN, FAILED, IDLE
from flask_dbpool.drivers.aio import async_driver_for_connection
from flask_dbpool.drivers.aio_base import AsyncDriver
from flask_dbpool.entry import FOREVER, Entry
from flask_dbpool.errors import ConfigError, PingTimeout, PoolError
from flask_dbpool.lifecycle import Discard, Lifecycle
from flask_dbpool.policy import lifetime_jitter

__all__ = ["AsyncLifecycle", "run_hook"]

logger = logging.getLogger("flask_dbpool.pool")


async def run_hook(hook: Callable[[Any], object], raw: Any) -> None:
    """Call ``hook(raw)``, awaiting what it returns if that is awaitable."""
    result = hook(raw)
    if inspect.isawaitable(result):
        await result


class AsyncLifecycle(Lifecycle):
    """Opens, checks, resets and closes the asyncio connections of one pool."""

    __slots__ = ()

    def driver_of(self, raw: Any) -> type[AsyncDriver]:
        """The async driver for ``raw`` (the URL's, or detected for a callable target)."""
        driver = self.connector.driver
        if driver is not None:
            assert issubclass(driver, AsyncDriver)
            return driver
        return async_driver_for_connection(raw)

    def is_rejection(self, error: BaseException) -> bool:
        """As :meth:`Lifecycle.is_rejection`; a :class:`~flask_dbpool.ConfigError` (a
        callable target that returned no awaitable) is one too: retrying cannot help."""
        return isinstance(error, ConfigError) or super().is_rejection(error)

    async def aconnect(self) -> Any:
        """A new driver connection; raises the driver's error."""
        return await self.connector.connect()

    async def aprepare(self, raw: Any, clock: Callable[[], float]) -> Entry:
        """Run ``on_connect`` on a new connection and make its entry. Raises what
        ``on_connect`` raised (``raw`` is closed then)."""
        try:
            driver = self.driver_of(raw)
            if self.config.pgbouncer == "transaction":
                driver.disable_server_prepares(raw)
            if self.config.on_connect is not None:
                await self._on_connect(raw, driver)
            now = clock()
            lifetime = self.config.max_lifetime
            expires = FOREVER if lifetime is None else now + lifetime * lifetime_jitter()
            entry = Entry(self.owner, raw, driver, now, expires, fast_returns=self.fast_returns)
            entry.handle_class = AsyncPooledConnection
            entry.saved_settings = driver.save_settings(raw)
        except BaseException:
            await self.aclose(None, raw=raw, driver=self.connector.driver or AsyncDriver)
            raise
        return entry

    async def _on_connect(self, raw: Any, driver: type[AsyncDriver]) -> None:
        """``on_connect``, then commit what it left open (so that its settings stick)."""
        assert self.config.on_connect is not None
        await run_hook(self.config.on_connect, raw)
        state = driver.transaction_state(raw)
        if state in (BROKEN, FAILED):
            raise PoolError(messages.on_connect_left(self.config.name, broken=state == BROKEN))
        if state != IDLE:
            await driver.acommit(raw)

    @staticmethod
    async def aping(entry: Entry, timeout: float) -> None:
        """A round trip on ``entry``'s connection within ``timeout`` seconds; raises the
        driver's error or :class:`~flask_dbpool.PingTimeout` (the connection is then
        unusable: the ping was cancelled mid-flight)."""
        driver = entry.driver
        assert issubclass(driver, AsyncDriver)
        try:
            await asyncio.wait_for(driver.aping(entry.raw), timeout)
        except asyncio.TimeoutError:
            raise PingTimeout(f"no answer to a ping within {timeout:.3f} s") from None

    async def areset(self, entry: Entry, exc: BaseException | None) -> Discard | None:
        """:meth:`Lifecycle.reset` for an asyncio connection: the same decisions
        (:meth:`~Lifecycle.plan_reset`), the I/O awaited. ``None``: keep it."""
        driver = entry.driver
        assert issubclass(driver, AsyncDriver)
        raw = entry.raw
        try:
            if self.config.on_checkin is not None:
                await run_hook(self.config.on_checkin, raw)
            plan = self.plan_reset(entry, exc)
            if isinstance(plan, Discard):
                return plan
            if plan.rollback:
                await driver.arollback(raw)
            if plan.restore_settings:
                await driver.arestore_settings(raw, entry.saved_settings)
                entry.settings_changed = False
            reset = self.session_reset
            if reset == "discard":
                await driver.areset_session(raw)
                if self.config.on_connect is not None:
                    await self._on_connect(raw, driver)  # the reset wiped what it had set
            elif callable(reset):
                await run_hook(reset, raw)
                if driver.transaction_state(raw) != IDLE:
                    await driver.acommit(raw)
        except BaseException as error:
            return self.reset_failed(entry, error)
        return None

    async def aclose(
        self, entry: Entry | None, *, raw: Any = None, driver: type[Any] | None = None
    ) -> None:
        """Close ``entry``'s connection (or ``raw`` with ``driver``); errors are logged at
        DEBUG (a connection being closed is often broken already)."""
        if entry is not None:
            raw, driver = entry.raw, entry.driver
        try:
            if driver is not None and issubclass(driver, AsyncDriver):
                await driver.aclose(raw)
            else:
                closing = raw.close()
                if inspect.isawaitable(closing):
                    await closing
        except Exception as error:
            logger.debug("pool %r: error closing a connection: %r", self.config.name, error)
