"""Fork safety.

After ``os.fork()`` (gunicorn ``--preload``, multiprocessing) the child shares the parent's
sockets. Closing a libpq or MySQL connection there would send a Terminate/COM_QUIT on the
parent's session, and using it would interleave two processes' traffic. So in the child every
pool drops what it inherited: each inherited socket descriptor is first pointed at
``/dev/null`` (the parent's socket is untouched), then the driver object is closed, writing its
goodbye into the void. The pool then starts empty. No user call is needed.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["detach_fd", "keep_forever", "track"]


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_pools: weakref.WeakSet[_ForkAware] = weakref.WeakSet()


def track(pool: _ForkAware) -> None:
    """Reset ``pool`` in every child process forked from now on (held weakly)."""
    _pools.add(pool)


_kept: list[object] = []


def keep_forever(obj: object) -> None:
    """Hold ``obj`` until the process ends, so that neither close() nor GC ever runs on it."""
    _kept.append(obj)


def detach_fd(fd: int) -> None:
    """Point ``fd`` at ``/dev/null`` in this process only, so nothing written to it leaves."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
