"""One connection's life, the I/O half of the pool: open (with ``on_connect``), check,
reset on return (with the verdict: keep or discard, and why), close.

It holds no pool state: the pool's :class:`~flask_dbpool.state.PoolState` decides which
connection to open, check or close, and :class:`Lifecycle` does it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from flask_dbpool import messages
from flask_dbpool.config import PoolConfig
from flask_dbpool.drivers import (
    BROKEN,
    DEAD,
    ERROR_KINDS,
    FAILED,
    IDLE,
    IN_TRANSACTION,
    SERVER_CHANGED,
    Connector,
    connection_rejected,
    driver_for_connection,
)
from flask_dbpool.drivers.base import ServerLimits
from flask_dbpool.entry import FOREVER, Entry, Owner
from flask_dbpool.errors import ConfigError, one_line
from flask_dbpool.hooks import reset_session, run_on_connect
from flask_dbpool.policy import lifetime_jitter
from flask_dbpool.proxy import handle_class_for

__all__ = ["Discard", "Lifecycle", "ResetSteps"]

logger = logging.getLogger("flask_dbpool.pool")


#: Why a connection marked to retire is closed on its return, by close reason.
_RETIRED_BECAUSE = {
    "lifetime": "it reached max_lifetime",
    "drained": "the pool was drained (drain(), or the server changed) while it was lent",
}


class Discard(NamedTuple):
    """The verdict on a connection that must not be lent again."""

    why: str
    """For the log: ``discarding a connection because <why>``."""
    reason: str
    """Its key in ``stats().closed_by_reason``."""
    disconnect: bool = False
    """It was found dead: others opened before now may be dead too."""
    quiet: bool = False
    """Routine (logged at DEBUG)."""
    interrupt: BaseException | None = None
    """A ``BaseException`` (``KeyboardInterrupt``, gevent's ``Timeout``) that cut the reset
    short: re-raise it once the connection is discarded."""
    drain: bool = False
    """The server is no longer the one connected to: retire every connection."""


class ResetSteps(NamedTuple):
    """What a returned connection needs before it is kept (see :meth:`Lifecycle.plan_reset`);
    the session reset, if configured, follows them."""

    rollback: bool
    restore_settings: bool


class Lifecycle:
    """Opens, checks, resets and closes the connections of one pool (see the module
    docstring). ``owner`` is the pool the entries it makes belong to."""

    __slots__ = (
        "config",
        "connector",
        "fast_returns",
        "owner",
        "rollback_on_return",
        "session_reset",
    )

    def __init__(self, connector: Connector, config: PoolConfig, owner: Owner) -> None:
        self.connector = connector
        self.config = config
        self.owner = owner
        reset = config.reset_on_return
        self.rollback_on_return = reset is not False
        # A session reset on every return ("discard" or a callable) runs on the slow path.
        self.session_reset: str | Callable[[Any], object] | None = (
            None if isinstance(reset, bool) else reset
        )
        self.fast_returns = self.session_reset is None and config.on_checkin is None

    def check_settings(self) -> None:
        """Refuse, or warn about, settings this target's driver cannot honour. Raises
        :class:`~flask_dbpool.ConfigError`."""
        config, driver = self.config, self.connector.driver
        if (
            config.reset_on_return == "discard"
            and driver is not None
            and not driver.supports_session_reset
        ):
            raise ConfigError(messages.session_reset_unsupported(driver.name))
        if config.pgbouncer == "transaction" and config.on_connect is not None:
            logger.warning(
                "pool %r: with pgbouncer='transaction', on_connect's session settings (SET …) "
                "land on whichever server session serves it and do not follow the client: "
                "use SET LOCAL in each transaction, or the startup options "
                "(?options=-c%%20name%%3Dvalue) or the server's or role's defaults",
                config.name,
            )

    # ------------------------------------------------------------------ opening

    def connect(self) -> Any:
        """A new driver connection; raises the driver's error."""
        return self.connector.connect()

    def prepare(self, raw: Any, clock: Callable[[], float]) -> Entry:
        """Run ``on_connect`` on a new connection and make its entry (opened when ``clock``
        says, after ``on_connect``). Raises what ``on_connect`` raised (``raw`` is closed
        then)."""
        driver = self.connector.driver or driver_for_connection(raw)
        if self.config.pgbouncer == "transaction":
            driver.disable_server_prepares(raw)
        if self.config.on_connect is not None:
            run_on_connect(self.config.on_connect, self.config.name, raw, driver)
        try:
            now = clock()
            lifetime = self.config.max_lifetime
            expires = FOREVER if lifetime is None else now + lifetime * lifetime_jitter()
            entry = Entry(self.owner, raw, driver, now, expires, fast_returns=self.fast_returns)
            entry.handle_class = handle_class_for(driver)
            entry.saved_settings = driver.save_settings(raw)
        except BaseException:
            self.close(entry=None, raw=raw, driver=driver)
            raise
        return entry

    def is_rejection(self, error: BaseException) -> bool:
        """Whether a failed connect is the server refusing the login for good (wrong
        credentials, unknown database …) rather than an outage."""
        driver = self.connector.driver
        return driver.is_rejection(error) if driver is not None else connection_rejected(error)

    # ------------------------------------------------------------------ checking

    @staticmethod
    def ping(entry: Entry, timeout: float) -> None:
        """A round trip on ``entry``'s connection, bounded by ``timeout`` seconds; raises the
        driver's error or :class:`~flask_dbpool.PingTimeout`."""
        entry.driver.ping(entry.raw, timeout)

    # ------------------------------------------------------------------ returning

    def classify(self, exc: BaseException, raw: Any, driver: Any) -> str | None:
        """What ``exc``, raised while ``raw`` was in use, means (see
        :meth:`Driver.classify`): the pool's ``classify_error`` first, then the driver's
        rules. A ``classify_error`` that raises or answers something else is logged and
        the driver decides."""
        custom = self.config.classify_error
        if custom is not None:
            try:
                kind = custom(exc, raw)
            except Exception as error:
                logger.warning(
                    "pool %r: classify_error raised %s; the driver's rules decide",
                    self.config.name,
                    one_line(error),
                )
                kind = None
            if kind in ERROR_KINDS:
                return str(kind)
            if kind is not None:
                logger.warning(
                    "pool %r: classify_error returned %r, not one of %s or None; the "
                    "driver's rules decide",
                    self.config.name,
                    kind,
                    ", ".join(sorted(ERROR_KINDS)),
                )
        result: str | None = driver.classify(exc, raw)
        return result

    def reset(self, entry: Entry, exc: BaseException | None) -> Discard | None:
        """Make a returned connection fit for the next borrower: ``on_checkin``, roll back
        what the borrower left (always after ``exc``, the error that ended its work),
        restore client-side settings, run the session reset. ``None``: keep it; else why
        it must be discarded (its session state is unknown)."""
        try:
            driver = entry.driver
            if self.config.on_checkin is not None:
                self.config.on_checkin(entry.raw)
            plan = self.plan_reset(entry, exc)
            if isinstance(plan, Discard):
                return plan
            if plan.rollback:
                driver.rollback(entry.raw)
            if plan.restore_settings:
                driver.restore_settings(entry.raw, entry.saved_settings)
                entry.settings_changed = False
            if self.session_reset is not None:
                reset_session(
                    self.session_reset, self.config.on_connect, self.config.name, entry.raw, driver
                )
        except BaseException as error:
            return self.reset_failed(entry, error)
        return None

    def plan_reset(self, entry: Entry, exc: BaseException | None) -> Discard | ResetSteps:
        """The decisions of :meth:`reset` (after ``on_checkin``), without its I/O: discard
        the connection (what ``exc`` says of it, retired, broken), or which steps to take.
        Raises when the settings cannot be restored (the connection is then discarded)."""
        driver = entry.driver
        if exc is not None:
            kind = self.classify(exc, entry.raw, driver)
            if kind == SERVER_CHANGED:
                why = (
                    f"the server is no longer the one connected to ({one_line(exc)}): "
                    "retiring every connection"
                )
                return Discard(why, "broken", disconnect=True, drain=True)
            if kind == DEAD:
                why = f"a disconnect error was raised while it was in use ({one_line(exc)})"
                return Discard(why, "broken", disconnect=True)
        if entry.retire:
            return Discard(_RETIRED_BECAUSE[entry.retire], entry.retire, quiet=True)
        state = driver.transaction_state(entry.raw)
        if state == BROKEN:
            return Discard("the driver reports it broken", "broken", disconnect=True)
        # After an error, roll back even if the flag says idle: some drivers (PyMySQL)
        # only refresh it from successful replies.
        rollback = (
            state == FAILED
            or exc is not None
            or (state == IN_TRANSACTION and self.rollback_on_return)
        )
        if entry.settings_changed and not rollback and state != IDLE:
            # reset_on_return=False left the borrower's transaction open, and some drivers
            # would commit it to put a setting back (sqlite3's isolation_level, SET
            # autocommit): discard the connection instead.
            raise messages.settings_not_restorable()
        # The settings are restored after the rollback: some cannot change in a transaction.
        return ResetSteps(rollback, entry.settings_changed)

    @staticmethod
    def reset_failed(entry: Entry, error: BaseException) -> Discard:
        """The verdict when ``on_checkin`` or a reset step raised ``error``."""
        gone = isinstance(error, Exception) and entry.driver.is_disconnect(error, entry.raw)
        return Discard(
            f"on_checkin or the reset failed ({one_line(error)})",
            "broken" if gone else "reset_failed",
            disconnect=gone,
            interrupt=None if isinstance(error, Exception) else error,
        )

    def server_limits(self) -> ServerLimits | None:
        """The server's connection limit and sessions, read on a connection of its own,
        closed after (none of the pool's: nothing waits for one, nothing is counted);
        ``None`` for a database without a server. Raises the driver's error."""
        raw = self.connect()
        driver = self.connector.driver or driver_for_connection(raw)
        try:
            return driver.server_limits(raw)
        finally:
            self.close(None, raw=raw, driver=driver)

    # ------------------------------------------------------------------ closing

    def close(self, entry: Entry | None, *, raw: Any = None, driver: Any = None) -> None:
        """Close ``entry``'s connection (or ``raw`` with ``driver``); an error closing a
        connection that is already broken is only logged at DEBUG."""
        if entry is not None:
            raw, driver = entry.raw, entry.driver
        try:
            driver.close(raw)
        except Exception as error:
            logger.debug("pool %r: error closing a connection: %r", self.config.name, error)
