"""The chaos harness: the app of ``tests/chaos/app.py`` under real gunicorn, HTTP load from
keep-alive clients, database faults on a throwaway PostgreSQL cluster, and the figures.

Used by ``tests/test_chaos.py`` (short runs, invariants asserted) and by ``make chaos``
(``python tests/chaos/harness.py [--rounds 3] [--quiet 4] [--down 3]``: longer runs, a
table per worker class).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: pgcluster

from pgcluster import ThrowawayCluster  # noqa: E402

POOL_SIZE = 4
#: worker class -> (gunicorn arguments, worker processes)
WORKER_CLASSES: dict[str, tuple[list[str], int]] = {
    "gthread": (["-k", "gthread", "--threads", "8"], 2),
    "sync-preload": (["-k", "sync", "--preload"], 4),
    "gevent": (["-k", "gevent", "--worker-connections", "32"], 2),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gunicorn:
    """``tests/chaos/app.py`` served by gunicorn on a free loopback port (a context
    manager: stopped with SIGTERM on exit)."""

    def __init__(self, url: str, worker_class: str) -> None:
        args, self.workers = WORKER_CLASSES[worker_class]
        self.port = _free_port()
        env = dict(os.environ, CHAOS_URL=url, CHAOS_POOL_SIZE=str(POOL_SIZE))
        command = [sys.executable, "-m", "gunicorn", *args, "-w", str(self.workers)]
        command += ["-b", f"127.0.0.1:{self.port}", "--graceful-timeout", "5"]
        command += ["--log-level", "warning", "--chdir", str(HERE), "app:create_app()"]
        # Its log to a file, not a pipe: tracebacks of failed requests must never fill a
        # pipe nobody reads and block the workers.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in __exit__
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=self.log)

    def __enter__(self) -> Gunicorn:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"gunicorn exited: {self.log.read().decode()[-2000:]}")
            try:
                if self.get("/ping")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("gunicorn did not answer /ping within 30 s")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        finally:
            self.log.close()

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def worker_stats(self) -> dict[int, dict[str, Any]]:
        """Every worker's ``/stats`` (new connections until each pid answered)."""
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + 20
        while len(seen) < self.workers and time.monotonic() < deadline:
            status, body = self.get("/stats")
            if status == 200:
                data = json.loads(body)
                seen[int(data["pid"])] = data
        return seen


@dataclass
class Request:
    start: float
    end: float
    ok: bool
    error: str = ""


@dataclass
class Load:
    """``clients`` threads each looping ``GET /q`` on one keep-alive connection."""

    port: int
    clients: int = 16
    requests: list[Request] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for i in range(self.clients):
            thread = threading.Thread(target=self._run, name=f"chaos-client-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                conn.request("GET", "/q")
                response = conn.getresponse()
                body = response.read()
                ok, error = response.status == 200, "" if response.status == 200 else body[:80]
            except (OSError, http.client.HTTPException) as exc:
                ok, error = False, repr(exc)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            with self._lock:
                self.requests.append(Request(start, time.monotonic(), ok, str(error)))
        conn.close()

    def in_flight(self, moment: float) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.start <= moment <= r.end)

    def failed(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if not r.ok]

    def first_ok_after(self, moment: float) -> float | None:
        with self._lock:
            ends = [r.end for r in self.requests if r.ok and r.end >= moment]
        return min(ends) if ends else None


class Sessions:
    """Samples the app's server sessions (by ``application_name``, or with ``counter``)
    every 20 ms."""

    def __init__(
        self,
        cluster: ThrowawayCluster | None,
        tag: str,
        counter: Callable[[], int] | None = None,
    ) -> None:
        self.cluster, self.tag, self._counter = cluster, tag, counter
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def count(self) -> int:
        if self._counter is not None:
            return self._counter()
        assert self.cluster is not None
        with psycopg.connect(self.cluster.url, autocommit=True, connect_timeout=2) as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (self.tag,)
            ).fetchone()
            return int(row[0]) if row else 0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.most = max(self.most, self.count())
            except Exception:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def accepting_after(cluster: ThrowawayCluster, action: Callable[[], object]) -> float:
    """Run ``action`` (which starts the server) while polling it with plain connects every
    5 ms: the moment it first accepted one."""
    seen: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                psycopg.connect(cluster.url, connect_timeout=2).close()
            except psycopg.Error:
                time.sleep(0.005)
                continue
            seen.append(time.monotonic())
            return

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    action()
    watcher.join(15)
    stop.set()
    return seen[0]


@dataclass
class Outcome:
    """One chaos run of one worker class."""

    worker_class: str
    workers: int
    requests: int
    failed: int
    in_flight_at_faults: int
    recovery: float
    most_sessions: int
    leaked: int
    open_total: int
    sessions_after: int
    most_open_per_worker: int
    errors: list[str]


def _outcome(
    app: Gunicorn,
    load: Load,
    sessions: Sessions,
    worker_class: str,
    in_flight: int,
    recovered_from: float,
) -> Outcome:
    """Once the load stopped: every worker's books against the server's sessions."""
    first = load.first_ok_after(recovered_from)
    time.sleep(0.3)  # requests' teardowns run
    stats = app.worker_stats()
    open_total = sum(w["stats"]["open"] for w in stats.values())
    leaked = sum(w["stats"]["in_use"] + w["stats"]["waiting"] for w in stats.values())
    deadline = time.monotonic() + 5
    while (after := sessions.count()) != open_total and time.monotonic() < deadline:
        time.sleep(0.05)
    failed = load.failed()
    return Outcome(
        worker_class=worker_class,
        workers=app.workers,
        requests=len(load.requests),
        failed=len(failed),
        in_flight_at_faults=in_flight,
        recovery=(first - recovered_from) if first is not None else float("inf"),
        most_sessions=sessions.most,
        leaked=leaked,
        open_total=open_total,
        sessions_after=after,
        most_open_per_worker=max(w["most_open"] for w in stats.values()),
        errors=sorted({r.error[:100] for r in failed})[:5],
    )


def run(
    cluster: ThrowawayCluster, worker_class: str, *, quiet: float = 2.0, down: float = 1.0
) -> Outcome:
    """Load ``worker_class`` for ``quiet`` s, terminate every app session, ``quiet`` s more,
    stop the server for ``down`` s and start it again, ``quiet`` s more; measure."""
    tag = f"chaos_{uuid.uuid4().hex[:8]}"
    url = f"{cluster.url}?application_name={tag}&connect_timeout=3"
    with Gunicorn(url, worker_class) as app:
        sessions = Sessions(cluster, tag)
        load = Load(app.port)
        load.start()
        try:
            time.sleep(quiet)
            terminated = time.monotonic()
            with psycopg.connect(cluster.url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s",
                    (tag,),
                )
            time.sleep(quiet)
            stopped = time.monotonic()
            cluster.stop()
            time.sleep(down)
            up = accepting_after(cluster, cluster.start)
            time.sleep(quiet)
        finally:
            load.stop()
            sessions.stop()
        in_flight = load.in_flight(terminated) + load.in_flight(stopped)
        return _outcome(app, load, sessions, worker_class, in_flight, up)


def run_network_faults(
    cluster: ThrowawayCluster, worker_class: str, *, quiet: float = 2.0
) -> tuple[Outcome, float]:
    """The app reaching the server through a fault proxy (``tests/tcprelay.py``): ``quiet``
    s of load, every connection reset, ``quiet`` s, a black hole (nothing forwarded, no
    reset) for 2 s, ``quiet`` s, 50 ms of added latency for 2 s, ``quiet`` s. Returns the
    outcome (``in_flight_at_faults``: those in flight at the reset; ``recovery``: after
    the black hole ended, to the first request served) and the slowest request."""
    from tcprelay import TCPRelay

    tag = f"chaos_{uuid.uuid4().hex[:8]}"
    with TCPRelay("127.0.0.1", cluster.port) as relay:
        url = (
            f"postgresql://postgres@127.0.0.1:{relay.port}/{cluster.dbname}"
            f"?application_name={tag}&connect_timeout=3"
        )
        with Gunicorn(url, worker_class) as app:
            sessions = Sessions(cluster, tag)
            load = Load(app.port)
            load.start()
            try:
                time.sleep(quiet)
                reset_at = time.monotonic()
                relay.reset()
                time.sleep(quiet)
                relay.freeze()
                time.sleep(2.0)
                relay.thaw()
                thawed = time.monotonic()
                time.sleep(quiet)
                relay.latency = 0.05
                time.sleep(2.0)
                relay.latency = 0.0
                time.sleep(quiet)
            finally:
                load.stop()
                sessions.stop()
            slowest = max(r.end - r.start for r in load.requests)
            in_flight = load.in_flight(reset_at)
            outcome = _outcome(app, load, sessions, worker_class, in_flight, thawed)
            return outcome, slowest


def run_kills(
    url: str,
    count_sessions: Callable[[], int],
    kill_all: Callable[[], object],
    worker_class: str,
    *,
    quiet: float = 2.0,
) -> Outcome:
    """Any server (``url``): ``quiet`` s of load, every app session killed (``kill_all``),
    ``quiet`` s, killed again, ``quiet`` s. ``recovery``: from the end of the second kill
    to the first request served."""
    with Gunicorn(url, worker_class) as app:
        sessions = Sessions(None, "", count_sessions)
        load = Load(app.port)
        load.start()
        try:
            time.sleep(quiet)
            first_kill = time.monotonic()
            kill_all()
            time.sleep(quiet)
            second_kill = time.monotonic()
            kill_all()
            killed = time.monotonic()
            time.sleep(quiet)
        finally:
            load.stop()
            sessions.stop()
        in_flight = load.in_flight(first_kill) + load.in_flight(second_kill)
        return _outcome(app, load, sessions, worker_class, in_flight, killed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quiet", type=float, default=4.0, help="seconds between faults")
    parser.add_argument("--down", type=float, default=3.0, help="seconds the server is down")
    parser.add_argument("--worker-class", action="append", choices=list(WORKER_CLASSES))
    args = parser.parse_args()
    classes = args.worker_class or list(WORKER_CLASSES)
    rows: dict[str, list[Outcome]] = {name: [] for name in classes}
    with ThrowawayCluster() as cluster:
        for round_ in range(args.rounds):
            for name in classes:
                outcome = run(cluster, name, quiet=args.quiet, down=args.down)
                rows[name].append(outcome)
                print(f"round {round_ + 1} {name}: {outcome}", flush=True)
    print()
    print(f"{args.rounds} round(s) per worker class: {args.quiet:g} s of load, every app session")
    print(f"terminated, {args.quiet:g} s, the server stopped for {args.down:g} s, {args.quiet:g} s")
    print(
        "| worker class | requests | failed (in flight at the 2 faults) | recovery after "
        "restart ms, median [max] | most sessions (max allowed) | leaked |"
    )
    print("|---|---|---|---|---|---|")
    for name, outcomes in rows.items():
        recoveries = [o.recovery * 1000 for o in outcomes]
        print(
            f"| {name} | {sum(o.requests for o in outcomes):,} | "
            f"{sum(o.failed for o in outcomes)} ({sum(o.in_flight_at_faults for o in outcomes)}) "
            f"| {statistics.median(recoveries):.0f} [{max(recoveries):.0f}] | "
            f"{max(o.most_sessions for o in outcomes)} ({outcomes[0].workers * POOL_SIZE}) | "
            f"{sum(o.leaked for o in outcomes)} |"
        )


if __name__ == "__main__":
    main()
