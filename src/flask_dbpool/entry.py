"""The pool's record of one open driver connection."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Protocol

from flask_dbpool.drivers import IN_TRANSACTION, Driver
from flask_dbpool.leaks import Site

__all__ = ["FOREVER", "Entry", "Owner", "slow_return"]

FOREVER = float("inf")


class Owner(Protocol):
    """What a handle may call on the pool that lent its entry (a :class:`~flask_dbpool.Pool`
    is one; so is the stand-in for connections inherited across ``fork()``). ``conn`` is a
    :class:`~flask_dbpool.proxy.PooledConnection`, typed ``Any`` here because the handle's
    module imports this one."""

    @property
    def name(self) -> str:
        """The pool's name, for messages."""

    def release(self, conn: Any, error: BaseException | None = None) -> None:
        """Take ``conn`` back (see :meth:`flask_dbpool.Pool.release`)."""

    def invalidate(self, conn: Any) -> None:
        """Close ``conn``'s connection instead of reusing it."""


def slow_return(raw: Any) -> int:
    """A transaction-state reader for :attr:`Entry.tx_state` that reports a transaction, so
    that every return of the entry takes the pool's slow path (session reset, ``on_checkin``,
    retiring, a check after a disconnect)."""
    return IN_TRANSACTION


class Entry:
    """One open driver connection and what the pool knows about it.

    An entry outlives its checkouts: each checkout wraps it in a fresh
    :class:`~flask_dbpool.proxy.PooledConnection`, so a stale handle can never reach it.
    All times are ``time.monotonic()`` readings.
    """

    __slots__ = (
        "__weakref__",
        "caller",
        "changed_callback",
        "checked_at",
        "created",
        "driver",
        "expires_at",
        "fast_returns",
        "handle_class",
        "holder",
        "idle_since",
        "label",
        "label_for",
        "lent_at",
        "pinned_for",
        "pool",
        "raw",
        "retire",
        "saved_settings",
        "seen_lent_at",
        "settings_changed",
        "site",
        "thread_name",
        "tx_state",
        "used_at",
        "warned_for",
        "watch_cache",
        "watched",
    )

    def __init__(
        self,
        pool: Owner,
        raw: Any,
        driver: type[Driver],
        created: float,
        expires_at: float,
        *,
        fast_returns: bool = True,
    ) -> None:
        self.pool = pool
        """The pool the connection belongs to (for ever)."""
        self.raw = raw
        """The driver's connection object."""
        self.driver = driver
        """The :class:`Driver` that knows how to reset, ping and classify errors for ``raw``."""
        self.handle_class: Any = None
        """The handle class lent for it (``proxy.handle_class_for(driver)``, set by whoever
        creates the entry: the entry cannot import the proxy)."""
        self.created = created
        """When the connection was opened."""
        self.expires_at = expires_at
        """When ``max_lifetime`` (with this connection's jitter) retires it."""
        self.fast_returns = fast_returns
        """Whether a return may ever take the pool's fast path (not with a session reset or
        ``on_checkin`` to run on every return)."""
        self.tx_state: Callable[[Any], int] = (
            driver.transaction_state if fast_returns else slow_return
        )
        """The transaction-state reader run on every return; replaced by one reporting a
        transaction to send the return down the slow path (session reset, hooks, retiring)."""
        # Stamped on every checkout (the hot path): who holds it and since when.
        self.lent_at = created
        self.holder = 0
        # Health: last successful round trip (opening counts) and last checkout seen by a
        # pre-pinging acquire.
        self.checked_at = created
        self.used_at = created
        # Maintenance bookkeeping: idle since when (as first observed), for which checkout.
        self.idle_since = created
        self.seen_lent_at = -1.0
        self.retire = ""  # see Lendable.retire
        # Leak tracking (only filled when leak_threshold is set).
        self.site: Site | None = None
        self.caller: str | None = None
        self.thread_name: str | None = None
        self.warned_for = -1.0
        # Pool.label_checkout: a label for one checkout (the one lent at label_for), so a
        # later checkout never shows a stale label and nothing needs clearing on return.
        self.label: str | None = None
        self.label_for = -1.0
        # Pool.pin: the checkout (lent at pinned_for) whose ``with`` blocks end the
        # transaction but do not return the connection (Flask's per-request connection).
        self.pinned_for = -1.0
        # Client-side settings as the pool set them up, and whether a borrower may have
        # changed them (set through the handle; restored on return, see Driver.save_settings).
        self.saved_settings: Any = None
        self.settings_changed = False
        self.watched: frozenset[str] = driver.watched_names
        """Attribute names whose reads through a handle go to ``driver.watch``."""
        # Wrappers ``driver.watch`` returned, reused for later reads (``cursor`` is read on
        # nearly every use: building a wrapper each time would cost a closure and a bound
        # method per call).
        self.watch_cache: dict[str, Any] = {}
        # What cached wrappers call: it must not hold the entry strongly, or the entry would
        # keep itself alive through its cache, and a dropped handle (detected through the
        # entry's reference count, see leaks.find_orphans) would never be reclaimed.
        self.changed_callback: Callable[[], None] = _weak_mark_changed(self)

    def watched_value(self, name: str) -> Any:
        """What a borrower reading the watched attribute ``name`` gets (see
        :meth:`Driver.watch`). A wrapper the driver returns instead of the attribute itself
        is kept for later reads of this connection, so it must call ``changed`` itself."""
        cached = self.watch_cache.get(name)
        if cached is not None:
            return cached
        value = getattr(self.raw, name)
        shown = self.driver.watch(name, value, self.changed_callback)
        if shown is not value:
            self.watch_cache[name] = shown
        return shown

    def mark_slow_return(self) -> None:
        """Send this entry's next return down the pool's slow path (to retire it, log a
        leak's end, check it after a disconnect)."""
        self.tx_state = slow_return

    def allow_fast_return(self) -> None:
        """Let returns take the fast path again, unless something still needs the slow one
        (a session reset, retiring, settings to restore)."""
        if self.fast_returns and not self.retire and not self.settings_changed:
            self.tx_state = self.driver.transaction_state

    def mark_changed(self) -> None:
        """A borrower may have changed client-side settings: restore them on return (the
        return takes the slow path)."""
        self.settings_changed = True
        self.tx_state = slow_return
        if self.watch_cache:
            # An attribute may have been replaced through the handle: wrap it anew.
            self.watch_cache.clear()


def _weak_mark_changed(entry: Entry) -> Callable[[], None]:
    """``entry.mark_changed`` through a weak reference."""
    ref = weakref.ref(entry)

    def changed() -> None:
        target = ref()
        if target is not None:
            target.mark_changed()

    return changed
