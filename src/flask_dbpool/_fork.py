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
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from flask_dbpool.drivers.base import IDLE, Driver
from flask_dbpool.entry import Entry, Owner
from flask_dbpool.proxy import PooledConnection, set_entry

__all__ = ["INHERITED", "abandon_inherited", "detach_fd", "keep_forever", "track"]

_resets: list[weakref.WeakMethod[Callable[[], None]]] = []
_resets_lock = threading.Lock()  # pools may be created in several threads at once


def track(reset: Callable[[], None]) -> None:
    """Call the bound method ``reset`` in every child process forked from now on (held
    weakly: a pool that is gone is not kept alive, nor reset)."""
    with _resets_lock:
        _resets[:] = [ref for ref in _resets if ref() is not None]
        _resets.append(weakref.WeakMethod(reset))


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


class _Inherited:
    """Stands in as the pool of connections inherited across ``fork()`` (closed in the child):
    returning such a handle just empties it."""

    name = "<inherited across fork>"

    def release(self, conn: PooledConnection, error: BaseException | None = None) -> None:
        set_entry(conn, None)

    def invalidate(self, conn: PooledConnection) -> None:
        set_entry(conn, None)


#: The pool of every entry inherited from the parent process.
INHERITED: Owner = _Inherited()


class _Detached(Driver):
    """Stands in as the driver of a connection lent at fork time: the handle's ``with``
    block must neither commit nor roll back in the child (another parent thread may have
    held the driver's lock at the fork, and the socket now points at ``/dev/null``)."""

    name = "<inherited across fork>"

    @staticmethod
    def transaction_state(raw: Any) -> int:
        return IDLE

    @staticmethod
    def rollback(raw: Any) -> None:
        pass

    @staticmethod
    def close(raw: Any) -> None:
        pass


def abandon_inherited(
    inherited: Iterable[Entry], idle: set[Entry], close: Callable[[Entry], None]
) -> None:
    """In a forked child: detach the parent's connections from this process.

    Each socket is pointed at ``/dev/null`` first, so nothing reaches the parent's session.
    Idle ones are then closed with ``close``; ones lent at fork time are kept, untouched,
    forever: another parent thread may have been inside the driver, holding a lock no thread
    here will release, so closing could hang (and SQLite could roll back the parent's
    journal). Handles lent before the fork become inert.
    """
    for entry in inherited:
        entry.pool = INHERITED
        fd = entry.driver.socket_fd(entry.raw)
        if fd is not None:
            detach_fd(fd)
        if entry in idle:
            close(entry)
        else:
            keep_forever(entry.raw)
            entry.driver = _Detached
            entry.watched = frozenset()
            entry.watch_cache.clear()


def _after_fork_in_child() -> None:
    global _resets_lock
    _resets_lock = threading.Lock()  # another parent thread may have held it at the fork
    for ref in list(_resets):
        reset = ref()
        if reset is not None:
            reset()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
