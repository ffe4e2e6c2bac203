"""``flask dbpool status|check|doctor`` through Flask's CliRunner, against real databases."""

from __future__ import annotations

import re
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from backends import Backend, query, wait_until
from flask_dbpool import DBPool
from flask_dbpool.drivers.base import ServerLimits
from flask_dbpool.flask.cli import _distribution
from flask_dbpool.sizing import fleet_advice
from flask_dbpool.stats import Histogram

MakeApp = Callable[..., Flask]


@pytest.fixture
def app_for() -> Iterator[MakeApp]:
    apps: list[Flask] = []

    def make(url: str, **config: object) -> Flask:
        app = Flask("cli-test")
        app.config.update(DBPOOL_URL=url, **config)
        DBPool(app)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["dbpool"].close()


def _run(app: Flask, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = app.test_cli_runner().invoke(args=["dbpool", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_check_reports_server_and_latency(backend: Backend, app_for: MakeApp) -> None:
    code, out, err = _run(app_for(backend.url), "check", "--count", "5")
    assert code == 0, (out, err)
    assert out.startswith("OK: ")
    expected = {"sqlite": "SQLite 3.", "postgres": "PostgreSQL ", "mysql": ""}[backend.name]
    server = re.search(r"^server\s+(.+)$", out, re.M)
    assert server and server.group(1).startswith(expected), out
    if backend.name == "mysql":
        assert server.group(1).startswith(("MariaDB ", "MySQL ")), out
    trips = re.search(r"min ([\d.]+) / median ([\d.]+) / max ([\d.]+) ms over 5 ping", out)
    assert trips, out
    low, mid, high = (float(x) for x in trips.groups())
    assert 0 <= low <= mid <= high


def test_check_fails_with_the_cause(app_for: MakeApp) -> None:
    pytest.importorskip("psycopg")
    app = app_for("postgresql://postgres:SeCrEt@127.0.0.1:1/test")
    code, out, err = _run(app, "check", "--timeout", "0.5")
    assert code == 1
    assert "FAILED" in err and "Connection refused" in err
    assert "cause: OperationalError" in err
    assert "SeCrEt" not in out + err


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_doctor_reads_the_servers_limit(backend: Backend, app_for: MakeApp) -> None:
    sql = {"postgres": "SHOW max_connections", "mysql": "SELECT @@max_connections"}
    max_connections = int(backend.admin_query(sql[backend.name])[0][0])
    app = app_for(backend.url, DBPOOL_POOL_SIZE=2, DBPOOL_MAX_OVERFLOW=1)

    code, out, err = _run(app, "doctor", "--workers", "3")
    assert code == 0, (out, err)
    assert re.search(rf"^max_connections\s+{max_connections}$", out, re.M), out
    assert "3 x 3 = 9" in out
    assert "OK: fits" in out
    assert "sessions open now:" in out

    # More workers than the server can take: exit 1 with a concrete suggestion.
    workers = max_connections  # x 3 each
    code, out, err = _run(app, "doctor", env={"WEB_CONCURRENCY": str(workers)})
    assert code == 1, (out, err)
    assert f"{workers} (WEB_CONCURRENCY)" in out
    assert "PROBLEM:" in out and "suggestion:" in out
    assert "raise max_connections to at least" in out


def test_doctor_on_sqlite_has_no_limit(sqlite_url: str, app_for: MakeApp) -> None:
    code, out, err = _run(app_for(sqlite_url), "doctor")
    assert code == 0, (out, err)
    assert "no connection limit" in out


def test_doctor_rejects_bad_worker_counts(sqlite_url: str, app_for: MakeApp) -> None:
    app = app_for(sqlite_url)
    code, _, err = _run(app, "doctor", "--workers", "0")
    assert code == 2 and "--workers" in err
    code, _, err = _run(app, "doctor", env={"WEB_CONCURRENCY": "many"})
    assert code == 2 and "WEB_CONCURRENCY must be an integer" in err


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_status_shows_settings_and_counters(backend: Backend, app_for: MakeApp) -> None:
    app = app_for(backend.url, DBPOOL_POOL_SIZE=3, DBPOOL_LEAK_THRESHOLD=30)
    with app.app_context():
        with app.extensions["dbpool"].connection():
            pass
    code, out, err = _run(app, "status")
    assert code == 0, (out, err)
    assert re.search(r"^pool_size\s+3$", out, re.M)
    assert re.search(r"^leak_threshold\s+30 s$", out, re.M)
    assert re.search(r"^acquired\s+1$", out, re.M)
    assert re.search(r"^open\s+1$", out, re.M)


def test_fleet_advice_arithmetic() -> None:
    limits = ServerLimits("PostgreSQL 16", max_connections=100, reserved=3, sessions=0)
    ok = fleet_advice(limits, workers=4, pool_size=10, max_overflow=10, others=10)
    assert (ok.fits, ok.fleet, ok.budget, ok.spare) == (True, 80, 87, 7)
    bad = fleet_advice(limits, workers=8, pool_size=10, max_overflow=10)
    assert not bad.fits
    assert "DBPOOL_POOL_SIZE=10 and DBPOOL_MAX_OVERFLOW=2" in bad.suggestion  # 8 x 12 <= 97
    assert "at least 163" in bad.suggestion  # 160 + 3 reserved
    hopeless = fleet_advice(limits, workers=200, pool_size=1, max_overflow=0)
    assert "PgBouncer" in hopeless.suggestion
    with pytest.raises(ValueError, match="workers"):
        fleet_advice(limits, workers=0, pool_size=1, max_overflow=0)


TOKEN = "a-long-enough-secret-token"


class _FromElsewhere:
    """WSGI middleware: requests look as if they came from another host (not loopback)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.remote = False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.remote:
            environ["REMOTE_ADDR"] = "192.0.2.7"
        return self.app(environ, start_response)


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_status_from_a_running_server(backend: Backend, app_for: MakeApp) -> None:
    server_app = app_for(
        backend.url, DBPOOL_DASHBOARD=True, DBPOOL_DASHBOARD_TOKEN=TOKEN, DBPOOL_LEAK_THRESHOLD=60
    )
    pool = DBPool.get_pool(server_app)
    release = threading.Event()

    @server_app.get("/report")
    def report() -> str:
        with pool.connection() as conn:
            query(conn, "SELECT 1")
            release.wait(10)  # holds its connection until the test has looked
        return "ok"

    wsgi = _FromElsewhere(server_app)
    server = make_server("127.0.0.1", 0, wsgi, threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    base = f"http://127.0.0.1:{server.port}"

    def get_report() -> None:
        with urllib.request.urlopen(f"{base}/report", timeout=10) as response:
            assert response.read() == b"ok"

    requests = [threading.Thread(target=get_report) for _ in range(2)]
    cli_app = app_for("sqlite:///:memory:")  # another pool: the CLI's own stays idle
    no_env = {"DBPOOL_DASHBOARD_TOKEN": None}
    try:
        for request in requests:
            request.start()
        wait_until(lambda: pool.stats().in_use == 2, 10, "two holders")

        code, out, err = _run(cli_app, "status", "--from", f"{base}/_dbpool", env=no_env)
        assert code == 0, (out, err)  # straight from loopback: no token needed
        assert f"read from {base}/_dbpool" in out
        assert re.search(r"^in_use\s+2$", out, re.M) and re.search(r"^pool_size\s+5$", out, re.M)
        assert re.search(r"^leak_threshold\s+60 s$", out, re.M)
        assert "checked out now: 2" in out and out.count("GET /report") == 2
        assert re.search(r"^acquired\s+2$", out, re.M)

        wsgi.remote = True  # from here on, requests come from another host
        code, out, err = _run(cli_app, "status", "--from", f"{base}/_dbpool/", env=no_env)
        assert code == 1 and "refused (403)" in err and "pass --token" in err, (out, err)
        code, out, err = _run(
            cli_app, "status", "--from", f"{base}/_dbpool", "--token", "wrong" * 4, env=no_env
        )
        assert code == 1 and "the token was not accepted" in err
        code, out, err = _run(
            cli_app, "status", "--from", f"{base}/_dbpool", "--token", TOKEN, env=no_env
        )
        assert code == 0 and re.search(r"^in_use\s+2$", out, re.M), (out, err)
        code, out, err = _run(cli_app, "status", "--from", f"{base}/_dbpool?token={TOKEN}")
        assert code == 0 and TOKEN not in out + err
        code, out, err = _run(
            cli_app, "status", "--from", f"{base}/_dbpool", env={"DBPOOL_DASHBOARD_TOKEN": TOKEN}
        )
        assert code == 0, (out, err)
        cli_app.config["DBPOOL_DASHBOARD_TOKEN"] = TOKEN  # the app's own setting
        code, out, err = _run(cli_app, "status", "--from", f"{base}/_dbpool", env=no_env)
        assert code == 0, (out, err)

        code, out, err = _run(cli_app, "status", "--from", f"{base}/elsewhere")
        assert code == 1 and "no dashboard there (404)" in err
    finally:
        release.set()
        for request in requests:
            request.join(10)
        server.shutdown()
        server.server_close()
        serving.join(10)
    code, out, err = _run(cli_app, "status", "--from", f"{base}/_dbpool")
    assert code == 1 and f"cannot reach {base}/_dbpool" in err
    code, out, err = _run(cli_app, "status", "--from", "ftp://example.invalid/_dbpool")
    assert code == 2 and "http(s) URL" in err


def test_status_renders_timings_readably() -> None:
    histogram = Histogram()
    for seconds in (0.002, 0.002, 0.002, 0.2):
        histogram.record(seconds)
    line = _distribution(histogram.snapshot().as_dict())
    assert line == "count 4, mean 51.5 ms, max 200 ms, p50 <= 2.5 ms, p99 <= 250 ms"
    assert _distribution(Histogram().snapshot().as_dict()) == "none recorded"
    histogram.record(90.0)
    assert _distribution(histogram.snapshot().as_dict()).endswith("p99 > 60 s")
