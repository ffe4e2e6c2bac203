"""The background maintenance thread: one per pool, off the acquire/release hot path.

It calls one entry point, the pool's ``run_maintenance()``, whose locked half is the state
machine's sweep (:meth:`flask_dbpool.state.PoolState.sweep`): it retires connections past
``max_lifetime``, closes those idle past ``idle_timeout``, keeps ``min_idle`` open, pings idle
ones every ``keepalive_interval``, checks connections suspected dead after a disconnect,
reconnects with back-off while the database is down, warns about leaks and reclaims the slots
of handles garbage-collected without being returned. The run says when it wants the next.

The thread is a daemon (it never blocks interpreter exit), is started lazily by the pool,
holds the pool only weakly between runs (a pool nobody references is collected and its thread
ends) and is stopped by the pool's ``close()``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Protocol

from flask_dbpool.policy import BACKOFF_FIRST, BACKOFF_MAX, backoff_delay
from flask_dbpool.state import MAX_SLEEP

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "MAX_SLEEP",
    "PING_TIMEOUT",
    "Maintained",
    "Maintenance",
    "backoff_delay",
]

logger = logging.getLogger("flask_dbpool.maintenance")

#: How long a maintenance health check (keepalive, a check after a disconnect) may wait for
#: the server's answer before the connection is taken for dead.
PING_TIMEOUT = 5.0


class Maintained(Protocol):
    """What the thread calls (a :class:`~flask_dbpool.Pool` is one)."""

    @property
    def name(self) -> str:
        """The pool's name, for the thread's name and the log."""

    def run_maintenance(self) -> float:
        """One run; returns the seconds until the next is due."""


class Maintenance:
    """The maintenance thread of one pool."""

    def __init__(self, pool: Maintained) -> None:
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
                delay = pool.run_maintenance()
            except Exception:
                logger.exception("pool %r: maintenance run failed", pool.name)
                delay = 1.0
            del pool  # never keep the pool alive while sleeping
            self._wake.wait(min(max(delay, 0.0), MAX_SLEEP))
