"""The whole server's view of its pools, across the worker processes of one server.

Under a pre-forking server (gunicorn, uWSGI) each worker process has its own pools, and a
request for the dashboard's data reaches one worker. Here every worker of one server
publishes its pools' reports (:func:`~flask_dbpool.report.pool_report`) to a directory the
others read, and :func:`combine` turns the reports of one pool in every live worker into
one: totals under ``stats`` (counters and gauges summed, maxima as maxima), a ``workers``
list with each worker's own stats, and every worker's checkouts with its ``pid``.

- **Which server.** A process whose parent is a gunicorn or uWSGI master publishes under a
  directory named after that master (its pid and start time, so that a reused pid is never
  confused with it): ``$TMPDIR/flask-dbpool-<uid>/<master pid>-<start>/``, mode 0700. A
  process that is no server's worker (``flask run``, a script) publishes nothing: its view
  is its own. Linux only (it reads ``/proc``); elsewhere every process shows its own view.
- **When.** A daemon thread per process writes its file (atomically: write, then rename)
  at most once a second, off the request path; a reader reads only when asked.
- **Who is live.** A file whose process is gone, or not rewritten for
  :data:`STALE_AFTER` seconds, is skipped and removed; a worker's file is removed when it
  exits, and the directory with the last one.
"""

from __future__ import annotations

import atexit
import json
import os
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flask_dbpool.drivers.base import ServerLimits
from flask_dbpool.sizing import fleet_advice

__all__ = [
    "PUBLISH_INTERVAL",
    "STALE_AFTER",
    "Publisher",
    "combine",
    "forget_worker",
    "process_alive",
    "publisher",
    "server_directory",
    "server_view",
]

#: Seconds between two writes of a worker's reports.
PUBLISH_INTERVAL = 1.0
#: A worker's file not rewritten for this long is taken as gone (a hung or killed worker).
STALE_AFTER = 5.0
#: Reports of one process: pool name -> report.
Reports = dict[str, dict[str, Any]]

_SERVERS = (b"gunicorn", b"uwsgi")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_SUFFIX = ".json"


def server_directory(base: str | os.PathLike[str] | None = None) -> Path | None:
    """Where this process's server publishes, or ``None`` if this process is no
    pre-forking server's worker (see the module docstring)."""
    parent = os.getppid()
    try:
        cmdline = Path(f"/proc/{parent}/cmdline").read_bytes()
    except OSError:
        return None
    if not any(server in cmdline for server in _SERVERS):
        return None
    return _directory_of(parent, base)


def _directory_of(master: int, base: str | os.PathLike[str] | None = None) -> Path | None:
    """The directory of the server whose master is ``master`` (``None`` without /proc)."""
    try:
        started = Path(f"/proc/{master}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    root = Path(base) if base is not None else Path(tempfile.gettempdir())
    return root / f"flask-dbpool-{os.getuid()}" / f"{master}-{started}"


def forget_worker(pid: int) -> None:
    """Drop worker ``pid`` from its server's view at once: for gunicorn's ``child_exit``
    hook (in the master: a killed worker otherwise drops out within :data:`STALE_AFTER`
    seconds) or ``worker_exit`` (in the worker; its exit removes its file anyway). Does
    nothing outside a server."""
    directory = server_directory() if pid == os.getpid() else _directory_of(os.getpid())
    if directory is None:
        return
    (directory / f"{pid}{_SUFFIX}").unlink(missing_ok=True)
    try:
        directory.rmdir()  # the last worker gone: no directory left behind
    except OSError:
        pass


class Publisher:
    """Publishes this process's pool reports for the other workers of its server, and reads
    theirs. ``collect()`` returns the reports to publish (called from the writer thread).
    :attr:`directory` is ``None`` while this process is no server's worker."""

    def __init__(self, collect: Callable[[], Reports]) -> None:
        self.directory: Path | None = None
        self._collect = collect
        self._pid = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def follow(self) -> None:
        """Publish if this process is a server's worker (at creation, and in each forked
        child): find the directory, start the writer thread."""
        with self._lock:
            self.directory = directory = server_directory()
            self._pid = os.getpid()
            self._stop = threading.Event()
            if directory is None or not _private_directory(directory):
                self.directory = None
                return
            threading.Thread(target=self._run, name="flask-dbpool fleet", daemon=True).start()

    def after_fork_in_child(self) -> None:
        """In a forked child: forked by the master (``gunicorn --preload``), a new worker
        that publishes; forked by a publishing worker (a multiprocessing child), no worker
        at all, which publishes nothing and leaves the worker's file alone."""
        self._lock = threading.Lock()  # another thread of the parent may have held it
        if self.directory is not None:
            self.directory = None
            self._pid = os.getpid()
            return
        self.follow()

    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                self.write()
            except Exception:  # a report that failed this time: the next one may not
                pass
            stop.wait(PUBLISH_INTERVAL)

    def write(self) -> None:
        """Write this process's reports now (atomically: readers never see half a file).
        The directory is made again if another worker removed it meanwhile (it goes when
        it is empty, e.g. between a new worker's start and its first write)."""
        directory = self.directory
        if directory is None:
            return
        body = json.dumps({"pid": os.getpid(), "time": time.time(), "pools": self._collect()})
        try:
            _write_atomically(directory, body)
        except FileNotFoundError:
            if not _private_directory(directory):
                raise
            _write_atomically(directory, body)

    def others(self, name: str) -> list[tuple[int, dict[str, Any]]]:
        """``(pid, report)`` of pool ``name`` in every other live worker of this server, by
        pid (none outside a server). Removes the files of workers that are gone."""
        directory = self.directory
        if directory is None:
            return []
        own = os.getpid()
        found = []
        now = time.time()
        try:
            files = list(directory.glob(f"*{_SUFFIX}"))
        except OSError:
            return []
        for path in files:
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if pid == own:
                continue
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced, or gone
            if not process_alive(pid):
                path.unlink(missing_ok=True)  # gone: its file too
                continue
            if now - float(data.get("time", 0)) > STALE_AFTER:
                continue  # alive but not publishing (hung): left out, its file left alone
            report = data.get("pools", {}).get(name)
            if report is not None:
                found.append((pid, report))
        return sorted(found, key=lambda item: item[0])

    def stop(self) -> None:
        """Stop writing; remove this process's file, and the directory if it was the last."""
        self._stop.set()
        directory = self.directory
        if directory is None or self._pid != os.getpid():
            return  # not publishing, or inherited across fork: another process's file
        (directory / f"{os.getpid()}{_SUFFIX}").unlink(missing_ok=True)
        try:
            directory.rmdir()  # only if empty: other workers still publish otherwise
        except OSError:
            pass


def _write_atomically(directory: Path, body: str) -> None:
    """``<pid>.json`` in ``directory`` (written as ``<pid>.tmp``, then renamed; never
    through a symbolic link, readable by this user only)."""
    pid = os.getpid()
    temporary = directory / f"{pid}.tmp"
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(body)
    os.replace(temporary, directory / f"{pid}{_SUFFIX}")


def _private_directory(directory: Path) -> bool:
    """Create ``directory`` and its parent (``flask-dbpool-<uid>`` in the shared temp
    directory) as this user's, mode 0700 (an existing one of this user's is set to 0700);
    ``False`` (publish nothing) if either is a symbolic link or another user's: that user
    could then read the reports or write fake ones."""
    for path in (directory.parent, directory):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError:
            return False
        try:
            info = os.lstat(path)
        except OSError:
            return False
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            return False
        if info.st_uid != os.getuid():
            return False
        if info.st_mode & 0o077:
            try:
                os.chmod(path, 0o700)  # ours, but left open (an older version, a umask)
            except OSError:
                return False
    return True


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0; another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Held weakly: an app that is gone takes its publisher with it.
_publishers: weakref.WeakSet[Publisher] = weakref.WeakSet()


def publisher(collect: Callable[[], Reports]) -> Publisher:
    """A :class:`Publisher` for ``collect``: publishing now if this process is a server's
    worker, and in each forked child that is (``gunicorn --preload`` builds the app in the
    master); stopped, its file removed, at exit."""
    made = Publisher(collect)
    _publishers.add(made)
    made.follow()
    return made


def _after_fork_in_child() -> None:
    for made in list(_publishers):
        made.after_fork_in_child()


def _at_exit() -> None:
    for made in list(_publishers):
        made.stop()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)


# ---------------------------------------------------------------------- combining reports

_MAXIMA = frozenset({"wait_seconds_max"})


def combine(workers: Iterable[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """One report for one pool from each worker's ``(pid, report)`` (the first is the
    process answering; at least one, else ``ValueError``): totals under ``stats`` (numbers
    summed, ``wait_seconds_max`` as the maximum, histograms merged), every worker's
    checkouts with its ``pid`` (longest-held first), endpoint times merged, and
    ``workers``: ``[{"pid": …, "stats": …}]`` by pid. A worker of another version (a
    reload under way) whose histograms differ counts in the totals but not in them."""
    reports = list(workers)
    if not reports:
        raise ValueError("combine() needs at least one worker's report")
    first = reports[0][1]
    combined = dict(first)
    combined["stats"] = _sum_stats([report["stats"] for _, report in reports])
    combined["closed"] = any(report.get("closed") for _, report in reports)
    combined["checkouts"] = sorted(
        (
            {**checkout, "pid": pid}
            for pid, report in reports
            for checkout in report.get("checkouts", [])
        ),
        key=lambda checkout: -float(checkout.get("held_seconds", 0.0)),
    )
    endpoints: dict[str, dict[str, Any]] = {}
    for _, report in reports:
        for name, times in report.get("endpoints", {}).items():
            if name in endpoints:
                try:
                    endpoints[name] = {
                        kind: _sum_histogram(endpoints[name][kind], times[kind])
                        for kind in ("wait", "hold")
                    }
                except (KeyError, ValueError):  # another version's histograms
                    pass
            else:
                endpoints[name] = times
    combined["endpoints"] = endpoints
    combined["workers"] = sorted(
        ({"pid": pid, "stats": report["stats"]} for pid, report in reports),
        key=lambda worker: worker["pid"],
    )
    return combined


def _sum_stats(all_stats: list[dict[str, Any]]) -> dict[str, Any]:
    total = dict(all_stats[0])
    for stats in all_stats[1:]:
        for key, value in stats.items():
            mine = total.get(key)
            if isinstance(value, (bool, str)) or mine is None:
                continue
            if key in _MAXIMA:
                total[key] = max(mine, value)
            elif isinstance(value, (int, float)):
                total[key] = mine + value
            elif isinstance(value, dict) and "buckets" in value:
                if len(value["buckets"]) == len(mine.get("buckets", ())):  # same version
                    total[key] = _sum_histogram(mine, value)
            elif isinstance(value, dict):
                total[key] = {k: mine.get(k, 0) + value.get(k, 0) for k in {*mine, *value}}
    return total


def _sum_histogram(one: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Two JSON histograms (``HistogramSnapshot.as_dict``: same bucket bounds) as one."""
    return {
        "buckets": [
            {"le": mine["le"], "count": mine["count"] + theirs["count"]}
            for mine, theirs in zip(one["buckets"], other["buckets"], strict=True)
        ],
        "count": one["count"] + other["count"],
        "sum": one["sum"] + other["sum"],
        "max": max(one["max"], other["max"]),
    }


def server_view(limits: ServerLimits, combined: dict[str, Any]) -> dict[str, Any]:
    """The server's connections as the whole fleet sees them, for ``combined`` (a report
    from :func:`combine`): the database's ``max_connections`` and reserved ones, the
    connections the workers have open now, and whether every worker at its maximum
    (``pool_size + max_overflow``) would fit, with the doctor's suggestion if not."""
    workers = combined.get("workers") or [{"stats": combined["stats"]}]
    one = workers[0]["stats"]
    advice = fleet_advice(
        limits,
        workers=len(workers),
        pool_size=int(one["pool_size"]),
        max_overflow=int(one["max_overflow"]),
    )
    return {
        "server": limits.server,
        "max_connections": limits.max_connections,
        "reserved": limits.reserved,
        "available": limits.max_connections - limits.reserved,
        "open": combined["stats"]["open"],
        "workers": len(workers),
        "most": advice.fleet,
        "fits": advice.fits,
        "suggestion": advice.suggestion,
    }
