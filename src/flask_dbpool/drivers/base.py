"""The seam between the pool and a DB-API 2.0 driver.

A :class:`Driver` subclass knows everything specific to one driver: how to connect from a URL,
how to read the transaction status without a round trip, how to reset, ping and close a
connection, and which errors mean the connection is gone. The pool calls these and nothing
else, so driver differences never leak into the pool.
"""

from __future__ import annotations

import _socket
import _thread
import heapq
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, TypeVar

from flask_dbpool.errors import ConfigError, PingTimeout
from flask_dbpool.url import DatabaseURL

__all__ = [
    "BROKEN",
    "DEAD",
    "ERROR_KINDS",
    "FAILED",
    "IDLE",
    "IN_TRANSACTION",
    "RETRYABLE",
    "SERVER_CHANGED",
    "ConnectFn",
    "Driver",
    "ServerLimits",
    "bounded_call",
    "run_query",
]

#: Transaction states returned by :meth:`Driver.transaction_state` (plain ints: cheap to test).
IDLE = 0
IN_TRANSACTION = 1
BROKEN = 2
#: A transaction aborted by an error: always rolled back, whatever ``reset_on_return`` says,
#: since the next holder could not use the connection otherwise.
FAILED = 3

ConnectFn = Callable[[], Any]

#: What an error raised while using a connection means (:meth:`Driver.classify`):
#: the connection is unusable: discard it (others opened before it are checked before reuse).
DEAD = "dead"
#: The server is no longer the one the pool connected to (read-only after a failover,
#: shutting down, gone): discard it and retire every connection (``Pool.drain()``).
SERVER_CHANGED = "server_changed"
#: The server rolled the transaction back (serialization failure, deadlock, lock wait
#: timeout): nothing was committed, the whole transaction may be run again.
RETRYABLE = "retryable"
ERROR_KINDS = frozenset({DEAD, SERVER_CHANGED, RETRYABLE})

_T = TypeVar("_T")


@dataclass(frozen=True)
class ServerLimits:
    """How many connections a database server accepts, and who holds them now."""

    server: str
    """The server's product and version, e.g. ``PostgreSQL 15.4``."""
    max_connections: int
    """The server's ``max_connections``."""
    reserved: int
    """Connections kept for administrators (PostgreSQL ``superuser_reserved_connections``
    plus ``reserved_connections``), unavailable to applications."""
    sessions: int
    """Client sessions open right now."""
    by_client: dict[str, int] = field(default_factory=dict)
    """Open sessions per client name (PostgreSQL ``application_name``, MySQL user)."""
    client_label: str = "client"
    """What the keys of :attr:`by_client` are."""


def run_query(raw: Any, sql: str) -> list[tuple[Any, ...]]:
    """Run ``sql`` on ``raw`` and fetch the rows, leaving an idle connection idle."""
    cur = raw.cursor()
    try:
        cur.execute(sql)
        rows = [tuple(row) for row in cur.fetchall()]
    finally:
        cur.close()
    try:
        raw.rollback()  # a read that opened an implicit transaction must not leave it open
    except Exception:
        pass
    return rows


class Driver:
    """Generic behaviour for a DB-API 2.0 connection whose driver is not known.

    Without a client-side transaction indicator every return costs a ``rollback()``; known
    drivers override :meth:`transaction_state` to skip it when the connection is idle.
    """

    name: ClassVar[str] = "dbapi"
    """The driver's import name, as shown in messages."""
    module: ClassVar[str] = ""
    """Module to import for URL targets (empty for the generic driver)."""
    extra: ClassVar[str] = ""
    """The flask-dbpool extra that installs the driver."""
    closed_error_names: ClassVar[tuple[str, ...]] = ()
    """Names, in the DB-API module, of the errors the driver raises when a closed connection
    is used (see :meth:`closed_errors`)."""

    @classmethod
    def closed_errors(cls) -> tuple[type[Exception], ...]:
        """The driver's own exception classes for the use of a closed connection (empty for
        the generic driver); a returned handle raises an error that is also one of them."""
        if not cls.closed_error_names:
            return ()
        module = cls.import_module()
        return tuple(getattr(module, name) for name in cls.closed_error_names)

    @classmethod
    def is_installed(cls) -> bool:
        """Whether the driver's module can be imported."""
        return not cls.module or importlib.util.find_spec(cls.module) is not None

    @classmethod
    def import_module(cls) -> ModuleType:
        """Import the driver's DB-API module, or raise :class:`ConfigError` naming the extra."""
        try:
            return importlib.import_module(cls.module)
        except ImportError as exc:
            hint = f"pip install 'flask-dbpool[{cls.extra}]'" if cls.extra else "install it"
            raise ConfigError(f"the {cls.name} driver is not installed ({exc}); {hint}") from None

    @classmethod
    def connect_factory(cls, url: DatabaseURL) -> ConnectFn:
        """Return a zero-argument callable opening a new connection to ``url``.

        Validates the URL eagerly so a bad option fails when the pool is built, not on first
        use. Raises :class:`ConfigError` for an option the driver does not accept.
        """
        raise ConfigError(f"{cls.name} cannot connect from a URL")

    @staticmethod
    def transaction_state(raw: Any) -> int:
        """``IDLE``, ``IN_TRANSACTION``, ``FAILED`` or ``BROKEN``, read without I/O.

        Unknown drivers report ``IN_TRANSACTION`` so that the pool always rolls back.
        """
        return IN_TRANSACTION

    @staticmethod
    def rollback(raw: Any) -> None:
        """Roll back the current transaction (the reset done on return)."""
        raw.rollback()

    @classmethod
    def ping(cls, raw: Any, timeout: float) -> None:
        """Check the connection with a round trip; raise the driver's error if it is dead.

        Gives up after ``timeout`` seconds (> 0) and raises
        :class:`~flask_dbpool.errors.PingTimeout`: a server or network path that stopped
        answering must not block the caller beyond its own timeout. After a ``PingTimeout``
        the connection may be unusable (its socket shut down); the pool closes it. Leaves an
        idle connection idle (no transaction is left open).

        The generic version runs ``SELECT 1`` bounded by :func:`bounded_call` on the
        connection's :meth:`socket_fd`; a connection without a socket descriptor is pinged
        without a bound.
        """
        bounded_call(cls.socket_fd(raw), timeout, lambda: cls._select_one(raw))

    @classmethod
    def _select_one(cls, raw: Any) -> None:
        was_idle = cls.transaction_state(raw) == IDLE
        cur = raw.cursor()
        try:
            cur.execute("SELECT 1")
            cur.fetchall()
        finally:
            cur.close()
        if was_idle and cls.transaction_state(raw) != IDLE:
            raw.rollback()

    @staticmethod
    def is_disconnect(exc: BaseException, raw: Any) -> bool:
        """Whether ``exc``, raised while using ``raw``, means the connection is unusable."""
        return False

    @classmethod
    def classify(cls, exc: BaseException, raw: Any) -> str | None:
        """What ``exc``, raised while using ``raw``, means: :data:`SERVER_CHANGED`,
        :data:`DEAD`, :data:`RETRYABLE`, or ``None`` for an ordinary error (the connection
        stays usable once rolled back). The one place per driver that decides it."""
        return DEAD if cls.is_disconnect(exc, raw) else None

    @staticmethod
    def is_rejection(exc: BaseException) -> bool:
        """Whether ``exc``, raised while *opening* a connection, means the server (or the
        driver) refused this login for good: wrong password, unknown role or database, an
        invalid connection option. Such errors reach the caller at once instead of being
        retried like an outage until the caller's timeout. Transient refusals (too many
        connections, the server starting up or shutting down) are not rejections."""
        return False

    # Client-side session settings a borrower may change (``autocommit``, ``row_factory``,
    # ``isolation_level`` …). The pool saves them after ``on_connect`` and, when a borrower
    # may have changed them, restores them on return. Writes of attributes through the
    # handle always count as a change; reads of ``watched_names`` go through :meth:`watch`,
    # so that method calls that change settings (PyMySQL ``autocommit(True)``) count too.
    # Nothing of this runs on a return where nothing was changed.

    watched_names: ClassVar[frozenset[str]] = frozenset()
    """Attribute names whose reads through the handle are passed to :meth:`watch`."""

    @classmethod
    def watch(cls, name: str, value: Any, changed: Callable[[], None]) -> Any:
        """A borrower reads ``name`` (one of :attr:`watched_names`) through its handle:
        return what it gets (``value``, or a wrapper of it), and call ``changed()`` (now, or
        later from the wrapper) if the borrower may change session settings with it.

        A wrapper (anything but ``value`` itself) is kept by the connection's entry and
        returned for later reads of ``name``, in later checkouts too, without calling this
        again: it must call ``changed()`` itself each time it is used in a way that changes
        settings. Returning ``value`` itself means this is called on every read."""
        changed()
        return value

    @classmethod
    def save_settings(cls, raw: Any) -> Any:
        """Snapshot the client-side settings of a new connection (after ``on_connect``), to
        be given back to :meth:`restore_settings`. No I/O."""
        return None

    @classmethod
    def restore_settings(cls, raw: Any, saved: Any) -> None:
        """Put back what :meth:`save_settings` saw, after a borrower may have changed it.

        Called on return, after the rollback, only when something may have changed. If it
        raises, the connection is discarded.
        """

    supports_session_reset: ClassVar[bool] = False
    """Whether :meth:`reset_session` is implemented (``reset_on_return="discard"``)."""

    @staticmethod
    def reset_session(raw: Any) -> None:
        """Reset all session state of an idle connection (``reset_on_return="discard"``)."""
        raise NotImplementedError

    @classmethod
    def server_version(cls, raw: Any) -> str:
        """The server's product and version (one round trip at most)."""
        return "unknown server"

    @classmethod
    def server_limits(cls, raw: Any) -> ServerLimits | None:
        """The server's connection limit and current sessions; ``None`` if it has none."""
        return None

    @staticmethod
    def close(raw: Any) -> None:
        """Close the driver connection."""
        raw.close()

    @staticmethod
    def disable_server_prepares(raw: Any) -> None:
        """Never prepare statements on the server on ``raw`` (behind PgBouncer in transaction
        mode): nothing to do for drivers that do not prepare by themselves."""

    @staticmethod
    def autocommit(raw: Any) -> bool:
        """Whether ``raw`` commits each statement by itself (no I/O)."""
        value = getattr(raw, "autocommit", False)
        return value if isinstance(value, bool) else False

    @classmethod
    def cancel(cls, raw: Any, timeout: float, side_connect: ConnectFn) -> bool:
        """Cancel the statement running on ``raw`` (from another thread: the one running it
        gets the driver's error, or, for MySQL's ``SLEEP``, its result). ``side_connect``
        opens a separate connection to the same server, for drivers that cancel through one;
        ``timeout`` bounds the wait where the driver takes one. Returns whether a cancel was
        sent; raises the driver's error if it could not be."""
        return False

    @staticmethod
    def socket_fd(raw: Any) -> int | None:
        """The connection's socket file descriptor, if it has one (used after ``fork()``)."""
        fileno = getattr(raw, "fileno", None)
        if fileno is None:
            return None
        try:
            fd = fileno()
        except Exception:
            return None
        return fd if isinstance(fd, int) and fd >= 0 else None


class _Watch:
    """One bounded call's deadline in the watchdog's heap.

    ``fd`` is a duplicate of the connection's descriptor, taken when the call starts and
    closed by the caller when it ends, so the watchdog names the connection's socket itself,
    never a descriptor number: a driver may close its own descriptor during the call (libpq
    and PyMySQL do on a read error), and another socket may get that number before the
    caller disarms. ``state`` changes under the watchdog's lock only.
    """

    __slots__ = ("deadline", "fd", "state")

    def __init__(self, fd: int, deadline: float) -> None:
        self.fd = fd
        self.deadline = deadline
        self.state = _ARMED

    def __lt__(self, other: _Watch) -> bool:
        return self.deadline < other.deadline


# _ARMED: the call runs; _DONE: it ended in time (its fd is the caller's to close, the
# watchdog never touches it again); _FIRED: the deadline passed while it ran.
_ARMED, _DONE, _FIRED = 0, 1, 2


def _os_thread_api() -> tuple[Callable[[], Any], Callable[..., Any]]:
    """``allocate_lock`` and ``start_new_thread`` of real OS threads, even when gevent has
    patched the thread modules: a driver blocked in C (psycopg2, mysqlclient) blocks the
    gevent hub too, so a greenlet watchdog would never run."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        allocate_lock, start = monkey.get_original("_thread", ["allocate_lock", "start_new_thread"])
        return allocate_lock, start
    return _thread.allocate_lock, _thread.start_new_thread


def _shut_down(fd: int) -> None:
    """Shut down (both ways) the socket ``fd`` names, leaving ``fd`` open.

    shutdown() acts on the socket, not on one descriptor: the driver's blocked read on its
    own descriptor returns (EOF). The C-level socket type because gevent may have patched
    the socket module and this runs outside any hub. A descriptor that is not a socket is
    left alone (the call then runs on unbounded; it still ends in ``PingTimeout``).
    """
    try:
        sock = _socket.socket(fileno=fd)
    except OSError:
        return
    try:
        sock.shutdown(_socket.SHUT_RDWR)
    except OSError:  # not connected any more: the blocked read has returned already
        pass
    finally:
        sock.detach()  # the caller closes fd, after disarming


class _Watchdog:
    """One daemon OS thread for the whole process that shuts down the sockets of calls that
    overran their deadline, so that a read blocked in a driver (even in C) returns.

    Deadlines wait in a heap whose top is always a running call (or the heap is empty): a
    call that ends in time pops its entry when it is the top (the usual case: calls with
    one timeout end in the order they started), else marks it done, to be popped when it
    surfaces or dropped when done entries are half the heap. So no entry outlives the calls
    in progress, and the heap is empty whenever none is.

    A healthy call costs a ``dup()``/``close()`` pair and two short lock holds; it wakes the
    thread only when its deadline comes before the one the thread sleeps until (so calls
    back to back wake it about once per timeout, not once per call).
    """

    def __init__(self) -> None:
        self._reinit()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _reinit(self) -> None:
        allocate_lock, self._start = _os_thread_api()
        self._lock = allocate_lock()
        self._wake = allocate_lock()  # released to wake the thread before its timeout
        self._wake.acquire()
        self._heap: list[_Watch] = []
        self._done = 0  # _DONE entries still in the heap
        self._sleep_until = float("inf")  # when the thread wakes by itself
        self._running = False

    def _after_fork_in_child(self) -> None:
        # The thread does not survive fork(), and the lock may have been held by a thread
        # that did not either: start afresh, without the lock. A call armed in the parent
        # must never fire here (shutdown() would cut the parent's socket too): its duplicate
        # is closed and the entry marked fired, so a greenlet that survived the fork in the
        # middle of it gets PingTimeout (its connection is the parent's: to be discarded).
        old = self._heap
        self._reinit()
        for watch in old:
            if watch.state == _ARMED:
                watch.state = _FIRED
                try:
                    os.close(watch.fd)
                except OSError:
                    pass
                watch.fd = -1  # so that the call's disarm does not close a reused number

    def arm(self, fd: int, timeout: float) -> _Watch | None:
        """Watch the socket ``fd`` names for ``timeout`` seconds; ``None`` if ``fd`` is not
        an open descriptor."""
        try:
            dup = os.dup(fd)
        except OSError:
            return None
        watch = _Watch(dup, time.monotonic() + timeout)
        try:
            with self._lock:
                if not self._running:
                    self._start(self._run, ())
                    self._running = True
                heapq.heappush(self._heap, watch)
                wake = watch.deadline < self._sleep_until
        except BaseException:  # no thread could be started: nothing may keep the duplicate
            os.close(dup)
            raise
        if wake:
            self._poke()
        return watch

    def disarm(self, watch: _Watch) -> bool:
        """Stop watching; whether the deadline passed (the socket was shut down).

        Once this has returned ``False`` the watchdog never touches the socket again: the
        state changes under the lock that the thread holds while deciding and shutting down.
        """
        with self._lock:
            fired = watch.state == _FIRED
            if watch.state == _ARMED:
                watch.state = _DONE
                heap = self._heap
                if heap and heap[0] is watch:
                    heapq.heappop(heap)
                    while heap and heap[0].state == _DONE:  # ended earlier, out of order
                        heapq.heappop(heap)
                        self._done -= 1
                else:
                    # Ended before a call armed earlier: left for later. (Or not in the heap
                    # at all, in a child forked while the thread was firing it: the count then
                    # errs high, which only compacts earlier, and compacting resets it.)
                    self._done += 1
                    if 2 * self._done > len(heap):
                        self._heap = [w for w in heap if w.state == _ARMED]
                        heapq.heapify(self._heap)
                        self._done = 0
        if watch.fd >= 0:  # -1: closed by the fork hook already
            os.close(watch.fd)  # after the state change: the thread never shuts a closed one
        return fired

    def _poke(self) -> None:
        try:
            self._wake.release()
        except RuntimeError:  # already released: the thread looks at the heap anyway
            pass

    def _run(self) -> None:
        while True:
            with self._lock:
                heap = self._heap
                now = time.monotonic()
                while heap and (heap[0].state != _ARMED or heap[0].deadline <= now):
                    watch = heapq.heappop(heap)
                    if watch.state == _DONE:
                        self._done -= 1
                        continue
                    # Decided and done under the lock, so the caller cannot end the call
                    # and close the duplicate meanwhile.
                    watch.state = _FIRED
                    _shut_down(watch.fd)
                # At most an hour: a lock's timeout has a maximum, a caller's timeout none.
                wait = min(heap[0].deadline - now, 3600.0) if heap else 3600.0
                self._sleep_until = now + wait
            self._wake.acquire(True, wait)


_WATCHDOG = _Watchdog()


def bounded_call(fd: int | None, timeout: float, call: Callable[[], _T]) -> _T:
    """Run ``call`` (one round trip on the socket ``fd``), giving up after ``timeout``.

    When the deadline passes, a shared watchdog thread shuts the socket down (both ways), so
    the blocked read in the driver returns with an error, and
    :class:`~flask_dbpool.errors.PingTimeout` is raised instead of that error. The
    connection is unusable afterwards. With ``fd`` ``None`` (or not an open descriptor)
    ``call`` runs without a bound. Creates no thread once the watchdog runs.
    """
    watch = _WATCHDOG.arm(fd, timeout) if fd is not None else None
    if watch is None:
        return call()
    try:
        result = call()
    except Exception as exc:
        if _WATCHDOG.disarm(watch):
            raise _timed_out(timeout) from exc
        raise
    except BaseException:  # the caller's own interruption (gevent.Timeout …) wins
        _WATCHDOG.disarm(watch)
        raise
    if _WATCHDOG.disarm(watch):  # answered, but too late: the socket is shut down already
        raise _timed_out(timeout)
    return result


def _timed_out(timeout: float) -> PingTimeout:
    return PingTimeout(f"no answer within {timeout:.3g} s; the connection was shut down")


def query_options(
    url: DatabaseURL, allowed: dict[str, Callable[[str], Any]], driver: str
) -> dict[str, Any]:
    """Convert ``url``'s query string into keyword arguments using ``allowed`` converters.

    Raises :class:`ConfigError` naming an unknown option (with the accepted list) or a value
    that does not convert.
    """
    options: dict[str, Any] = {}
    for key, raw_value in url.query:
        convert = allowed.get(key)
        if convert is None:
            raise ConfigError(
                f"{url.scheme}:// URL option {key!r} is not supported by {driver}; "
                f"supported: {', '.join(sorted(allowed))}"
            )
        try:
            options[key] = convert(raw_value)
        except ValueError:
            shown = "***" if key.lower() == "password" else repr(raw_value)
            raise ConfigError(f"{url.scheme}:// URL option {key}={shown} is invalid") from None
        value = options[key]
        if key.endswith("timeout") and not (0 < value < float("inf")):
            raise ConfigError(
                f"{url.scheme}:// URL option {key} must be a positive number of seconds, "
                f"got {raw_value!r}"
            )
    return options


def parse_bool(value: str) -> bool:
    """Parse a URL boolean: ``true/false``, ``1/0``, ``yes/no``, ``on/off``."""
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)
