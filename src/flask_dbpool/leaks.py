"""Who holds the pool's connections: checkout sites, holder reports, dropped handles.

Nothing here runs on the default hot path. A checkout only stamps the time and the thread
ident on its entry; stacks are captured only when ``leak_threshold`` is set; reports are built
when something went wrong (a timeout, a leak warning).

A handle dropped without being returned is found without any per-checkout cost (no
``__del__``, no weak reference): a lent entry is referenced by the pool's set of entries and by
its live handle. Once the handle is garbage-collected nothing else refers to it, which
:func:`find_orphans` sees in its reference count. Every pool operation that moves an entry
around keeps a local reference while doing so, so an entry in transit never looks orphaned;
the check runs under the pool lock and is calibrated at run time against an object held the
same way, so it does not depend on interpreter details.
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from traceback import StackSummary
from types import FrameType
from typing import Any, NamedTuple, Protocol, TypeVar

__all__ = [
    "Checkout",
    "Holder",
    "Site",
    "TimeoutReport",
    "capture_site",
    "checkouts_of",
    "describe_caller",
    "describe_holder",
    "describe_holders",
    "find_orphans",
    "format_site",
    "holder_of",
]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STACK_LIMIT = 16

#: Reference counts are exact only on a CPython with the GIL; elsewhere dropped handles are
#: not detected (``leak_threshold`` warnings still work).
ORPHANS_DETECTABLE = hasattr(sys, "getrefcount") and not sysconfig.get_config_var("Py_GIL_DISABLED")


#: A checkout site: ``(filename, line number, function)`` per frame, innermost last.
Site = tuple[tuple[str, int, str], ...]


def capture_site(skip: tuple[str, ...] = ()) -> Site:
    """The caller's stack outside flask_dbpool (and the packages named in ``skip``, such
    as ``"sqlalchemy"`` for a checkout made through it), innermost frame last.

    Only names and line numbers are recorded (a few µs for 16 frames); the source lines are
    read when a report is formatted. (``traceback.StackSummary.extract`` costs about 100 µs
    here, on every checkout while ``leak_threshold`` is set.)"""
    frame: FrameType | None = sys._getframe(1)
    inside = _skipped_dirs(skip)
    while (
        frame is not None
        and frame.f_back is not None
        and frame.f_code.co_filename.startswith(inside)
    ):
        frame = frame.f_back
    frames: list[tuple[str, int, str]] = []
    while frame is not None and len(frames) < _STACK_LIMIT:
        code = frame.f_code
        frames.append((code.co_filename, frame.f_lineno or 0, code.co_name))
        frame = frame.f_back
    frames.reverse()
    return tuple(frames)


@functools.lru_cache(maxsize=16)
def _skipped_dirs(names: tuple[str, ...]) -> tuple[str, ...]:
    """flask_dbpool's directory and those of the packages ``names`` (imported ones only,
    which a caller of :func:`capture_site` has), whose frames are not the caller's. Cached:
    a site is captured on every checkout while ``leak_threshold`` is set."""
    found = [_PACKAGE_DIR]
    for name in names:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            found.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return tuple(found)


def format_site(site: Site | None, *, last: int = _STACK_LIMIT) -> str:
    """``site`` as traceback-style lines (the ``last`` innermost frames), or ``""``."""
    if not site:
        return ""
    frames = StackSummary.from_list([(*frame, None) for frame in site[-last:]])
    return "".join(frames.format()).rstrip()


def short_site(site: Site | None) -> str:
    """The innermost frame of ``site`` as ``file:line in function``, or ``""``."""
    if not site:
        return ""
    filename, lineno, name = site[-1]
    return f"{filename}:{lineno} in {name}"


class _Checkout(Protocol):
    """What a lent item records about its checkout (see :class:`flask_dbpool.entry.Entry`)."""

    lent_at: float
    holder: int
    thread_name: str | None
    caller: str | None
    site: Any
    label: str | None
    label_for: float


class Holder(NamedTuple):
    """What is known about one checkout, copied under the pool lock for a report."""

    lent_at: float
    ident: int
    thread_name: str | None
    caller: str | None
    site: Site | None
    label: str | None = None


def holder_of(entry: _Checkout) -> Holder:
    """A snapshot of ``entry``'s current checkout (call with the pool lock held)."""
    label = entry.label if entry.label_for == entry.lent_at else None
    return Holder(entry.lent_at, entry.holder, entry.thread_name, entry.caller, entry.site, label)


def describe_holder(
    holder: Holder, now: float, names: dict[int, str] | None = None, *, ago: bool = False
) -> str:
    """``held 3.2 s by thread 'worker-1' (GET /orders) at app.py:12 in view`` (with ``ago``:
    ``checked out 3.2 s ago by thread …``)."""
    name = _thread_of(holder, _thread_names() if names is None else names)
    age = now - holder.lent_at
    text = f"checked out {age:.1f} s ago" if ago else f"held {age:.1f} s"
    text += f" by thread {name!r}"
    if holder.caller:
        text += f" ({holder.caller})"
    where = short_site(holder.site)
    if where:
        text += f" at {where}"
    return text


def describe_holders(holders: Iterable[Holder], now: float, *, limit: int = 3) -> str:
    """The ``limit`` longest-held connections, for a ``PoolTimeout`` message."""
    names = _thread_names()
    longest = sorted(holders, key=lambda holder: holder.lent_at)[:limit]
    return "; ".join(describe_holder(holder, now, names) for holder in longest)


def _thread_of(holder: Holder, names: dict[int, str]) -> str:
    """The name of the thread that checked ``holder``'s connection out."""
    return holder.thread_name or names.get(holder.ident, f"thread {holder.ident} (finished)")


def _thread_names() -> dict[int, str]:
    return {thread.ident: thread.name for thread in threading.enumerate() if thread.ident}


@dataclass(frozen=True)
class Checkout:
    """One connection currently checked out, as reported by :meth:`Pool.checkouts`."""

    held_seconds: float
    """How long it has been out."""
    thread: str
    """The name of the thread that checked it out."""
    label: str | None
    """What :meth:`Pool.label_checkout` attached (in Flask: the endpoint name of the request
    that checked out ``db.connection``)."""
    caller: str | None
    """What ``describe_caller`` said at checkout (in Flask: ``"GET /path"``), if tracked."""
    site: str | None
    """Where it was checked out (``file:line in function``), with ``leak_threshold`` on."""
    stack: str | None
    """The checkout stack, with ``leak_threshold`` on."""

    def as_dict(self) -> dict[str, object]:
        """Ready for JSON."""
        return asdict(self)


def checkouts_of(holders: Iterable[Holder], now: float) -> list[Checkout]:
    """:class:`Checkout` records for ``holders``, longest-held first."""
    names = _thread_names()
    return [
        Checkout(
            held_seconds=now - holder.lent_at,
            thread=_thread_of(holder, names),
            label=holder.label,
            caller=holder.caller,
            site=short_site(holder.site) or None,
            stack=format_site(holder.site) or None,
        )
        for holder in sorted(holders, key=lambda holder: holder.lent_at)
        if holder.ident  # 0: opened but not lent yet
    ]


class TimeoutReport(NamedTuple):
    """The state behind a ``PoolTimeout``, copied under the pool lock, formatted after."""

    waited: float
    state: str
    failures: int
    cause: BaseException | None
    rejected: bool
    holders: list[Holder]


class _Probe:
    """Stands in for an orphaned entry when calibrating :func:`find_orphans`."""

    __slots__ = ()


_T = TypeVar("_T")


def find_orphans(entries: set[_T], not_lent: Iterable[_T]) -> list[_T]:
    """The lent entries of ``entries`` (those not in ``not_lent``) whose handle is gone.

    Call with the pool lock held. Here an orphan is referenced only by ``entries`` and by the
    candidate list; a probe held the same way gives the count that means "nothing else".
    """
    if not ORPHANS_DETECTABLE:
        return []
    skip = set(not_lent)
    candidates = [entry for entry in entries if entry not in skip]
    if not candidates:
        return []
    holder = {_Probe()}
    probes = list(holder)
    baseline = sys.getrefcount(probes[0])
    return [
        candidates[index]
        for index in range(len(candidates))
        if sys.getrefcount(candidates[index]) <= baseline
    ]


def describe_caller(describe: Callable[[], str | None] | None) -> str | None:
    """What ``describe`` (the ``describe_caller`` option) says of the current caller; a
    describer that raises is named instead (a diagnostic must never fail a checkout)."""
    if describe is None:
        return None
    try:
        return describe()
    except Exception as error:
        return f"<describe_caller failed: {error!r}>"
