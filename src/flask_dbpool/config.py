"""Validated pool configuration.

:class:`PoolConfig` is frozen: once a pool is built its settings do not change behind its back.
Invalid values raise :class:`~flask_dbpool.ConfigError` naming the parameter and the allowed
range; nothing is silently clamped.
"""

from __future__ import annotations

import difflib
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from flask_dbpool import messages
from flask_dbpool.errors import ConfigError

__all__ = ["PoolConfig", "suggest_key"]

Label = Callable[[str], str]


def _same(name: str) -> str:
    return name


def _check_int(label: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"{label} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ConfigError(f"{label} must be an integer >= {minimum}, got {value}")
    return value


def _check_seconds(label: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{label} must be a number of seconds > 0, got {value!r} ({type(value).__name__})"
        )
    seconds = float(value)
    if not (seconds > 0 and math.isfinite(seconds)) or seconds > threading.TIMEOUT_MAX:
        raise ConfigError(
            f"{label} must be a number of seconds > 0 and <= {threading.TIMEOUT_MAX:.0f}, "
            f"got {value!r}"
        )
    return seconds


def _check_optional_seconds(label: str, value: object) -> float | None:
    """A duration that may be turned off with ``None``."""
    if value is None:
        return None
    try:
        return _check_seconds(label, value)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or None to turn it off)") from None


def _check_interval(label: str, value: object) -> float:
    """A duration where 0 is allowed (``ping_interval=0``: ping on every checkout)."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    try:
        return _check_seconds(label, value)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("> 0", ">= 0", 1)) from None


def _check_bool(label: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{label} must be true or false, got {value!r} ({type(value).__name__})")
    return value


def _check_name(label: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ConfigError(f"{label} must be a non-empty string of at most 200 characters, "
                          f"got {value!r}")
    return value


def _check_reset(label: str, value: object) -> bool | str | Callable[[Any], object]:
    if isinstance(value, bool):
        return value
    if value == "rollback":
        return True
    if value == "discard" or (callable(value) and not isinstance(value, str)):
        return value
    raise ConfigError(
        f"{label} must be true, false, 'rollback', 'discard' or a callable taking the driver "
        f"connection, got {value!r} ({type(value).__name__})"
    )


def _check_hook(label: str, value: object) -> Callable[[Any], object] | None:
    if value is not None and not callable(value):
        raise ConfigError(
            f"{label} must be None or a callable taking the driver connection, "
            f"got {value!r} ({type(value).__name__})"
        )
    return value


def _check_caller(label: str, value: object) -> Callable[[], str | None] | None:
    if value is not None and not callable(value):
        raise ConfigError(
            f"{label} must be None or a zero-argument callable returning a string, "
            f"got {value!r} ({type(value).__name__})"
        )
    return value


PGBOUNCER_MODES = ("transaction", "session")


def _check_pgbouncer(label: str, value: object) -> str | None:
    if value is not None and value not in PGBOUNCER_MODES:
        raise ConfigError(
            f"{label} must be None, 'transaction' or 'session' (PgBouncer's pool_mode in "
            f"front of the database), got {value!r}"
        )
    return value


def _check_classifier(label: str, value: object) -> Callable[[BaseException, Any], Any] | None:
    if value is not None and not callable(value):
        raise ConfigError(
            f"{label} must be None or a callable (error, driver connection) returning "
            f"'dead', 'server_changed', 'retryable' or None, got {value!r} "
            f"({type(value).__name__})"
        )
    return value


def check_timeout(timeout: object) -> None:
    """Raise :class:`ConfigError` unless ``timeout`` is a number of seconds >= 0."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not timeout >= 0  # rejects NaN too
    ):
        raise ConfigError(messages.bad_timeout(timeout))


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """The settings of one :class:`~flask_dbpool.Pool`. All durations are in seconds.

    ``pool_size``
        Connections kept open once created (integer >= 1, default 5).
    ``max_overflow``
        Extra connections opened under bursts (integer >= 0, default 10). A returned
        connection is closed when ``pool_size`` connections are already idle, so the pool
        shrinks back to ``pool_size`` after a burst without churning while demand stays high.
    ``timeout``
        How long ``acquire()`` waits for a connection before raising ``PoolTimeout``
        (seconds > 0, default 30).
    ``name``
        The pool's name in messages, ``repr`` and metrics (non-empty string, default
        ``"default"``).
    ``reset_on_return``
        What to do when a connection is returned (default ``True``). ``True`` or
        ``"rollback"``: roll back an open transaction (skipped when the driver's flag says
        idle). ``False``: leave it to the caller (an aborted transaction is still rolled
        back). ``"discard"``: roll back, then reset the whole session so that
        nothing of it reaches the next borrower (settings, roles, user variables, temporary
        tables, locks, prepared statements, cursors, ``LISTEN``), then run ``on_connect``
        again: PostgreSQL what ``DISCARD ALL`` does (one round trip per return); MySQL and MariaDB
        ``COM_RESET_CONNECTION`` with PyMySQL, a new login on the session (``change_user``)
        with mysqlclient, then the character set and ``autocommit`` set again (two round
        trips). The README's isolation table says what crosses under each mode. A callable:
        roll back, then call it with the driver connection for a custom reset (what it
        leaves in a transaction is committed); if it raises, the connection is discarded.
    ``max_waiting``
        How many callers may wait at once; one more gets ``TooManyWaiters`` immediately
        instead of queueing (integer >= 0, default 0 = unlimited).
    ``on_connect``
        ``None`` or a callable run once on each new driver connection before it is first
        lent (``SET search_path``, ``PRAGMA`` …). A transaction it leaves open is committed,
        so session settings stick; if it raises, the connection is closed and the error
        reaches the caller.
    ``on_checkout`` / ``on_checkin``
        ``None`` or a callable run with the driver connection each time it is lent / each
        time it comes back (before the reset). If ``on_checkout`` raises, the connection is
        returned (rolled back) and the error reaches the caller; if ``on_checkin`` raises, the
        connection is discarded. Either one moves returns off the fastest path.
    ``pre_ping``
        Check a connection with a round trip before lending it (bool, default False), unless
        it was checked out less than ``ping_interval`` ago. A dead one is discarded and another
        one tried, within the caller's ``timeout``.
    ``ping_interval``
        See ``pre_ping`` (seconds >= 0, default 1; 0 pings on every checkout).
    ``max_lifetime``
        Retire connections after this age, minus a random jitter of up to 5 % per connection
        so that connections opened together are not all replaced together (seconds > 0 or
        None for unlimited, default 1800). Never closed while lent: retired on return or by
        maintenance while idle.
    ``idle_timeout``
        Close connections idle this long, keeping ``min_idle`` (seconds > 0 or None, default
        600).
    ``overflow_idle_timeout``
        How long an overflow connection (one above ``pool_size``) may stay idle before
        maintenance closes it (seconds >= 0, default 5). While demand stays above
        ``pool_size`` the overflow connections are reused instead of being closed on return
        and reopened for the next caller; once a spike is over they are closed within about
        this long (plus half of it, maintenance's granularity). 0 closes an overflow
        connection as soon as it is returned while ``pool_size`` are idle.
    ``min_idle``
        Connections the maintenance thread keeps open and idle (integer, 0 to ``pool_size``,
        default 0).
    ``keepalive_interval``
        Ping idle connections this often so that firewalls and NATs do not drop them silently
        (seconds > 0 or None, default None = off).
    ``leak_threshold``
        Log a warning, once per checkout, for a connection held longer than this, with the
        thread, the stack where it was checked out and (in Flask) the request (seconds > 0 or
        None, default None = off; capturing the stack costs some microseconds per checkout).
    ``open_timeout``
        If set, the constructor waits up to this long for a first connection (see
        ``Pool.wait_ready``) and raises ``PoolTimeout`` with the cause when the database
        cannot be reached (seconds > 0 or None, default None: connect lazily).
    ``describe_caller``
        ``None`` or a zero-argument callable returning a short description of the current
        caller (such as ``"GET /orders"``), recorded with each checkout when
        ``leak_threshold`` is set. The Flask extension installs one naming the request.
    ``lifo``
        Hand out the most recently returned idle connection first (bool, default True), so a
        small working set stays warm; ``False`` rotates through all idle connections.
    ``pgbouncer``
        ``None`` (default), ``"transaction"`` or ``"session"``: the ``pool_mode`` of a
        PgBouncer between the pool and PostgreSQL. In transaction mode psycopg 3
        connections never prepare statements (PgBouncer 1.18, Debian 12's, mixes them up
        between clients: "prepared statement already exists"), ``reset_on_return="discard"``
        is refused (PgBouncer resets server sessions itself, and a session command does not
        reach the same server session anyway) and an ``on_connect`` draws a warning (its
        ``SET`` lands on whichever server session serves it).
    ``classify_error``
        ``None`` or a callable ``(error, driver_connection)`` deciding what an error raised
        while a connection was in use means, before the driver's own rules
        (``Driver.classify``): ``"dead"`` (discard the connection), ``"server_changed"``
        (discard it and retire every connection: ``Pool.drain()``), ``"retryable"`` (the
        server rolled the transaction back: ``run_transaction`` runs it again), or ``None``
        to leave it to the driver.
    """

    pool_size: int = 5
    max_overflow: int = 10
    timeout: float = 30.0
    name: str = "default"
    reset_on_return: bool | str | Callable[[Any], object] = True
    lifo: bool = True
    max_waiting: int = 0
    on_connect: Callable[[Any], object] | None = None
    on_checkout: Callable[[Any], object] | None = None
    on_checkin: Callable[[Any], object] | None = None
    pre_ping: bool = False
    ping_interval: float = 1.0
    max_lifetime: float | None = 1800.0
    idle_timeout: float | None = 600.0
    overflow_idle_timeout: float = 5.0
    min_idle: int = 0
    keepalive_interval: float | None = None
    leak_threshold: float | None = None
    open_timeout: float | None = None
    describe_caller: Callable[[], str | None] | None = None
    classify_error: Callable[[BaseException, Any], Any] | None = None
    pgbouncer: str | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, label: Label = _same) -> PoolConfig:
        """Build a validated config from ``options``.

        ``label`` turns a parameter name into the name the user wrote (e.g. ``pool_size`` into
        ``DBPOOL_POOL_SIZE``) so that errors point at the right place. Unknown names raise
        :class:`ConfigError` with a did-you-mean suggestion.
        """
        known = cls.option_names()
        for key in options:
            if key not in known:
                raise ConfigError(f"unknown option {label(key)}" + suggest_key(key, known, label))
        defaults = cls()
        def get(name: str) -> Any:
            return options.get(name, getattr(defaults, name))
        pool_size = _check_int(label("pool_size"), get("pool_size"), 1)
        min_idle = _check_int(label("min_idle"), get("min_idle"), 0)
        if min_idle > pool_size:
            raise ConfigError(
                f"{label('min_idle')} must be an integer from 0 to {label('pool_size')} "
                f"({pool_size}), got {min_idle}"
            )
        pgbouncer = _check_pgbouncer(label("pgbouncer"), get("pgbouncer"))
        reset_on_return = _check_reset(label("reset_on_return"), get("reset_on_return"))
        if pgbouncer == "transaction" and reset_on_return == "discard":
            raise ConfigError(
                f"{label('reset_on_return')}='discard' makes no sense with "
                f"{label('pgbouncer')}='transaction': DISCARD ALL would reach whichever server "
                "session serves it, and PgBouncer resets server sessions itself "
                "(server_reset_query); use the default rollback, or PgBouncer's session mode"
            )
        return cls(
            pool_size=pool_size,
            max_overflow=_check_int(label("max_overflow"), get("max_overflow"), 0),
            timeout=_check_seconds(label("timeout"), get("timeout")),
            name=_check_name(label("name"), get("name")),
            reset_on_return=reset_on_return,
            lifo=_check_bool(label("lifo"), get("lifo")),
            max_waiting=_check_int(label("max_waiting"), get("max_waiting"), 0),
            on_connect=_check_hook(label("on_connect"), get("on_connect")),
            on_checkout=_check_hook(label("on_checkout"), get("on_checkout")),
            on_checkin=_check_hook(label("on_checkin"), get("on_checkin")),
            pre_ping=_check_bool(label("pre_ping"), get("pre_ping")),
            ping_interval=_check_interval(label("ping_interval"), get("ping_interval")),
            max_lifetime=_check_optional_seconds(label("max_lifetime"), get("max_lifetime")),
            idle_timeout=_check_optional_seconds(label("idle_timeout"), get("idle_timeout")),
            overflow_idle_timeout=_check_interval(
                label("overflow_idle_timeout"), get("overflow_idle_timeout")
            ),
            min_idle=min_idle,
            keepalive_interval=_check_optional_seconds(
                label("keepalive_interval"), get("keepalive_interval")
            ),
            leak_threshold=_check_optional_seconds(
                label("leak_threshold"), get("leak_threshold")
            ),
            open_timeout=_check_optional_seconds(label("open_timeout"), get("open_timeout")),
            describe_caller=_check_caller(label("describe_caller"), get("describe_caller")),
            classify_error=_check_classifier(label("classify_error"), get("classify_error")),
            pgbouncer=pgbouncer,
        )

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The names of every option."""
        return frozenset(f.name for f in fields(cls))

    @property
    def max_open(self) -> int:
        """The most connections the pool may have open at once."""
        return self.pool_size + self.max_overflow


def suggest_key(key: str, known: Iterable[str], label: Label = _same) -> str:
    """A ``"; did you mean X?"`` suffix (or the list of valid names) for an unknown ``key``."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {label(close[0])}?"
    return "; valid options are " + ", ".join(label(k) for k in known)
