"""Timing policy: back-off between connection attempts and lifetime jitter. Pure functions
of their arguments and a private random source, so the state machine can take them as
plain callables (and tests can pass deterministic ones)."""

from __future__ import annotations

import random

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "backoff_delay", "lifetime_jitter"]

#: First delay before retrying a failed connection, doubled on each further failure...
BACKOFF_FIRST = 0.1
#: ...up to this many seconds (each delay then drawn between half and all of it).
BACKOFF_MAX = 5.0

_jitter = random.Random()


def backoff_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failed connection attempts."""
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(failures - 1, 32))
    return ceiling * _jitter.uniform(0.5, 1.0)


def lifetime_jitter() -> float:
    """A per-connection factor in [0.95, 1] applied to ``max_lifetime``."""
    return 1.0 - _jitter.uniform(0.0, 0.05)
