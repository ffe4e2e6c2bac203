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
        back). ``"discard"``: roll back, then reset the whole session (PostgreSQL
        ``DISCARD ALL``: settings, ``SET ROLE``, temp tables, prepared statements) at the cost
        of one round trip per return. A callable: roll back, then call it with the driver
        connection for a custom reset (what it leaves in a transaction is committed); if it
        raises, the connection is discarded.
    ``max_waiting``
        How many callers may wait at once; one more gets ``TooManyWaiters`` immediately
        instead of queueing (integer >= 0, default 0 = unlimited).
    ``on_connect``
        ``None`` or a callable run once on each new driver connection before it is first
        lent (``SET search_path``, ``PRAGMA`` …). A transaction it leaves open is committed,
        so session settings stick; if it raises, the connection is closed and the error
        reaches the caller.
    ``lifo``
        Hand out the most recently returned idle connection first (bool, default True), so a
        small working set stays warm; ``False`` rotates through all idle connections.
    """

    pool_size: int = 5
    max_overflow: int = 10
    timeout: float = 30.0
    name: str = "default"
    reset_on_return: bool | str | Callable[[Any], object] = True
    lifo: bool = True
    max_waiting: int = 0
    on_connect: Callable[[Any], object] | None = None

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
        return cls(
            pool_size=_check_int(label("pool_size"), get("pool_size"), 1),
            max_overflow=_check_int(label("max_overflow"), get("max_overflow"), 0),
            timeout=_check_seconds(label("timeout"), get("timeout")),
            name=_check_name(label("name"), get("name")),
            reset_on_return=_check_reset(label("reset_on_return"), get("reset_on_return")),
            lifo=_check_bool(label("lifo"), get("lifo")),
            max_waiting=_check_int(label("max_waiting"), get("max_waiting"), 0),
            on_connect=_check_hook(label("on_connect"), get("on_connect")),
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
