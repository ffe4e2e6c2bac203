"""Pool metrics across processes (gunicorn with PROMETHEUS_MULTIPROC_DIR): two real worker
processes write their pools' snapshots, one collector reports both, dead ones drop out."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from backends import Backend, MakePool, query, wait_until
from flask_dbpool import Pool

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from flask_dbpool.metrics.multiprocess import (  # noqa: E402
    MultiProcessCollector,
    SnapshotWriter,
    mark_process_dead,
)

CHILD_TIMEOUT = 30.0

WORKER = textwrap.dedent(
    """
    import sys
    from flask_dbpool import Pool
    from flask_dbpool.metrics.multiprocess import shared_writer

    url, directory, checkouts = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pool = Pool(url, name="app", pool_size=2)
    for _ in range(checkouts):
        with pool.connection() as conn:
            conn.cursor().execute("SELECT 1")
    shared_writer(directory).add(pool)
    print("ready", flush=True)
    sys.stdin.readline()  # stay alive until the test is done
    """
)


def _scrape(directory: Path) -> dict[tuple[str, str], float]:
    registry = prometheus_client.CollectorRegistry()
    registry.register(MultiProcessCollector(directory))
    text = prometheus_client.generate_latest(registry).decode()
    checkouts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "flask_dbpool_checkouts_total":
                checkouts[(sample.labels["pool_name"], sample.labels["pid"])] = sample.value
    return checkouts


def test_two_workers_are_both_reported(tmp_path: Path, sqlite_url: str) -> None:
    directory = tmp_path / "prom"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, sqlite_url, str(directory), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in (3, 5)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        checkouts = _scrape(directory)
        assert checkouts == {
            ("app", str(workers[0].pid)): 3,
            ("app", str(workers[1].pid)): 5,
        }
        # A worker that exits drops out (its file is removed when found dead).
        workers[0].communicate("\n", timeout=30)
        wait_until(lambda: workers[0].poll() is not None, 10, "the first worker to exit")
        assert _scrape(directory) == {("app", str(workers[1].pid)): 5}
        assert not (directory / f"flask_dbpool_{workers[0].pid}.json").exists()
        # gunicorn's child_exit hook can remove a worker's file at once.
        mark_process_dead(workers[1].pid, directory)
        assert _scrape(directory) == {}
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.communicate("\n", timeout=30)


def test_flask_endpoint_in_multiprocess_mode(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from flask import Flask

    from flask_dbpool import DBPool

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    app = Flask("mp-app")
    app.config.update(DBPOOL_URL=sqlite_url, DBPOOL_METRICS_ENDPOINT="/metrics")
    db = DBPool(app)
    try:
        with app.app_context():
            db.connection.cursor().execute("SELECT 1")
        text = app.test_client().get("/metrics").get_data(as_text=True)
        samples = [
            s
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "flask_dbpool_checkouts_total"
        ]
        assert [(s.labels["pid"], s.value) for s in samples] == [(str(os.getpid()), 1)]
        assert "flask_dbpool_endpoint_hold_time_seconds" not in text  # per process only
        assert (tmp_path / f"flask_dbpool_{os.getpid()}.json").exists()
    finally:
        app.extensions["dbpool"].close()


def _scrape_until(
    directory: Path, expected: dict[tuple[str, str], float], timeout: float = 10.0
) -> dict[tuple[str, str], float]:
    """Scrape until the result is ``expected`` or ``timeout`` passed; the last scrape."""
    deadline = time.monotonic() + timeout
    while (found := _scrape(directory)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def test_a_process_is_reported_from_the_start(tmp_path: Path, sqlite_url: str) -> None:
    """A worker that has not served yet is reported (at zero): the fleet's maximum counts it;
    the writer's thread alone keeps the figures current."""
    with Pool(sqlite_url, name="app", pool_size=1) as pool:
        SnapshotWriter(tmp_path, interval=0.05).add(pool)
        assert _scrape(tmp_path) == {("app", str(os.getpid())): 0}
        with pool.connection() as conn:
            query(conn, "SELECT 1")
        expected = {("app", str(os.getpid())): 1}
        assert _scrape_until(tmp_path, expected) == expected


class _ForkedWorker:
    """A child forked the way gunicorn forks a worker: it checks out ``checkouts``
    connections, says so, then stays alive (bounded) until :meth:`stop`."""

    def __init__(self, pool: Pool, checkouts: int) -> None:
        ready_r, ready_w = os.pipe()
        stop_r, stop_w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                for _ in range(checkouts):
                    with pool.connection() as conn:
                        query(conn, "SELECT 1")
                os.write(ready_w, b"ready")
                select.select([stop_r], [], [], CHILD_TIMEOUT)
                code = 0
            except BaseException as exc:
                os.write(ready_w, f"ERROR {type(exc).__name__}: {exc}".encode())
            finally:
                os._exit(code)
        os.close(ready_w)
        os.close(stop_r)
        self.pid = pid
        self._ready = ready_r
        self._stop: int | None = stop_w
        self._exit_code: int | None = None

    def wait_ready(self) -> None:
        if not select.select([self._ready], [], [], CHILD_TIMEOUT)[0]:
            pytest.fail(f"forked worker {self.pid} not ready after {CHILD_TIMEOUT} s")
        assert os.read(self._ready, 4096) == b"ready"

    def stop(self) -> int:
        """Let the child exit; its exit code (it is killed if it does not exit in time)."""
        if self._exit_code is not None:
            return self._exit_code
        if self._stop is not None:
            os.write(self._stop, b"x")
            os.close(self._stop)
            os.close(self._ready)
            self._stop = None
        deadline = time.monotonic() + CHILD_TIMEOUT
        while True:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self._exit_code = os.waitstatus_to_exitcode(status)
                return self._exit_code
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                self._exit_code = -signal.SIGKILL
                pytest.fail(f"forked worker {self.pid} still running after {CHILD_TIMEOUT} s")
            time.sleep(0.01)


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_preload_fork_reports_each_worker_and_not_the_master(
    backend: Backend, make_pool: MakePool, tmp_path: Path
) -> None:
    """gunicorn --preload: init_app (so the writer) runs in the master, which then forks the
    workers. Each worker is reported with its own pool; the master, which never serves, is
    not, although it used the database while loading the app."""
    directory = tmp_path / "prom"
    pool = make_pool(backend.url, name="app", pool_size=2)
    with pool.connection() as conn:  # e.g. a query while the app loads, before the fork
        query(conn, "SELECT 1")
    SnapshotWriter(directory, interval=0.05).add(pool)  # what init_app does
    master = str(os.getpid())
    assert _scrape(directory) == {("app", master): 1}  # so far, a process using its pool

    workers: list[_ForkedWorker] = []
    try:
        for checkouts in (3, 7):
            workers.append(_ForkedWorker(pool, checkouts))
        for worker in workers:
            worker.wait_ready()
        expected = {("app", str(workers[0].pid)): 3, ("app", str(workers[1].pid)): 7}
        # Nothing but the fork started the workers' writers.
        assert _scrape_until(directory, expected) == expected
        assert not (directory / f"flask_dbpool_{master}.json").exists()

        # gunicorn's child_exit hook removes a worker's file at once...
        mark_process_dead(workers[0].pid, directory)
        assert _scrape(directory) == {("app", str(workers[1].pid)): 7}
        assert workers[0].stop() == 0
        assert _scrape(directory) == {("app", str(workers[1].pid)): 7}
        assert not (directory / f"flask_dbpool_{workers[0].pid}.json").exists()
        # ...and an exited worker's file is dropped when found dead.
        assert workers[1].stop() == 0
        assert _scrape(directory) == {}
        assert list(directory.glob("flask_dbpool_*.json")) == []

        # A forking process that does check out connections after the fork is reported.
        with pool.connection() as conn:
            query(conn, "SELECT 1")
        assert _scrape_until(directory, {("app", master): 2}) == {("app", master): 2}
    finally:
        for worker in workers:
            worker.stop()
