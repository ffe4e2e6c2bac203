"""Pool metrics across processes (gunicorn with PROMETHEUS_MULTIPROC_DIR): two real worker
processes write their pools' snapshots, one collector reports both, dead ones drop out."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backends import wait_until

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from flask_dbpool.metrics.multiprocess import MultiProcessCollector, mark_process_dead  # noqa: E402

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
