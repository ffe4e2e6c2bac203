"""The demo (``python -m flask_dbpool.demo``) against real databases.

The API is exercised through ``app.test_client()`` in both modes; the comparison through
:func:`run_demo` (real HTTP on a real threaded server) and through the command line in a
subprocess. Each test uses its own table, dropped afterwards.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_dbpool import ConfigError, DBPool, Pool
from flask_dbpool.demo import (
    BurstResult,
    NotesStore,
    close_app,
    connections_opened,
    create_app,
    default_url,
    format_table,
    main,
    run_both,
    run_demo,
)
from flask_dbpool.demo.app import MAX_LIMIT, MAX_TEXT_LENGTH, paramstyle_of
from flask_dbpool.demo.load import percentile
from flask_dbpool.demo.postgres import LocalPostgres, find_bindir
from flask_dbpool.url import parse_url

BACKENDS = ["sqlite", "postgres", "mysql"]
ROW = re.compile(r"^(pooled|direct)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)$", re.M)

MakeApp = Callable[..., Flask]


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    """Each backend's URL in turn (skipped when its server is unavailable)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def table(backend_url: str) -> Iterator[str]:
    """A table name of this test's own; the table is dropped afterwards."""
    name = f"demo_test_{uuid.uuid4().hex[:12]}"
    yield name
    with Pool(backend_url, pool_size=1, max_overflow=0) as pool, pool.connection() as conn:
        dialect = parse_url(backend_url).dialect
        NotesStore(dialect, paramstyle_of(conn.driver_connection), name).drop_schema(conn)


@pytest.fixture
def make_app(backend_url: str, table: str) -> Iterator[MakeApp]:
    """``make_app(pooled=..., **options)`` on this test's backend and table; closed after."""
    apps: list[Flask] = []

    def make(*, pooled: bool = True, **options: Any) -> Flask:
        app = create_app(backend_url, pooled=pooled, table=table, **options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        close_app(app)


# ---------------------------------------------------------------------------- the API


@pytest.mark.parametrize("pooled", [True, False], ids=["pooled", "direct"])
def test_crud(make_app: MakeApp, pooled: bool) -> None:
    app = make_app(pooled=pooled, pool_size=2)
    client = app.test_client()

    assert client.get("/notes").json == {"notes": [], "count": 0}
    created = []
    for text in ["first", "  second  ", "héllo ✓ 🎉"]:
        response = client.post("/notes", json={"text": text})
        assert response.status_code == 201, response.text
        note = response.json
        assert note is not None
        assert note["text"] == text.strip()
        assert isinstance(note["id"], int)
        assert response.headers["Location"] == f"/notes/{note['id']}"
        created.append(note)

    listed = client.get("/notes").json
    assert listed == {"notes": created[::-1], "count": 3}  # newest first
    assert client.get("/notes?limit=2").json == {"notes": created[:0:-1], "count": 2}

    first = created[0]
    assert client.get(f"/notes/{first['id']}").json == first
    assert client.delete(f"/notes/{first['id']}").status_code == 204
    missing = client.get(f"/notes/{first['id']}")
    assert missing.status_code == 404
    assert missing.json == {"error": f"note {first['id']} not found", "status": 404}
    again = client.delete(f"/notes/{first['id']}")
    assert again.status_code == 404
    assert again.json is not None and "not found" in again.json["error"]
    assert client.get("/notes").json == {"notes": created[:0:-1], "count": 2}

    health = client.get("/health")
    assert health.status_code == 200
    assert health.json is not None
    assert health.json["status"] == "ok"
    assert health.json["notes"] == 2
    assert health.json["mode"] == ("pooled" if pooled else "direct")

    db_requests = 12  # every request above touched the database once
    if pooled:
        stats = DBPool.get_pool(app).stats()
        assert stats.in_use == 0
        assert stats.created <= 2
        assert stats.acquired == db_requests + 1  # +1: the schema at startup
    else:
        assert connections_opened(app) == db_requests
    body = client.get("/stats").json
    assert body is not None
    assert body["mode"] == ("pooled" if pooled else "direct")
    assert body["connections_opened"] == connections_opened(app)
    assert (body["pool"] is not None) is pooled


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": "not json", "content_type": "application/json"}, "must be a JSON object"),
        ({"data": "text=hi"}, "must be a JSON object"),
        ({"json": ["text"]}, "must be a JSON object"),
        ({"json": {}}, "'text' is required"),
        ({"json": {"text": 42}}, "must be a string"),
        ({"json": {"text": None}}, "must be a string"),
        ({"json": {"text": "   "}}, "must not be empty"),
        ({"json": {"text": "x" * (MAX_TEXT_LENGTH + 1)}}, "longer than"),
        ({"json": {"text": "hi", "tags": []}}, "unknown field(s): tags"),
    ],
)
def test_create_validation(make_app: MakeApp, kwargs: dict[str, Any], message: str) -> None:
    app = make_app()
    client = app.test_client()
    response = client.post("/notes", **kwargs)
    assert response.status_code == 400
    assert response.is_json
    assert response.json is not None
    assert message in response.json["error"]
    assert response.json["status"] == 400
    assert client.get("/notes").json == {"notes": [], "count": 0}
    assert DBPool.get_pool(app).stats().in_use == 0


def test_longest_text_is_accepted(make_app: MakeApp) -> None:
    client = make_app().test_client()
    text = "é" * MAX_TEXT_LENGTH
    response = client.post("/notes", json={"text": text})
    assert response.status_code == 201
    assert response.json is not None
    assert client.get(f"/notes/{response.json['id']}").json == response.json


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1.5", str(MAX_LIMIT + 1), ""])
def test_list_limit_validation(make_app: MakeApp, limit: str) -> None:
    response = make_app().test_client().get(f"/notes?limit={limit}")
    assert response.status_code == 400
    assert response.json is not None
    assert "limit must be an integer" in response.json["error"]


def test_errors_are_json(make_app: MakeApp) -> None:
    client = make_app().test_client()
    for method, path, status in [
        ("GET", "/nope", 404),
        ("PUT", "/notes", 405),
        ("GET", "/notes/0", 404),
        ("GET", f"/notes/{2**70}", 404),
        ("DELETE", "/notes/999999", 404),
    ]:
        response = client.open(path, method=method)
        assert response.status_code == status, (method, path)
        assert response.is_json
        assert response.json is not None and response.json["status"] == status


def test_schema_creation_is_idempotent(make_app: MakeApp) -> None:
    first = make_app()
    first.test_client().post("/notes", json={"text": "kept"})
    second = make_app(pooled=False)  # same table: created if missing, never replaced
    notes = second.test_client().get("/notes").json
    assert notes is not None
    assert [n["text"] for n in notes["notes"]] == ["kept"]


def test_in_memory_sqlite() -> None:
    app = create_app("sqlite:///:memory:")
    try:
        client = app.test_client()
        assert client.post("/notes", json={"text": "in memory"}).status_code == 201
        notes = client.get("/notes").json
        assert notes is not None and notes["count"] == 1
    finally:
        close_app(app)
    with pytest.raises(ConfigError, match="direct mode"):
        create_app("sqlite:///:memory:", pooled=False)


def test_bad_settings(sqlite_url: str) -> None:
    with pytest.raises(ConfigError, match="invalid table name"):
        create_app(sqlite_url, table="notes; DROP TABLE x")
    with pytest.raises(ConfigError, match="DBPOOL_POOL_SIZE"):
        create_app(sqlite_url, pool_size=0)
    with pytest.raises(ConfigError, match="unsupported database URL scheme"):
        create_app("oracle://x/y")


def test_default_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DBPOOL_URL", raising=False)
    assert default_url() == f"sqlite:///{tmp_path.resolve() / 'demo-data' / 'notes.db'}"
    assert (tmp_path / "demo-data").is_dir()
    monkeypatch.setenv("DBPOOL_URL", "postgresql://u@h/d")
    assert default_url() == "postgresql://u@h/d"


# ---------------------------------------------------------------------------- the comparison


def test_percentile_and_table() -> None:
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0
    rows = [
        BurstResult("pooled", 100, 0, 0.5, 1.25, 9.0, 3),
        BurstResult("direct", 100, 2, 2.0, 10.0, 90.0, 100),
    ]
    table = format_table(rows)
    assert table.splitlines()[0].split() == [
        "mode", "requests", "req/s", "p50", "ms", "p99", "ms", "db", "connections", "opened",
        "errors",
    ]
    assert [m.groups() for m in ROW.finditer(table)] == [
        ("pooled", "100", "200", "1.2", "9.0", "3", "0"),
        ("direct", "100", "50", "10.0", "90.0", "100", "2"),
    ]


@pytest.mark.parametrize(("pool_size", "max_overflow"), [(2, 0), (3, 0)])
def test_run_demo(backend_url: str, table: str, pool_size: int, max_overflow: int) -> None:
    out = io.StringIO()
    requests = 80
    results = run_demo(
        backend_url,
        port=0,
        requests=requests,
        concurrency=8,
        pool_size=pool_size,
        max_overflow=max_overflow,
        table=table,
        serve=False,
        out=out,
    )
    pooled, direct = results
    assert (pooled.mode, direct.mode) == ("pooled", "direct")
    for result in results:
        assert result.requests == requests
        assert result.errors == 0, result.error_samples
        assert 0 < result.p50_ms <= result.p99_ms
        assert result.requests_per_second > 0
    assert 1 <= pooled.connections_opened <= pool_size + max_overflow
    assert direct.connections_opened == requests

    text = out.getvalue()
    rows = {m.group(1): m.groups() for m in ROW.finditer(text)}
    assert rows["pooled"][1] == rows["direct"][1] == str(requests)
    assert rows["pooled"][5] == str(pooled.connections_opened)
    assert rows["direct"][5] == str(requests)
    assert rows["pooled"][6] == rows["direct"][6] == "0"
    assert "db connections opened" in text

    # The burst's notes were deleted again; the three seed notes remain.
    app = create_app(backend_url, pooled=False, table=table)
    notes = app.test_client().get(f"/notes?limit={MAX_LIMIT}").json
    assert notes is not None and notes["count"] == 3


def test_main_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--requests", "0"])
    assert info.value.code == 2
    assert main(["--no-serve", "--url", "oracle://scott:tiger@db/x"]) == 2
    err = capsys.readouterr().err
    assert "unsupported database URL scheme" in err
    assert "tiger" not in err


def test_command_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DBPOOL_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "flask_dbpool.demo", "--no-serve", "--no-postgres",
         "--requests", "100"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {m.group(1): m.groups() for m in ROW.finditer(proc.stdout)}
    assert set(rows) == {"pooled", "direct"}, proc.stdout
    assert rows["pooled"][1] == rows["direct"][1] == "100"
    assert 1 <= int(rows["pooled"][5]) <= 4  # the default pool: pool_size=4, max_overflow=0
    assert rows["direct"][5] == "100"
    assert rows["pooled"][6] == rows["direct"][6] == "0"
    assert f"sqlite:///{tmp_path.resolve() / 'demo-data' / 'notes.db'}" in proc.stdout
    assert (tmp_path / "demo-data" / "notes.db").is_file()
    assert "== PostgreSQL" not in proc.stdout
    assert re.search(r"^  SQLite\s+[\d.]+x", proc.stdout, re.M), proc.stdout


# ------------------------------------------------------------------ the demo's own PostgreSQL

SECTION = re.compile(r"^== (\w+)", re.M)
REMOVED = re.compile(r"stopped the demo's PostgreSQL and removed (\S+)")
SERVER = re.compile(r"server   : PostgreSQL \S+ in (\S+), 127\.0\.0\.1:(\d+)")


def _tables(stdout: str) -> dict[str, dict[str, tuple[str, ...]]]:
    """The rows of each section's table: ``{"SQLite": {"pooled": groups, ...}, ...}``."""
    marks = list(SECTION.finditer(stdout))
    tables = {}
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        chunk = stdout[mark.end() : following.start() if following else len(stdout)]
        tables[mark.group(1)] = {m.group(1): m.groups() for m in ROW.finditer(chunk)}
    return tables


def _demo_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DBPOOL_URL"}


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def pg_bindir() -> Path:
    bindir = find_bindir()
    if bindir is None:
        reason = "no PostgreSQL server binaries (pg_config --bindir, /usr/lib/postgresql, PATH)"
        print(f"skipped: {reason}")
        pytest.skip(reason)
    return bindir


def test_local_postgres(pg_bindir: Path) -> None:
    import psycopg

    pg = LocalPostgres()
    with pg:
        directory, port = pg.directory, pg.port
        assert directory is not None and directory.is_dir() and port is not None
        assert pg.running and pg.postmaster_pid is not None
        with psycopg.connect(pg.url, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            if pg.tls:
                assert conn.pgconn.ssl_in_use
        no_password = pg.url.replace(pg.url.split("@")[0], "postgresql://postgres")
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(no_password, connect_timeout=10)
        assert "***" in redact_url(pg.url)
    assert not pg.running
    assert not directory.exists()
    assert not _port_open(port)
    pg.close()  # idempotent


def redact_url(url: str) -> str:
    from flask_dbpool.url import redact

    return redact(url)


def test_make_demo_runs_sqlite_and_postgres(pg_bindir: Path, tmp_path: Path) -> None:
    """`make demo` (with --no-serve): both tables, both ratios; the cluster is gone after."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "flask_dbpool.demo", "--no-serve", "--port", "0",
         "--requests", "80", "--concurrency", "8"],
        cwd=tmp_path,
        env=_demo_env(),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    print(proc.stdout)
    print(f"(took {time.monotonic() - started:.1f} s)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tables = _tables(proc.stdout)
    assert list(tables) == ["SQLite", "PostgreSQL"], proc.stdout
    for rows in tables.values():
        assert set(rows) == {"pooled", "direct"}
        assert rows["pooled"][1] == rows["direct"][1] == "80"
        assert 1 <= int(rows["pooled"][5]) <= 4
        assert rows["direct"][5] == "80"
        assert rows["pooled"][6] == rows["direct"][6] == "0"
    for label in ("SQLite", "PostgreSQL"):
        assert re.search(rf"^  {label}\s+[\d.]+x", proc.stdout, re.M), proc.stdout
    assert "postgresql://postgres:***@127.0.0.1:" in proc.stdout  # the password is not shown
    server = SERVER.search(proc.stdout)
    removed = REMOVED.search(proc.stdout)
    assert server is not None and removed is not None, proc.stdout
    assert removed.group(1) == server.group(1)
    assert not Path(server.group(1)).exists()
    assert not _port_open(int(server.group(2)))


def test_postgres_cannot_start(tmp_path: Path) -> None:
    """No binaries: one line says why, and the SQLite comparison still runs."""
    out = io.StringIO()
    url = f"sqlite:///{tmp_path / 'notes.db'}"
    results = run_both(
        url,
        postgres=LocalPostgres(bindir=tmp_path / "nothing-here"),
        port=0,
        requests=20,
        concurrency=4,
        out=out,
    )
    text = out.getvalue()
    assert list(results) == ["SQLite"]
    reason = [line for line in text.splitlines() if line.startswith("PostgreSQL: not started")]
    assert len(reason) == 1, text
    assert "no PostgreSQL server binaries" in reason[0]
    assert set(_tables(text)["SQLite"]) == {"pooled", "direct"}
    assert not list(tmp_path.glob("nothing-here*"))


def test_given_server_url_starts_nothing(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    table = f"demo_test_{uuid.uuid4().hex[:12]}"
    started = LocalPostgres()
    try:
        results = run_both(
            postgres_url, postgres=started, port=0, requests=20, concurrency=4, table=table,
            out=out,
        )
    finally:
        with Pool(postgres_url, pool_size=1) as pool, pool.connection() as conn:
            NotesStore("postgresql", paramstyle_of(conn.driver_connection), table).drop_schema(
                conn
            )
    text = out.getvalue()
    assert list(results) == ["SQLite", "PostgreSQL"]
    assert "nothing started" in text
    assert started.directory is None and not started.running
    assert "stopped the demo's PostgreSQL" not in text


@pytest.mark.parametrize("when", ["starting", "burst"])
def test_sigterm_stops_the_demo_postgres(pg_bindir: Path, when: str) -> None:
    """SIGTERM (as Ctrl-C) while the cluster starts or during its burst: it is removed."""
    # The demo's temporary directory goes in a directory of this test's own (TMPDIR),
    # traversable by the postgres user when running as root.
    tmp = Path(tempfile.mkdtemp(prefix="dbpool-demo-test-"))
    tmp.chmod(0o755)
    trigger = SERVER if when == "burst" else re.compile(r"^== PostgreSQL", re.M)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask_dbpool.demo", "--no-serve", "--port", "0",
         "--requests", "300", "--concurrency", "4"],
        cwd=tmp,
        env={**_demo_env(), "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if trigger.search(line):
                break
        assert trigger.search("".join(lines)), "".join(lines)
        time.sleep(0.3 if when == "starting" else 1.0)
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
        text = "".join(lines) + rest
        print(text)
        assert proc.returncode == 130, text + err
        assert not list(tmp.glob("flask-dbpool-demo-pg-*")), text
        server = SERVER.search(text)
        if server is not None:
            assert not _port_open(int(server.group(2)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(tmp, ignore_errors=True)
