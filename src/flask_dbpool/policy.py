"""Timing policy: back-off between connection attempts and lifetime jitter. Pure functions
of their arguments and a private random source, so the state machine can take them as
plain callables (and tests can pass deterministic ones)."""

from __future__ import annotations

import random

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "RECOVERY_STEP",
    "RETRY_FIRST",
    "RETRY_MAX",
    "backoff_delay",
    "lifetime_jitter",
    "recovery_delay",
    "retry_delay",
]

#: First delay before retrying a failed connection, doubled on each further failure...
BACKOFF_FIRST = 0.1
#: ...up to this many seconds (each delay then drawn between half and all of it).
BACKOFF_MAX = 5.0

#: While callers wait for an unreachable database, the next attempt comes at most this many
#: seconds after the last failure (drawn between 60 % and all of it), whatever the back-off:
#: they are served within moments of the database's return, at a handful of attempts a
#: second per pool (a refused TCP connection, or a "starting up" error, costs the server
#: next to nothing).
RECOVERY_STEP = 0.15

_jitter = random.Random()


def backoff_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failed connection attempts."""
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(failures - 1, 32))
    return ceiling * _jitter.uniform(0.5, 1.0)


def recovery_delay() -> float:
    """Seconds from a failed attempt to the next one while callers wait (see
    :data:`RECOVERY_STEP`)."""
    return RECOVERY_STEP * _jitter.uniform(0.6, 1.0)


#: run_transaction's pause before its first retry, doubled for each next one up to
#: RETRY_MAX (each drawn between half and all of it, so that transactions that collided do
#: not collide again).
RETRY_FIRST = 0.02
RETRY_MAX = 1.0


def retry_delay(attempt: int) -> float:
    """Seconds to pause before running a unit of work for the ``attempt``-th time (2, 3 …)."""
    ceiling = min(RETRY_MAX, RETRY_FIRST * 2.0 ** min(attempt - 2, 32))
    return ceiling * _jitter.uniform(0.5, 1.0)


def lifetime_jitter() -> float:
    """A per-connection factor in [0.95, 1] applied to ``max_lifetime``."""
    return 1.0 - _jitter.uniform(0.0, 0.05)
