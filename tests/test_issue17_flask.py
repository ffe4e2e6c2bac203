"""Issue 17, the Flask layer: dashboard access and token handling, route rules instead of raw
paths, ``flask dbpool status --from`` redirects, the CLI with the database down, and
``check`` on a rejected login. Real servers, real HTTP, real subprocesses."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from backends import query, wait_until
from flask_dbpool import DBPool, Pool
from flask_dbpool.report import pool_report

TOKEN = "a-long-enough-secret-token"
SECRET_PATH_PART = "SECRET-RESET-TOKEN-8d1f"
ROOT = Path(__file__).resolve().parent.parent
DOWN_URL = "postgresql://postgres@127.0.0.1:1/test"  # a closed loopback port
MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app() -> Iterator[MakeApp]:
    apps: list[Flask] = []

    def make(url: str, **config: object) -> Flask:
        app = Flask("issue17")
        app.config.update(DBPOOL_URL=url, **config)
        DBPool(app)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["dbpool"].close()


class _Served:
    """A WSGI app on a real threaded HTTP server on loopback, optionally seen as remote."""

    def __init__(self, app: Any, *, remote: bool = False) -> None:
        self.remote = remote

        def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
            if self.remote:
                environ["REMOTE_ADDR"] = "192.0.2.7"
            return app(environ, start_response)

        self.server = make_server("127.0.0.1", 0, wsgi, threaded=True)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


# ---------------------------------------------------------------- item 13: dashboard access

#: Headers proxies, load balancers and CDNs add; the first four were the only ones checked.
_PROXY_HEADERS = [
    "X-Forwarded-For",
    "Forwarded",
    "X-Real-IP",
    "X-Forwarded-Host",
    "Via",
    "X-Forwarded-Proto",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Server",
    "X-Forwarded-Anything-New",
    "X-Original-Forwarded-For",
    "True-Client-IP",
    "CF-Connecting-IP",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "Client-IP",
    "Fastly-Client-IP",
]


@pytest.mark.parametrize("header", _PROXY_HEADERS)
def test_item13_via_header_is_remote(header: str, sqlite_url: str, make_app: MakeApp) -> None:
    """Any proxy header, in any case, makes a loopback request remote (403 without token)."""
    app = make_app(sqlite_url, DBPOOL_DASHBOARD=True, DBPOOL_DASHBOARD_TOKEN=TOKEN)
    served = _Served(app)
    try:
        for name in (header, header.lower(), header.upper()):
            request = urllib.request.Request(f"{served.base}/_dbpool/data", headers={name: "1.1"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            refused.value.close()
            assert refused.value.code == 403, name
            # With the token it is served, as from any other host.
            request.add_header("Authorization", f"Bearer {TOKEN}")
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
        with urllib.request.urlopen(f"{served.base}/_dbpool/data", timeout=10) as response:
            assert response.status == 200  # plain loopback
    finally:
        served.close()


def test_item13_page_sends_the_token_in_a_header_not_the_url(
    sqlite_url: str, make_app: MakeApp
) -> None:
    app = make_app(sqlite_url, DBPOOL_DASHBOARD=True, DBPOOL_DASHBOARD_TOKEN=TOKEN)
    client = app.test_client()
    remote = {"REMOTE_ADDR": "192.0.2.7"}
    # Server side: the bearer header is accepted from another host.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    data = client.get("/_dbpool/data", environ_base=remote, headers=auth)
    assert data.status_code == 200 and data.headers["Cache-Control"] == "no-store"
    # The page opened with ?token= must not hand that URL on as a Referer.
    page = client.get(f"/_dbpool/?token={TOKEN}", environ_base=remote)
    assert page.status_code == 200
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert '<meta name="referrer" content="no-referrer">' in page.get_data(as_text=True)
    # The script keeps the token in memory, out of the address bar and out of poll URLs.
    script = client.get("/_dbpool/static/dashboard.js").get_data(as_text=True)
    assert "history.replaceState(" in script
    assert '"Bearer " + token' in script and "Authorization" in script
    assert "?token=" not in script.replace("// A page opened as ?token=", "")
    # Polls go to ./data, or ./data?pool=<name> for another pool: never with the token.
    assert re.search(r'const url = shown === null \? "data" : "data\?pool=" \+', script)
    assert "fetch(url, " in script and script.count("+ token") == 1


def test_item13_browser_polls_carry_no_token_in_the_url(
    postgres_url: str, make_app: MakeApp
) -> None:
    """In headless Chromium, from "another host": the page opened with ?token= polls with
    the token in the Authorization header only, and the address bar loses it."""
    from test_dashboard_browser import _chromium

    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    app = make_app(postgres_url, DBPOOL_DASHBOARD=True, DBPOOL_DASHBOARD_TOKEN=TOKEN)
    seen: list[str] = []

    def logged(environ: dict[str, Any], start_response: Any) -> Any:
        # What an access log would record: the request line and the Referer.
        seen.append(f"{environ.get('PATH_INFO')}?{environ.get('QUERY_STRING', '')} "
                    f"referer={environ.get('HTTP_REFERER', '')}")
        return app(environ, start_response)

    served = _Served(logged, remote=True)  # without the token every data request is a 403
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, headless=True)
            try:
                page = browser.new_page()
                polls: list[tuple[str, str | None]] = []
                page.on(
                    "request",
                    lambda r: polls.append((r.url, r.headers.get("authorization")))
                    if "/data" in r.url
                    else None,
                )
                page.goto(f"{served.base}/_dbpool/?token={TOKEN}")
                page.wait_for_function(
                    "Number(document.body.dataset.updates || 0) >= 2", timeout=20_000
                )
                assert page.locator("#pool").inner_text() == "issue17"
                address = page.evaluate("() => location.href")
                assert TOKEN not in address and address.endswith("/_dbpool/")
            finally:
                browser.close()
    finally:
        served.close()
    assert len(polls) >= 2
    for url, authorization in polls:
        assert "token" not in url, url
        assert authorization == f"Bearer {TOKEN}"
    # Only the page request itself carried the token (the user typed that URL).
    logged_with_token = [line for line in seen if TOKEN in line]
    assert len(logged_with_token) == 1 and logged_with_token[0].startswith("/_dbpool/?")


# ------------------------------------------------------------ item 13: route, not raw path


def test_item13_caller_is_the_route_rule_not_the_raw_path(
    postgres_url: str, make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(postgres_url, DBPOOL_DASHBOARD=True, DBPOOL_LEAK_THRESHOLD=0.2)
    pool = DBPool.get_pool(app)
    db = DBPool()
    release = threading.Event()
    inside: list[str | None] = []

    @app.post("/reset/<token>")
    def reset(token: str) -> str:
        query(db.connection, "SELECT 1")
        inside.extend(c.caller for c in pool.checkouts())
        release.wait(20)  # held past leak_threshold until the test has looked
        return "ok"

    @app.before_request
    def every_request() -> None:
        from flask import request

        if request.path.startswith("/nowhere"):
            query(db.connection, "SELECT 1")
            inside.extend(c.caller for c in pool.checkouts())

    served = _Served(app)
    caplog.set_level(logging.WARNING, logger="flask_dbpool.leaks")

    def post() -> None:
        request = urllib.request.Request(f"{served.base}/reset/{SECRET_PATH_PART}", data=b"")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.read() == b"ok"

    poster = threading.Thread(target=post)
    try:
        poster.start()
        wait_until(lambda: pool.stats().in_use == 1, 10, "the request's checkout")
        with urllib.request.urlopen(f"{served.base}/_dbpool/data", timeout=10) as response:
            body = response.read().decode()
        (row,) = json.loads(body)["checkouts"]
        assert row["caller"] == "POST /reset/<token>"
        wait_until(lambda: "possible leak" in caplog.text, 15, "the leak warning")
    finally:
        release.set()
        poster.join(30)
    try:
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{served.base}/nowhere/{SECRET_PATH_PART}", timeout=10)
        missing.value.close()
        assert missing.value.code == 404
    finally:
        served.close()
    assert inside == ["POST /reset/<token>", "GET <unmatched>"]
    assert "(POST /reset/<token>)" in caplog.text
    assert SECRET_PATH_PART not in caplog.text + body


# -------------------------------------------------------- item 14: status --from redirects


class _Recorder(BaseHTTPRequestHandler):
    """Answers every GET with dashboard-like JSON, or with a redirect where ``redirects``
    says so (path prefix -> Location), recording the path and Authorization it got."""

    redirects: dict[str, str]
    seen: list[tuple[str, str | None]]
    body: bytes

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        for prefix, location in self.redirects.items():
            if self.path.startswith(prefix):
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = self.body
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Recording:
    """A real HTTP server on loopback with a :class:`_Recorder` handler."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.redirects: dict[str, str] = {}
        with Pool("sqlite:///:memory:", name="elsewhere") as pool:
            body = json.dumps(pool_report(pool)).encode()
        handler = type(
            "Handler", (_Recorder,), {"redirects": self.redirects, "seen": self.seen, "body": body}
        )
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _status(app: Flask, *args: str) -> tuple[int, str, str]:
    result = app.test_cli_runner().invoke(
        args=["dbpool", "status", *args], env={"DBPOOL_DASHBOARD_TOKEN": None}
    )
    return result.exit_code, result.stdout, result.stderr


def test_item14_status_from_never_sends_the_token_to_another_host(
    make_app: MakeApp,
) -> None:
    cli_app = make_app("sqlite:///:memory:")
    first, other = _Recording(), _Recording()
    # Same host, another port: another origin (scheme, host and port must all match).
    first.redirects["/_dbpool/"] = f"{other.base}/_dbpool/data"
    try:
        code, out, err = _status(cli_app, "--from", f"{first.base}/_dbpool", "--token", TOKEN)
        assert code == 0, (out, err)
        assert first.seen == [("/_dbpool/data", f"Bearer {TOKEN}")]
        assert other.seen == [("/_dbpool/data", None)]  # followed, without the token
        assert TOKEN not in out + err
    finally:
        first.close()
        other.close()


def test_item14_status_from_keeps_the_token_on_same_origin_redirects(
    make_app: MakeApp,
) -> None:
    cli_app = make_app("sqlite:///:memory:")
    server = _Recording()
    server.redirects["/old/"] = f"{server.base}/_dbpool/data"
    try:
        code, out, err = _status(cli_app, "--from", f"{server.base}/old/_dbpool", "--token", TOKEN)
        assert code == 0, (out, err)
        assert server.seen == [
            ("/old/_dbpool/data", f"Bearer {TOKEN}"),
            ("/_dbpool/data", f"Bearer {TOKEN}"),
        ]
    finally:
        server.close()


def test_item14_same_origin_rule() -> None:
    from flask_dbpool.flask.cli import _same_origin

    assert _same_origin("http://a:80/x", "http://a/y")
    assert _same_origin("https://A.example/x", "https://a.example:443/y")
    assert not _same_origin("https://a.example/x", "http://a.example/x")  # a downgrade
    assert not _same_origin("http://a.example/x", "https://a.example/x")
    assert not _same_origin("http://127.0.0.1:1/x", "http://127.0.0.1:2/x")
    assert not _same_origin("http://a.example/x", "http://b.example/x")
    assert not _same_origin("http://a.example/x", "http://a.example.evil/x")


def test_item13_status_from_moves_a_url_token_into_the_header(make_app: MakeApp) -> None:
    """``--from URL?token=…`` sends the token as a bearer header, not in the request line."""
    cli_app = make_app("sqlite:///:memory:")
    server = _Recording()
    try:
        code, out, err = _status(cli_app, "--from", f"{server.base}/_dbpool?token={TOKEN}&x=1")
        assert code == 0, (out, err)
        assert server.seen == [("/_dbpool/data?x=1", f"Bearer {TOKEN}")]
        assert TOKEN not in out + err
    finally:
        server.close()


# ------------------------------------------------ item 15: the CLI with the database down


def _flask(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``flask`` command on ``tmp_path/downapp.py``."""
    (tmp_path / "downapp.py").write_text(
        "import os\n"
        "from flask import Flask\n"
        "from flask_dbpool import DBPool\n"
        "app = Flask('downapp')\n"
        "app.config.update(DBPOOL_URL=os.environ['TEST_DB_URL'], DBPOOL_OPEN_TIMEOUT=0.5)\n"
        "DBPool(app)\n"
    )
    environ = {**os.environ, "TEST_DB_URL": DOWN_URL, **env}
    environ.pop("FLASK_RUN_FROM_CLI", None)
    environ.pop("DBPOOL_DASHBOARD_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "downapp", *args],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_item15_cli_runs_with_open_timeout_and_the_database_down(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    done = _flask(tmp_path, "dbpool", "check", "--timeout", "0.5")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    failed = [line for line in lines if line.startswith("FAILED: ")]
    assert len(failed) == 1, lines
    assert failed[0].startswith("FAILED: postgresql://postgres@127.0.0.1:1/test: PoolTimeout")
    # The FAILED line, its cause, and the pool's own warning about the failed attempt.
    assert len(lines) <= 4, lines
    status = _flask(tmp_path, "dbpool", "status")
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    doctor = _flask(tmp_path, "dbpool", "doctor", "--timeout", "0.5")
    assert doctor.returncode == 2 and "cannot reach" in doctor.stderr, doctor.stderr


def test_item15_open_timeout_still_fails_fast_outside_the_dbpool_commands(
    tmp_path: Path,
) -> None:
    """Serving (and any other command) still fails at start-up: that is open_timeout's job."""
    pytest.importorskip("psycopg")
    routes = _flask(tmp_path, "routes")
    assert routes.returncode != 0 and "PoolTimeout" in routes.stderr, routes.stderr
    imported = subprocess.run(
        [sys.executable, "-c", "import downapp"],
        cwd=tmp_path,
        env={**os.environ, "TEST_DB_URL": DOWN_URL, "FLASK_RUN_FROM_CLI": "true"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode != 0 and "PoolTimeout" in imported.stderr


def test_item15_check_count_must_be_at_least_one(sqlite_url: str, make_app: MakeApp) -> None:
    result = make_app(sqlite_url).test_cli_runner().invoke(
        args=["dbpool", "check", "--count", "0"]
    )
    assert result.exit_code == 2, result.output
    assert "--count" in result.stderr and "0" in result.stderr


def test_item15_readme_documents_doctor_exit_2_and_every_config_key() -> None:
    from flask_dbpool.config import PoolConfig
    from flask_dbpool.display import DISPLAY_KEYS

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration reference") :]
    table = table[: table.index("\n## ")]
    names = PoolConfig.option_names() | DISPLAY_KEYS | {"url"}
    keys = {f"`DBPOOL_{name.upper()}`" for name in names}
    missing = sorted(key for key in keys if not re.search(rf"^\|[^\n]*{key}", table, re.M))
    assert not missing, f"not in the configuration table: {missing}"
    commands = readme[readme.index("### `flask dbpool` commands") :]
    doctor = commands[commands.index("- `flask dbpool doctor") :]
    doctor = doctor[: doctor.index("\n- `flask dbpool status")]
    assert "status 2" in doctor


# ---------------------------------------------- item 8 (CLI): a rejected login says so


def _rejection_classified() -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    from flask_dbpool.drivers import connection_rejected

    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/nosuchdb_flask_dbpool").close()
    except psycopg.Error as error:
        return connection_rejected(error)
    return False


@pytest.mark.xfail(
    not _rejection_classified(),
    reason="needs the driver classification of rejected logins "
    "(flask_dbpool.drivers.connection_rejected), being implemented in the drivers",
    strict=False,
)
def test_item8_check_says_rejected(postgres_url: str, make_app: MakeApp) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/nosuchdb_flask_dbpool"
    app = make_app(url)
    result = app.test_cli_runner().invoke(args=["dbpool", "check", "--timeout", "20"])
    assert result.exit_code == 1, result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith(
        "FAILED: postgresql://postgres@127.0.0.1:5432/nosuchdb_flask_dbpool: rejected: "
    ), first
    assert "nosuchdb_flask_dbpool" in first.split("rejected: ", 1)[1]


@pytest.mark.xfail(
    not _rejection_classified(),
    reason="needs the driver classification of rejected logins "
    "(flask_dbpool.drivers.connection_rejected), being implemented in the drivers",
    strict=False,
)
def test_item8_doctor_says_rejected(postgres_url: str, make_app: MakeApp) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/nosuchdb_flask_dbpool"
    app = make_app(url)
    result = app.test_cli_runner().invoke(args=["dbpool", "doctor", "--timeout", "20"])
    assert result.exit_code == 2, result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith(
        "cannot reach postgresql://postgres@127.0.0.1:5432/nosuchdb_flask_dbpool: rejected: "
    ), first
