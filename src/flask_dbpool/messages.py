"""Every message of the errors the pool raises, one wording per condition.

Built here, next to :mod:`flask_dbpool.errors`, so that the same condition reads the same
wherever it is detected, and so that no message can grow a secret by accident: messages
name the pool and its redacted target, never a password.
"""

from __future__ import annotations

from flask_dbpool.errors import PoolError, PoolTimeout, one_line
from flask_dbpool.leaks import Holder, TimeoutReport, describe_holder, describe_holders, format_site

__all__ = [
    "already_returned",
    "bad_timeout",
    "closed",
    "closed_while_connecting",
    "closed_while_waiting",
    "foreign_object",
    "inherited_across_fork",
    "leak_report",
    "not_callable",
    "not_opened",
    "of_another_pool",
    "on_connect_left",
    "orphan_report",
    "other_loop",
    "pool_state",
    "returned_handle",
    "session_reset_unsupported",
    "settings_not_restorable",
    "timeout_error",
    "too_many_waiters",
]


def closed(pool: str) -> str:
    """A closed pool was asked for a connection."""
    return f"pool {pool!r} is closed"


def not_opened(pool: str) -> str:
    """An AsyncPool was used before ``open()``."""
    return (
        f"AsyncPool {pool!r} is not open: 'await pool.open()' or 'async with AsyncPool(...)' "
        "in the event loop that will use it"
    )


def other_loop(pool: str) -> str:
    """An AsyncPool was used from an event loop (or thread) other than its own."""
    return (
        f"AsyncPool {pool!r} belongs to the event loop it was opened in and was used from "
        "another one (or from another thread): open one pool per event loop"
    )


def closed_while_waiting(pool: str) -> str:
    """A waiter was woken by ``close()``."""
    return f"pool {pool!r} was closed while waiting for a connection"


def closed_while_connecting(pool: str) -> str:
    """The pool was closed while a connection was being opened for the caller."""
    return f"pool {pool!r} was closed while a connection was being opened"


def pool_state(
    *,
    pool_size: int,
    max_overflow: int,
    open: int,
    in_use: int,
    idle: int,
    connecting: int,
    checking: int,
    waiting: int,
) -> str:
    """The pool's counts, as timeouts and refusals state them."""
    return (
        f"pool_size={pool_size}, max_overflow={max_overflow}, open={open}, in_use={in_use}, "
        f"idle={idle}, connecting={connecting}, checking={checking}, waiting={waiting}"
    )


def too_many_waiters(pool: str, target: str, max_waiting: int, state: str) -> str:
    """``max_waiting`` callers already wait."""
    return (
        f"pool {pool!r} ({target}) refused a caller: max_waiting={max_waiting} callers "
        f"already wait; {state}"
    )


def timeout_error(pool: str, target: str, report: TimeoutReport, now: float) -> PoolTimeout:
    """The ``PoolTimeout`` for ``report``: the pool's state, the last connection error while
    the database is unreachable (also its ``__cause__``) and the longest holders."""
    message = (
        f"pool {pool!r} ({target}) timed out after {report.waited:.3f} s waiting "
        f"for a connection: {report.state} (this caller included)"
    )
    if report.cause is not None:
        what = "rejected the connection" if report.rejected else "cannot be reached"
        message += (
            f"; the database {what}: {report.failures} connection attempt(s) failed, the last "
            f"with {one_line(report.cause)}"
        )
    if report.holders:
        message += "; longest held: " + describe_holders(report.holders, now)
    error = PoolTimeout(message)
    error.__cause__ = report.cause
    return error


def bad_timeout(timeout: object) -> str:
    """A timeout argument that is not a number of seconds >= 0."""
    return f"timeout must be a number of seconds >= 0, got {timeout!r}"


def not_callable(what: str, value: object) -> str:
    """An argument that must be callable."""
    return f"{what} must be callable, got {value!r}"


def already_returned() -> str:
    """A handle returned twice."""
    return "connection was already returned to the pool"


def returned_handle() -> str:
    """A returned handle was used."""
    return "connection was returned to the pool; acquire a new one"


def inherited_across_fork() -> str:
    """A handle checked out before ``os.fork()`` was returned in the child."""
    return (
        "connection was checked out before os.fork(); it belongs to the parent process and "
        "was closed in this one"
    )


def of_another_pool(owner: str, pool: str) -> str:
    """A handle returned to the wrong pool."""
    return f"connection belongs to pool {owner!r}, not to pool {pool!r}"


def foreign_object(pool: str, value: object) -> str:
    """Something that is not a handle was returned."""
    return f"pool {pool!r} can only take back connections it lent, got {type(value).__name__}"


def session_reset_unsupported(driver: str) -> str:
    """``reset_on_return='discard'`` with a driver that has no session reset."""
    return (
        f"reset_on_return='discard' is not supported by the {driver} driver (PostgreSQL, "
        "MySQL and MariaDB only); pass a callable that resets the session instead"
    )


def on_connect_left(pool: str, broken: bool) -> str:
    """``on_connect`` left the connection unusable."""
    what = "broken" if broken else "in an aborted transaction"
    return f"pool {pool!r}: on_connect left the connection {what}"


def settings_not_restorable() -> PoolError:
    """A borrower changed client-side settings and left its transaction open."""
    return PoolError(
        "client-side settings were changed and the transaction was left open "
        "(reset_on_return=False): they cannot be restored without ending it"
    )


def orphan_report(pool: str, holder: Holder, now: float) -> str:
    """The warning for a handle garbage-collected without being returned."""
    site = format_site(holder.site)
    return (
        f"pool {pool!r}: a connection "
        + describe_holder(holder, now, ago=True)
        + " was garbage-collected without being returned; closed it and gave its "
        "slot back to the pool"
        + (f". Checked out at:\n{site}" if site else " (set leak_threshold to record where)")
    )


def leak_report(pool: str, holder: Holder, now: float, threshold: float) -> str:
    """The warning for a connection held longer than ``leak_threshold``."""
    site = format_site(holder.site)
    return (
        f"pool {pool!r}: possible leak: connection {describe_holder(holder, now)}, "
        f"longer than leak_threshold={threshold:g} s"
        + (f". Checked out at:\n{site}" if site else "")
    )
