"""Pool metrics across the worker processes of a pre-forking server (gunicorn).

With ``PROMETHEUS_MULTIPROC_DIR`` set, ``prometheus_client`` does not run custom collectors
in the process that serves a scrape, so one worker cannot see the other workers' pools.
Here each process writes its pools' snapshots into that directory (atomically, every second
from a daemon thread, and at each scrape), and :class:`MultiProcessCollector` reads them all
back, labelling each series with the worker's ``pid``. Files of processes that are gone are
skipped and removed; call :func:`mark_process_dead` from gunicorn's ``child_exit`` hook to
remove them at once.

Which processes are reported: every process with a writer, from the start, except one that
has forked: it drops out at the fork and comes back only at its next checkout. With
``gunicorn --preload`` the writer is set up in the master, before the fork: each forked
worker gets a running writer of its own (its pools start empty there, counters at zero) and
is reported at once, idle or not; the master's file is removed when it forks, so the master,
which serves no requests, is not reported as a ``pid`` of its own even if it used the
database while loading the app (connections it opened then stay open in it, unreported).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask_dbpool.fleet import process_alive
from flask_dbpool.metrics.prometheus import PoolCollector, prometheus_core
from flask_dbpool.stats import HistogramSnapshot

if TYPE_CHECKING:
    from flask_dbpool.stats import MeteredPool as Pool

__all__ = ["MultiProcessCollector", "SnapshotWriter", "mark_process_dead", "shared_writer"]

_PREFIX = "flask_dbpool_"


def _file_for(directory: Path, pid: int) -> Path:
    return directory / f"{_PREFIX}{pid}.json"


def mark_process_dead(pid: int, directory: str | os.PathLike[str] | None = None) -> None:
    """Forget worker ``pid``'s pools (gunicorn ``child_exit``)."""
    base = Path(directory or os.environ["PROMETHEUS_MULTIPROC_DIR"])
    _file_for(base, pid).unlink(missing_ok=True)


class SnapshotWriter:
    """Writes this process's pools to ``directory`` every ``interval`` seconds (see the module
    docstring for a process that forks). Runs on in forked children."""

    def __init__(self, directory: str | os.PathLike[str], interval: float = 1.0) -> None:
        self._directory = Path(directory)
        self._interval = interval
        # Each pool (held weakly) with its checkout count when this process last forked
        # (None: it has not): a process that forked is reported again once one pool has
        # counted more.
        self._pools: weakref.WeakKeyDictionary[Pool, int | None] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        _call_after_fork(self._after_fork_in_parent, self._after_fork_in_child)

    def add(self, pool: Pool) -> None:
        """Report ``pool`` (held weakly) and make sure the writer runs in this process."""
        pool.track_use_time()
        with self._lock:
            self._pools.setdefault(pool, None)
            if self._thread is None or self._pid != os.getpid():  # new, or a forked child
                self._start()
        self.write()

    def write(self) -> None:
        """Write the snapshot now (atomically: readers never see half a file), unless this
        process forked and has not checked out a connection since."""
        with self._lock:  # one writer at a time, and none while _after_fork_in_parent runs
            pools = [
                (pool.name, pool.stats(), since, pool.config.min_idle)
                for pool, since in self._pools.items()
            ]
            if not any(since is None or stats.acquired > since for _, stats, since, _ in pools):
                return
            data = {
                "pid": os.getpid(),
                # The name the pool is shown under (an engine's may differ from its pool's).
                "pools": [
                    {**stats.as_dict(), "name": name, "min_idle": min_idle}
                    for name, stats, _, min_idle in pools
                ],
            }
            self._directory.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self._directory, prefix=".tmp-")
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle)
            os.replace(temporary, _file_for(self._directory, os.getpid()))

    def _start(self) -> None:
        """Start the writing thread of this process (under the lock)."""
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=self._run, name="flask-dbpool metrics writer", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        event = threading.Event()
        while not event.wait(self._interval):
            if self._pid != os.getpid():
                return
            try:
                self.write()
            except OSError:
                pass  # the directory went away; try again next time

    def _after_fork_in_parent(self) -> None:
        """Stop reporting this process until it checks out a connection again, and remove
        its file now: a pre-forking master must not stay reported as a phantom worker."""
        with self._lock:
            for pool in list(self._pools):
                self._pools[pool] = pool.stats().acquired
            try:
                _file_for(self._directory, os.getpid()).unlink(missing_ok=True)
            except OSError:
                pass

    def _after_fork_in_child(self) -> None:
        """Run on in the child, for its own pools (which the pool already emptied)."""
        self._lock = threading.Lock()  # another parent thread may have held it at the fork
        self._thread = None
        # The pools' counters restart at zero in the child. A new mapping: a parent thread
        # may have been iterating over the old one (its iteration guard would never exit).
        self._pools = weakref.WeakKeyDictionary(dict.fromkeys(list(self._pools), None))
        if len(self._pools):
            self._start()


# The fork hooks of every writer of the process, in creation order: each writer registers its
# own bound methods, held weakly (a started writer's thread keeps its writer alive).
_Hook = weakref.WeakMethod[Callable[[], None]]
_fork_hooks: list[tuple[_Hook, _Hook]] = []
_fork_hooks_lock = threading.Lock()


def _call_after_fork(in_parent: Callable[[], None], in_child: Callable[[], None]) -> None:
    """Call the bound methods ``in_parent`` and ``in_child`` after each fork (in the parent
    and in the child) for as long as their object lives."""
    with _fork_hooks_lock:
        _fork_hooks[:] = [hooks for hooks in _fork_hooks if hooks[0]() is not None]
        _fork_hooks.append((weakref.WeakMethod(in_parent), weakref.WeakMethod(in_child)))


def _after_fork_in_parent() -> None:
    for in_parent, _ in list(_fork_hooks):
        hook = in_parent()
        if hook is not None:
            hook()


def _after_fork_in_child() -> None:
    global _fork_hooks_lock, _writers_lock
    # Another parent thread may have held either lock at the fork.
    _fork_hooks_lock = threading.Lock()
    _writers_lock = threading.Lock()
    for _, in_child in list(_fork_hooks):
        hook = in_child()
        if hook is not None:
            hook()


# flask_dbpool._fork registered its hook when flask_dbpool.pool was imported (by the package,
# before this module): hooks run in the child in registration order, so the pools are reset
# before their writers restart.
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


_writers: dict[str, SnapshotWriter] = {}
_writers_lock = threading.Lock()


def shared_writer(directory: str | os.PathLike[str]) -> SnapshotWriter:
    """The process's :class:`SnapshotWriter` for ``directory`` (one per directory)."""
    key = os.fspath(directory)
    with _writers_lock:
        writer = _writers.get(key)
        if writer is None:
            writer = _writers[key] = SnapshotWriter(key)
        return writer


class MultiProcessCollector:
    """Reads every live worker's snapshot from ``directory``: the metrics of
    :class:`~flask_dbpool.metrics.prometheus.PoolCollector`, with a ``pid`` label."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._core = prometheus_core()
        self._directory = Path(directory)

    def describe(self) -> Iterable[Any]:
        """Nothing: lets the registry accept the collector without a first scrape."""
        return []

    def snapshots(self) -> list[tuple[int, dict[str, Any]]]:
        """``(pid, pool stats dict)`` for each pool of each live process."""
        found: list[tuple[int, dict[str, Any]]] = []
        for path in sorted(self._directory.glob(f"{_PREFIX}*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            pid = int(data["pid"])
            if not process_alive(pid):
                path.unlink(missing_ok=True)
                continue
            found.extend((pid, pool) for pool in data["pools"])
        return found

    def collect(self) -> Iterator[Any]:
        """The metric families of every pool of every live worker."""
        collector = PoolCollector()
        families = collector.families(extra_labels=["pid"])
        for pid, pool in self.snapshots():
            collector.add_snapshot(
                families,
                pool["name"],
                _Stats(pool),
                pool["min_idle"],
                extra=[str(pid)],
            )
        yield from families.values()


class _Stats:
    """A stats dict read back from JSON, with the attributes PoolCollector reads."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)
        self.wait_time = _histogram_from(data["wait_time"])
        self.create_time = _histogram_from(data["create_time"])
        self.use_time = _histogram_from(data["use_time"])


def _histogram_from(data: dict[str, Any]) -> HistogramSnapshot:
    return HistogramSnapshot(
        tuple(int(bucket["count"]) for bucket in data["buckets"]),
        int(data["count"]),
        float(data["sum"]),
        float(data["max"]),
    )
