"""The exception hierarchy of flask-dbpool.

Every error the pool itself raises derives from :class:`PoolError`. Errors raised by the
database driver while a caller uses a connection pass through unchanged: the pool classifies
them (to discard a broken connection) but never wraps them.
"""

from __future__ import annotations

__all__ = [
    "CommitOutcomeUnknown",
    "ConfigError",
    "ConnectionReturned",
    "PingTimeout",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "TooManyWaiters",
]


class PoolError(Exception):
    """Base class of every error raised by the pool itself.

    Also raised for misuse: using a connection after it was returned, returning a connection
    twice, or returning a connection to a pool it does not belong to.
    """


class ConnectionReturned(PoolError):
    """A handle was used after its connection went back to the pool.

    For a known driver the exception raised is also an instance of that driver's own error
    for a closed connection (``sqlite3.ProgrammingError``, psycopg's ``OperationalError``,
    psycopg2's, PyMySQL's and mysqlclient's ``InterfaceError``), so that code written against
    the driver catches it as it would a closed connection.
    """


class PoolTimeout(PoolError, TimeoutError):
    """No connection became available within the caller's timeout.

    The message names the pool and says what it was doing: its size and overflow, how many
    connections were in use, how many callers were waiting and how long this one waited.
    """


class TooManyWaiters(PoolError):
    """``max_waiting`` callers already wait: this one is refused at once (load shedding).

    Failing fast beats queueing a request that would only time out; the message names the
    pool and its state.
    """


class PoolClosed(PoolError):
    """The pool was closed: it lends no more connections, and waiters are woken with this."""


class ConfigError(PoolError, ValueError):
    """A configuration value is invalid, or a URL cannot be used.

    The message names the offending parameter (or config key) and what is allowed.
    """


class CommitOutcomeUnknown(PoolError):
    """The connection was lost while a ``COMMIT`` was in flight (``run_transaction``): the
    server may or may not have committed, so the work is not run again. Check in the
    database whether it took effect (an idempotency key helps) before doing it again. Its
    ``__cause__`` is the driver's error."""


class PingTimeout(PoolError, TimeoutError):
    """A health check (``pre_ping``, keepalive, a check after a disconnect) got no answer in
    time: the server or the network path stopped answering. The connection is unusable
    afterwards and the pool closes it; callers see a ``PoolTimeout`` if no other connection
    could be found within their own timeout."""


for _cls in (
    PoolError,
    PoolTimeout,
    TooManyWaiters,
    PoolClosed,
    ConfigError,
    PingTimeout,
    CommitOutcomeUnknown,
):
    _cls.__module__ = "flask_dbpool"
del _cls


def one_line(error: BaseException) -> str:
    """``error`` as ``TypeName: message`` on one line (driver messages span several)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
