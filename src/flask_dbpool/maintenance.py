"""The background maintenance thread: one per pool, off the acquire/release hot path.

It retires connections past ``max_lifetime``, closes those idle past ``idle_timeout``, keeps
``min_idle`` open, pings idle ones every ``keepalive_interval``, checks connections suspected
dead after a disconnect, reconnects with back-off while the database is down, warns about
leaks and reclaims the slots of handles garbage-collected without being returned. The work
itself is :func:`housekeep`: it decides under the pool lock what to do, then does the I/O
outside it, and says when it wants to run next.

The thread is a daemon (it never blocks interpreter exit), is started lazily by the pool,
holds the pool only weakly between runs (a pool nobody references is collected and its thread
ends) and is stopped by :meth:`Pool.close`.
"""

from __future__ import annotations

import logging
import random
import threading
import weakref
from time import monotonic
from typing import TYPE_CHECKING

from flask_dbpool.entry import FOREVER, Entry, slow_return
from flask_dbpool.errors import one_line
from flask_dbpool.leaks import Holder, find_orphans, holder_of, leak_report, orphan_report

if TYPE_CHECKING:
    from flask_dbpool.pool import Pool

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "PING_TIMEOUT",
    "Maintenance",
    "backoff_delay",
    "housekeep",
]

logger = logging.getLogger("flask_dbpool.maintenance")
leak_logger = logging.getLogger("flask_dbpool.leaks")

#: First delay before retrying a failed connection, doubled on each further failure...
BACKOFF_FIRST = 0.1
#: ...up to this many seconds (each delay then drawn between half and all of it).
BACKOFF_MAX = 5.0
#: Sleep at most this long between runs, so that dropped handles and leaks are noticed.
MAX_SLEEP = 5.0
#: How long a maintenance health check (keepalive, a check after a disconnect) may wait for
#: the server's answer before the connection is taken for dead.
PING_TIMEOUT = 5.0

_jitter = random.Random()


def backoff_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failed connection attempts."""
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(failures - 1, 32))
    return ceiling * _jitter.uniform(0.5, 1.0)


def lifetime_jitter() -> float:
    """A per-connection factor in [0.95, 1] applied to ``max_lifetime``."""
    return 1.0 - _jitter.uniform(0.0, 0.05)


class Maintenance:
    """The maintenance thread of one pool."""

    def __init__(self, pool: Pool) -> None:
        self._wake = threading.Event()
        self._stopped = False
        self._started = False
        wake = self._wake
        # When the pool is garbage-collected, wake the thread so that it ends.
        self._pool = weakref.ref(pool, lambda _ref: wake.set())
        self._thread = threading.Thread(
            target=self._run, name=f"flask-dbpool maintenance {pool.name!r}", daemon=True
        )

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()
        self._started = True  # only now can it be found dead (see Pool._nudge)

    def nudge(self) -> None:
        """Run as soon as possible (something changed that needs attention)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; wait up to ``timeout`` seconds for a run in progress to end."""
        self._stopped = True
        self._wake.set()
        if self._thread.ident is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def dead(self) -> bool:
        """Whether the thread was started and has ended (a run raised a BaseException)."""
        return self._started and not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopped:
            pool = self._pool()
            if pool is None:
                return
            self._wake.clear()  # a nudge during the run below triggers another one
            try:
                delay = housekeep(pool)
            except Exception:
                logger.exception("pool %r: maintenance run failed", pool.name)
                delay = 1.0
            del pool  # never keep the pool alive while sleeping
            self._wake.wait(min(max(delay, 0.0), MAX_SLEEP))


def housekeep(pool: Pool) -> float:
    """One maintenance run of ``pool``; returns seconds until the next is due.

    Decides under the lock what to close, ping, warn about and open; does the I/O after.
    """
    config = pool.config
    now = monotonic()
    to_close: list[tuple[Entry, str]] = []
    to_ping: list[Entry] = []
    leaks: list[Holder] = []
    next_run = now + MAX_SLEEP
    connect = probe = False
    with pool._lock:
        if pool._closed:
            return MAX_SLEEP
        # Dropped handles first: their slots may be what waiters are waiting for.
        orphans = find_orphans(pool._entries, [*pool._idle, *pool._checking])
        for entry in orphans:
            pool._entries.discard(entry)
            pool._health.reclaimed += 1
            pool._count_closed_locked("leaked")
        orphan_holders = [holder_of(entry) for entry in orphans]
        to_ping.extend(pool._to_check)
        pool._to_check.clear()

        # Idle connections, least recently returned first.
        keepalive = config.keepalive_interval
        survivors = []
        for entry in pool._idle:
            if entry.expires_at <= now:
                to_close.append((entry, "lifetime"))
            elif entry.checked_at < pool._health.disconnect_at or (
                keepalive is not None
                and now - max(entry.lent_at, entry.checked_at) >= keepalive
            ):
                to_ping.append(entry)
                pool._checking.add(entry)
            else:
                if entry.seen_lent_at != entry.lent_at:  # first seen idle since its checkout
                    entry.seen_lent_at = entry.lent_at
                    never_lent = entry.lent_at == entry.created
                    entry.idle_since = entry.created if never_lent else now
                survivors.append(entry)
        idle_timeout = config.idle_timeout
        if idle_timeout is not None:
            excess = len(survivors) - config.min_idle
            kept = []
            for entry in survivors:
                if excess > 0 and now - entry.idle_since >= idle_timeout:
                    to_close.append((entry, "idle"))
                    excess -= 1
                else:
                    kept.append(entry)
                    if excess > 0:
                        next_run = min(next_run, entry.idle_since + idle_timeout)
            survivors = kept
        pool._idle.clear()
        pool._idle.extend(survivors)
        for entry in survivors:
            next_run = min(next_run, entry.expires_at)
            if keepalive is not None:
                next_run = min(next_run, max(entry.lent_at, entry.checked_at) + keepalive)
        for entry, reason in to_close:
            pool._forget_locked(entry, reason)

        # Lent connections: retire on return, warn about leaks. When they come back is
        # unknown (returns are not timed), so look again soon enough for idle_timeout
        # (within a quarter of it) and keepalive to act close to their settings.
        idle = set(survivors)
        threshold = config.leak_threshold
        suspects = False
        lent_horizon = min(
            idle_timeout / 4 if idle_timeout is not None else FOREVER,
            keepalive if keepalive is not None else FOREVER,
        )
        for entry in pool._entries:
            if entry.checked_at < pool._health.disconnect_at:
                suspects = True
            if entry in idle or entry in pool._checking:
                continue
            next_run = min(next_run, now + lent_horizon)
            if not entry.retire:
                if entry.expires_at <= now:
                    entry.retire = True
                    entry.tx_state = slow_return
                else:
                    next_run = min(next_run, entry.expires_at)
            if threshold is not None and entry.warned_for != entry.lent_at:
                if now - entry.lent_at >= threshold:
                    entry.warned_for = entry.lent_at
                    entry.tx_state = slow_return  # its return is logged (Pool._release_slow)
                    pool._health.leaks_detected += 1
                    leaks.append(holder_of(entry))
                else:
                    next_run = min(next_run, entry.lent_at + threshold)
        if pool._health.suspects and not suspects:
            pool._health.suspects = False
            pool._select_acquire()

        if pool._waiters:
            # Callers are waiting: a handle dropped meanwhile should not keep them waiting.
            next_run = min(next_run, now + 1.0)

    # The I/O, outside the lock. Slots first: each dropped handle's slot is given back even
    # if something below (a logging handler, say) raises.
    for orphan in orphans:
        try:
            pool._close_raw(orphan)
        finally:
            pool._free_slot()
    for entry, reason in to_close:
        logger.debug("pool %r: closing an idle connection (%s)", pool.name, reason)
        pool._close_raw(entry)
    try:
        while to_ping:
            entry = to_ping.pop()
            try:
                entry.driver.ping(entry.raw, PING_TIMEOUT)
            except Exception as error:
                with pool._lock:
                    pool._health.pings_failed += 1
                pool._discard(
                    entry, f"its check failed ({one_line(error)})", "ping_failed", disconnect=True
                )
                continue
            entry.checked_at = monotonic()
            pool._restore_tx_state(entry)
            pool._check_in(entry, checked=True)
            if keepalive is not None:
                next_run = min(next_run, entry.checked_at + keepalive)
            next_run = min(next_run, entry.expires_at)
    finally:
        for entry in to_ping:  # interrupted: the next run checks the rest
            pool._send_to_check(entry)
    for holder in orphan_holders:
        leak_logger.warning("%s", orphan_report(pool.name, holder, now))
    for holder in leaks:
        leak_logger.warning("%s", leak_report(pool.name, holder, now, threshold or 0.0))

    # Open connections: reconnect (with back-off) for waiters, or refill min_idle. Decided
    # last, so that a reserved slot goes straight to the attempt.
    now = monotonic()
    with pool._lock:
        if pool._closed:
            return MAX_SLEEP
        if pool._open < pool._max_open:
            if pool._health.connect_failures:
                if pool._waiters or len(pool._idle) < config.min_idle:
                    if now >= pool._health.retry_at and not pool._health.probing:
                        connect = probe = pool._health.probing = True
                    else:
                        next_run = min(next_run, max(pool._health.retry_at, now + 0.05))
            elif len(pool._idle) + len(pool._checking) + pool._connecting < config.min_idle:
                if now >= pool._health.refill_at:
                    connect = True
                else:
                    next_run = min(next_run, pool._health.refill_at)
        if connect:
            pool._open += 1
            pool._connecting += 1
    if connect:
        try:
            opened = pool._connect_in_slot(probe=probe)
        except Exception as error:  # on_connect failed: retry later, quietly
            pool._health.refill_failures += 1
            delay = backoff_delay(pool._health.refill_failures)
            pool._health.refill_at = monotonic() + delay
            logger.warning(
                "pool %r: cannot open a connection for min_idle (%s); retrying in %.1f s",
                pool.name,
                one_line(error),
                delay,
            )
            return delay
        if isinstance(opened, Entry):
            pool._health.refill_failures = 0
            pool._check_in(opened)
            return 0.0  # there may be more to open
    return max(0.0, next_run - monotonic())
