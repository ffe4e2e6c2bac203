"""The background maintenance thread: one per pool, off the acquire/release hot path.

It retires connections past ``max_lifetime``, closes those idle past ``idle_timeout``, keeps
``min_idle`` open, pings idle ones every ``keepalive_interval``, checks connections suspected
dead after a disconnect, reconnects with back-off while the database is down, warns about
leaks and reclaims the slots of handles garbage-collected without being returned. The work
itself is :meth:`Pool._housekeep`; this module only runs it at the times it asks for.

The thread is a daemon (it never blocks interpreter exit), is started lazily by the pool,
holds the pool only weakly between runs (a pool nobody references is collected and its thread
ends) and is stopped by :meth:`Pool.close`.
"""

from __future__ import annotations

import logging
import random
import threading
import weakref
from typing import Protocol

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "Maintenance", "backoff_delay"]

logger = logging.getLogger("flask_dbpool.maintenance")

#: First delay before retrying a failed connection, doubled on each further failure...
BACKOFF_FIRST = 0.1
#: ...up to this many seconds (each delay then drawn between half and all of it).
BACKOFF_MAX = 5.0
#: Sleep at most this long between runs, so that dropped handles and leaks are noticed.
MAX_SLEEP = 5.0

_jitter = random.Random()


def backoff_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failed connection attempts."""
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(failures - 1, 32))
    return ceiling * _jitter.uniform(0.5, 1.0)


def lifetime_jitter() -> float:
    """A per-connection factor in [0.95, 1] applied to ``max_lifetime``."""
    return 1.0 - _jitter.uniform(0.0, 0.05)


class _Maintained(Protocol):
    @property
    def name(self) -> str: ...

    def _housekeep(self) -> float: ...


class Maintenance:
    """The maintenance thread of one pool."""

    def __init__(self, pool: _Maintained) -> None:
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
        self._started = True
        self._thread.start()

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
                delay = pool._housekeep()
            except Exception:
                logger.exception("pool %r: maintenance run failed", pool.name)
                delay = 1.0
            del pool  # never keep the pool alive while sleeping
            self._wake.wait(min(max(delay, 0.0), MAX_SLEEP))
