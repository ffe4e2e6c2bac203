"""The dashboard's HTTP side (page, assets, JSON, access control) with Flask's test client
against real databases (tests/test_dashboard_browser.py loads it in headless Chromium)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from backends import Backend, query
from flask_dbpool import ConfigError, DBPool
from flask_dbpool.display import PROXY_HEADERS
from flask_dbpool.report import pool_report

TOKEN = "a-long-enough-secret-token"
MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app() -> Iterator[MakeApp]:
    apps: list[Flask] = []

    def make(url: str, **config: object) -> Flask:
        app = Flask("dash")
        app.config.update(DBPOOL_URL=url, DBPOOL_DASHBOARD=True, **config)
        db = DBPool(app)

        @app.get("/orders")
        def orders() -> str:
            query(db.connection, "SELECT 1")
            return "ok"

        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["dbpool"].close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_page_assets_and_data(backend: Backend, make_app: MakeApp) -> None:
    app = make_app(backend.url, DBPOOL_LEAK_THRESHOLD=60)
    client = app.test_client()
    assert client.get("/orders").status_code == 200
    page = client.get("/_dbpool/")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    html = page.get_data(as_text=True)
    assert "static/dashboard.js" in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # no CDN: assets ship with us
    script = client.get("/_dbpool/static/dashboard.js")
    assert script.status_code == 200 and "fetch(" in script.get_data(as_text=True)
    assert client.get("/_dbpool/static/dashboard.css").status_code == 200
    assert client.get("/_dbpool/static/nope.js").status_code == 404

    data = client.get("/_dbpool/data").get_json()
    assert data["pool"] == "dash"
    assert data["stats"]["acquired"] == 1
    assert data["checkouts"] == []
    assert data["endpoints"]["orders"]["hold"]["count"] == 1
    with app.app_context():
        held = app.extensions["dbpool"].acquire()
        try:
            out = client.get("/_dbpool/data").get_json()["checkouts"]
        finally:
            held.close()
    assert len(out) == 1 and out[0]["thread"] == "MainThread"
    assert "test_page_assets_and_data" in out[0]["stack"]
    assert out[0]["label"] is None  # checked out outside a request, not via db.connection

    # A request holding db.connection is listed with its endpoint, without leak tracking.
    plain = make_app(backend.url)
    db = DBPool()  # (make_app initialised the app; this one only reads db.connection)

    @plain.get("/invoices/<int:number>")
    def invoice(number: int) -> str:
        query(db.connection, "SELECT 1")
        (row,) = pool_report(DBPool.get_pool(plain))["checkouts"]
        return f"{row['label']}|{row['caller']}"

    assert plain.test_client().get("/invoices/42").get_data(as_text=True) == "invoice|None"


def test_access_is_refused_unless_loopback_or_token(sqlite_url: str, make_app: MakeApp) -> None:
    app = make_app(sqlite_url, DBPOOL_DASHBOARD_TOKEN=TOKEN)
    client = app.test_client()
    remote = {"REMOTE_ADDR": "10.1.2.3"}
    assert client.get("/_dbpool/data", environ_base=remote).status_code == 403
    assert client.get("/_dbpool/", environ_base=remote).status_code == 403
    # Through a local reverse proxy the peer is loopback, but the request is not local.
    for header in PROXY_HEADERS:
        proxied = client.get("/_dbpool/data", headers={header: "1.2.3.4"})
        assert proxied.status_code == 403, header
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/_dbpool/data", environ_base=remote, headers=auth).status_code == 200
    ok = client.get(f"/_dbpool/data?token={TOKEN}", environ_base=remote)
    assert ok.status_code == 200
    wrong = client.get("/_dbpool/data?token=wrong-token-wrong-token", environ_base=remote)
    assert wrong.status_code == 403
    assert client.get("/_dbpool/data").status_code == 200  # plain loopback
    # A browser opening /_dbpool/?token=… from elsewhere fetches the page's assets without
    # the token: they hold no data and must load, or the page stays empty.
    page = client.get(f"/_dbpool/?token={TOKEN}", environ_base=remote).get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page)
    assert sorted(assets) == ["static/dashboard.css", "static/dashboard.js"]
    for asset in assets:
        assert client.get(f"/_dbpool/{asset}", environ_base=remote).status_code == 200, asset


def test_no_password_on_the_dashboard(make_app: MakeApp) -> None:
    pytest.importorskip("psycopg")
    app = make_app("postgresql://app:SeCrEt@127.0.0.1:1/test", DBPOOL_TIMEOUT=0.2)
    client = app.test_client()
    body = client.get("/_dbpool/data").get_data(as_text=True)
    assert "SeCrEt" not in body and "***" in body


def test_dashboard_is_off_by_default_and_config_is_checked(sqlite_url: str) -> None:
    app = Flask("plain")
    app.config.update(DBPOOL_URL=sqlite_url)
    DBPool(app)
    try:
        assert app.test_client().get("/_dbpool/").status_code == 404
    finally:
        app.extensions["dbpool"].close()
    for key, value in [
        ("DBPOOL_DASHBOARD", "yes"),
        ("DBPOOL_DASHBOARD_PATH", "dash"),
        ("DBPOOL_DASHBOARD_TOKEN", "short"),
    ]:
        bad = Flask("bad")
        bad.config.update({"DBPOOL_URL": sqlite_url, "DBPOOL_DASHBOARD": True, key: value})
        with pytest.raises(ConfigError, match=key):
            DBPool(bad)
