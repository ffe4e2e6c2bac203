"""The dashboard's data for the whole server: every gunicorn worker publishes its pool's
report, whichever worker answers ``/data`` shows the totals and one entry per live worker
(real gunicorn, 3 workers, sync and gthread); a killed worker drops out and its replacement
appears; nothing is left in the temp directory after shutdown; a single process is
unchanged. And :func:`flask_dbpool.fleet.combine` on its own."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flask_dbpool.fleet import combine

TESTS = Path(__file__).resolve().parent
WORKERS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _data(port: int) -> dict[str, Any]:
    status, body = _get(port, "/_dbpool/data")
    assert status == 200, body
    return dict(json.loads(body))


def _wait_for(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def _server_directory(master: int) -> Path:
    started = Path(f"/proc/{master}/stat").read_text().rsplit(")", 1)[1].split()[19]
    return Path(tempfile.gettempdir()) / f"flask-dbpool-{os.getuid()}" / f"{master}-{started}"


def _gunicorn(postgres_url: str, worker_class: str) -> tuple[subprocess.Popen[bytes], int, Any]:
    port = _free_port()
    command = [sys.executable, "-m", "gunicorn", "-w", str(WORKERS), "-k", worker_class]
    command += ["-b", f"127.0.0.1:{port}", "--chdir", str(TESTS), "--log-level", "warning"]
    command += ["--graceful-timeout", "5", "-c", str(TESTS / "fleet_gunicorn_conf.py")]
    command += ["fleet_app:app"]
    if worker_class == "gthread":
        command += ["--threads", "4"]
    log = tempfile.TemporaryFile()  # noqa: SIM115 -- closed by _stop
    server = subprocess.Popen(
        command, env={**os.environ, "FLEET_URL": postgres_url}, stderr=log, stdout=log
    )
    if not _wait_for(lambda: _ping(port)):
        _stop(server, log)
        pytest.fail("gunicorn did not start")
    return server, port, log


def _stop(server: subprocess.Popen[bytes], log: Any) -> str:
    server.send_signal(signal.SIGTERM)
    server.wait(20)
    log.seek(0)
    output = log.read().decode(errors="replace")
    log.close()
    return str(output)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the fleet view reads /proc")
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_every_read_shows_the_whole_server(postgres_url: str, worker_class: str) -> None:
    server, port, log = _gunicorn(postgres_url, worker_class)
    output = ""
    try:
        directory = _server_directory(server.pid)
        requests = 60
        for _ in range(requests):
            assert _get(port, "/q")[0] == 200
        time.sleep(1.5)  # every worker has published since (once a second)
        reads = [_data(port) for _ in range(6)]
        for data in reads:
            assert len(data["workers"]) == WORKERS, data["workers"]
            assert data["stats"]["acquired"] >= requests
            assert data["stats"]["pool_size"] == 2 * WORKERS
        totals = {data["stats"]["acquired"] for data in reads}
        assert len(totals) == 1, totals  # the same whichever worker answered
        # Read once per worker, in the background, from an idle connection.
        server_view = _wait_for(lambda: _data(port).get("server"), 5.0)
        assert server_view["max_connections"] > server_view["reserved"] >= 0
        assert server_view["workers"] == WORKERS and server_view["most"] == 2 * WORKERS
        assert server_view["open"] == reads[0]["stats"]["open"] and server_view["fits"]
        url = f"http://127.0.0.1:{port}/_dbpool"

        def status_with_server() -> str | None:
            out = _status_from(url)  # answered by a worker that has read the limits?
            return out if "server: " in out else None

        status = _wait_for(status_with_server, 10.0)
        assert status, "no worker showed the server's limits"
        assert f"workers: {WORKERS} (the figures above are their totals)" in status
        assert f"pool_size       2 per worker ({2 * WORKERS} in all)" in status
        assert f"by {WORKERS} worker(s) of" in status and ": fits" in status
        pids = {worker["pid"] for worker in reads[0]["workers"]}
        assert sum(w["stats"]["acquired"] for w in reads[0]["workers"]) == totals.pop()
        assert len(list(directory.glob("*.json"))) == WORKERS

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)  # gunicorn starts a replacement
        # The master's child_exit hook (forget_worker) removes its file at once, before any
        # reader finds it dead.
        assert _wait_for(lambda: not (directory / f"{victim}.json").exists(), 3.0)

        def replaced() -> bool:
            now = {worker["pid"] for worker in _data(port)["workers"]}
            return victim not in now and len(now) == WORKERS

        assert _wait_for(replaced, 15.0), _data(port)["workers"]
    finally:
        output = _stop(server, log)
    assert not directory.exists() or not any(directory.iterdir()), (
        list(directory.iterdir()),
        output[-2000:],
    )


def _status_from(url: str) -> str:
    """``flask dbpool status --from url``, run from an app of this process."""
    from flask import Flask

    from flask_dbpool import DBPool

    app = Flask("cli")
    app.config.update(DBPOOL_URL="sqlite:///:memory:")
    db = DBPool(app)
    try:
        result = app.test_cli_runner().invoke(args=["dbpool", "status", "--from", url])
        assert result.exit_code == 0, result.output
        return str(result.output)
    finally:
        db.get_pool(app).close()


def _ping(port: int) -> bool:
    try:
        return _get(port, "/pid")[0] == 200
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the fleet view reads /proc")
def test_the_page_shows_every_worker(postgres_url: str, tmp_path: Path) -> None:
    """In a browser: the per-worker table lists the 3 workers, the totals are theirs, and
    the connections checked out under load carry their worker's pid."""
    from test_dashboard_browser import _chromium, _png_colours

    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    server, port, log = _gunicorn(postgres_url, "gthread")
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            _get(port, "/slow")

    loaders = [threading.Thread(target=load, daemon=True) for _ in range(6)]
    for loader in loaders:
        loader.start()
    shot = Path(os.environ.get("DBPOOL_FLEET_SCREENSHOT") or tmp_path / "workers.png")
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 1300})
                page.goto(f"http://127.0.0.1:{port}/_dbpool/")
                page.wait_for_function(
                    "document.querySelectorAll('#workers tbody tr').length === 3",
                    timeout=20_000,
                )
                page.wait_for_function(
                    "Number(document.body.dataset.updates || 0) >= 3", timeout=20_000
                )
                pids = page.locator("#workers tbody tr td:first-child").all_inner_texts()
                assert len(set(pids)) == WORKERS
                opened = page.locator("#workers tbody tr td:nth-child(2)").all_inner_texts()
                total = page.locator("#g-open").inner_text()
                assert total.endswith(f"/ {2 * WORKERS}")  # the server's maximum
                assert int(total.split("/")[0]) == sum(int(n) for n in opened)
                checkout_pids = page.locator("#checkouts tbody tr td:nth-child(2)")
                assert set(checkout_pids.all_inner_texts()) <= set(pids)
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    finally:
        stop.set()
        for loader in loaders:
            loader.join(15)
        _stop(server, log)
    assert _png_colours(shot) > 8


def test_a_single_process_shows_itself(postgres_url: str) -> None:
    from flask import Flask

    from flask_dbpool import DBPool

    app = Flask("single")
    app.config.update(DBPOOL_URL=postgres_url, DBPOOL_DASHBOARD=True, DBPOOL_POOL_SIZE=2)
    db = DBPool(app)
    try:
        with app.app_context():
            db.connection.cursor().execute("SELECT 1")
        data = app.test_client().get("/_dbpool/data").get_json()
        assert data["workers"] == [{"pid": os.getpid(), "stats": data["stats"]}]
        assert data["stats"]["acquired"] == 1
        # The limits are read once, in the background, from an idle connection.
        client = app.test_client()
        server = _wait_for(lambda: client.get("/_dbpool/data").get_json().get("server"), 5.0)
        assert server["workers"] == 1 and server["most"] == 2 + 10
    finally:
        db.get_pool(app).close()


def test_combine_sums_counters_keeps_maxima_and_tags_checkouts() -> None:
    def report(acquired: int, wait_max: float, held: float) -> dict[str, Any]:
        buckets = [{"le": 0.1, "count": 1}, {"le": "+Inf", "count": 2}]
        histogram = {"buckets": buckets, "count": 3, "sum": 0.5, "max": wait_max}
        return {
            "pool": "p",
            "target": "t",
            "closed": False,
            "stats": {
                "name": "p",
                "acquired": acquired,
                "wait_seconds_max": wait_max,
                "closed_by_reason": {"idle": 1},
                "wait_time": histogram,
            },
            "checkouts": [{"held_seconds": held, "thread": "x"}],
            "endpoints": {"e": {"wait": histogram, "hold": histogram}},
        }

    combined = combine([(20, report(5, 0.1, 1.0)), (10, report(7, 0.4, 3.0))])
    stats = combined["stats"]
    assert (stats["name"], stats["acquired"], stats["wait_seconds_max"]) == ("p", 12, 0.4)
    assert stats["closed_by_reason"] == {"idle": 2}
    assert stats["wait_time"] == {
        "buckets": [{"le": 0.1, "count": 2}, {"le": "+Inf", "count": 4}],
        "count": 6,
        "sum": 1.0,
        "max": 0.4,
    }
    assert [c["pid"] for c in combined["checkouts"]] == [10, 20]  # longest-held first
    assert combined["endpoints"]["e"]["hold"]["count"] == 6
    assert [w["pid"] for w in combined["workers"]] == [10, 20]


def test_server_view_warns_when_the_workers_would_not_fit() -> None:
    from flask_dbpool.drivers.base import ServerLimits
    from flask_dbpool.fleet import server_view

    limits = ServerLimits("PostgreSQL 15", max_connections=20, reserved=3, sessions=5)
    stats = {"open": 12, "pool_size": 5, "max_overflow": 5}
    combined = {"stats": stats, "workers": [{"pid": n, "stats": stats} for n in range(2)]}
    fits = server_view(limits, combined)
    assert (fits["available"], fits["most"], fits["fits"]) == (17, 20, False)
    assert "DBPOOL_POOL_SIZE=5 and DBPOOL_MAX_OVERFLOW=3" in fits["suggestion"]
    one = server_view(limits, {"stats": stats, "workers": combined["workers"][:1]})
    assert (one["most"], one["fits"], one["suggestion"]) == (10, True, "")


def test_the_directory_is_private(tmp_path: Path) -> None:
    from flask_dbpool.fleet import _private_directory

    server = tmp_path / "flask-dbpool-x" / "123-456"
    assert _private_directory(server)
    assert (server.stat().st_mode & 0o777, server.parent.stat().st_mode & 0o777) == (0o700, 0o700)
    server.parent.chmod(0o755)  # ours but open: tightened
    assert _private_directory(server) and server.parent.stat().st_mode & 0o777 == 0o700
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    trap = tmp_path / "trap"
    trap.symlink_to(elsewhere)  # another user's symlink in /tmp, say
    assert not _private_directory(trap / "123-456")
    assert not (elsewhere / "123-456").exists()


def test_publisher_files_liveness_and_forks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer makes the directory again if another worker removed it; a reader drops a
    dead worker's file but leaves a live, stale one alone (only out of the view); a process
    forked by a publishing worker is no worker and does not publish."""
    from flask_dbpool.fleet import Publisher, _private_directory, publisher
    from forking import in_child

    directory = tmp_path / "flask-dbpool-x" / "1-2"
    assert _private_directory(directory)
    made = Publisher(lambda: {"p": {"stats": {"open": 1}, "checkouts": []}})
    made.directory = directory
    directory.rmdir()  # the last other worker left before our first write
    made.write()
    assert (directory / f"{os.getpid()}.json").exists()
    assert (directory / f"{os.getpid()}.json").stat().st_mode & 0o777 == 0o600

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": os.getppid(), "time": time.time() - 60, "pools": {"p": {}}}
    (directory / f"{os.getppid()}.json").write_text(json.dumps(stale))
    gone = {"pid": dead.pid, "time": time.time(), "pools": {"p": {}}}
    (directory / f"{dead.pid}.json").write_text(json.dumps(gone))
    assert made.others("p") == []
    assert (directory / f"{os.getppid()}.json").exists()  # alive: left alone
    assert not (directory / f"{dead.pid}.json").exists()  # gone: removed

    worker = publisher(lambda: {})  # not a server's worker here: publishes nothing
    assert worker.directory is None
    worker.directory = directory  # as in a gunicorn worker...
    from flask_dbpool import fleet

    # ...whose children's parent (the worker) would look like a server to the detection
    monkeypatch.setattr(fleet, "server_directory", lambda base=None: directory)

    def child() -> str:
        return str(worker.directory)

    assert in_child(child) == "None"  # its fork is no worker: it does not publish
    worker.directory = None


def test_combine_edge_cases() -> None:
    with pytest.raises(ValueError, match="at least one"):
        combine([])
    buckets = [{"le": 0.1, "count": 1}, {"le": "+Inf", "count": 0}]
    new = {
        "stats": {"open": 1, "wait_time": {"buckets": buckets, "count": 1, "sum": 0.1, "max": 0.1}}
    }
    old = {
        "stats": {
            "open": 2,
            "wait_time": {"buckets": buckets[:1], "count": 1, "sum": 0.1, "max": 0.1},
        }
    }  # another version's
    combined = combine([(1, new), (2, old)])  # no checkouts key either: a reload under way
    assert combined["stats"]["open"] == 3 and combined["stats"]["wait_time"]["count"] == 1
