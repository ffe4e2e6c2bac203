"""``flask dbpool status|check|doctor`` through Flask's CliRunner, against real databases."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from backends import Backend
from flask_dbpool import DBPool
from flask_dbpool.drivers.base import ServerLimits
from flask_dbpool.sizing import fleet_advice

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
