"""The dashboard in a real browser: headless Chromium (Debian's package) driven by Playwright,
while a load runs against a real server and database."""

from __future__ import annotations

import os
import shutil
import struct
import threading
import urllib.request
import zlib
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import make_server

from backends import Backend, query
from flask_dbpool import DBPool


def _chromium() -> str:
    for candidate in (os.environ.get("DBPOOL_TEST_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    pytest.skip("no Chromium found (install Debian's chromium package, or set "
                "DBPOOL_TEST_CHROMIUM); .ci/run installs it in CI")


def _png_colours(path: Path) -> int:
    """How many distinct pixel values a (RGB/RGBA, 8-bit, non-interlaced) PNG has, sampled."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 4
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8
            channels = {2: 3, 6: 4}[colour]
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels + 1
    colours = set()
    # Sampled filtered bytes, not decoded pixels: a blank page gives almost only zero deltas.
    for row in range(0, height, max(1, height // 60)):
        line = raw[row * stride + 1 : (row + 1) * stride]
        for x in range(0, len(line) - channels, channels * max(1, width // 80)):
            colours.add(line[x : x + channels])
    return len(colours)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_dashboard_renders_live_figures(backend: Backend, tmp_path: Path) -> None:
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")

    app = Flask("browser-dash")
    app.config.update(
        DBPOOL_URL=backend.url,
        DBPOOL_DASHBOARD=True,
        DBPOOL_POOL_SIZE=2,
        DBPOOL_MAX_OVERFLOW=0,
        DBPOOL_LEAK_THRESHOLD=60,
    )
    db = DBPool(app)
    target = DBPool.get_pool(app).target

    @app.get("/work")
    def work() -> str:
        query(db.connection, "SELECT pg_sleep(0.02)")
        return "ok"

    server = make_server("127.0.0.1", 0, app, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            with urllib.request.urlopen(f"{base}/work", timeout=10) as response:
                response.read()

    loaders = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for loader in loaders:
        loader.start()
    shot = tmp_path / "dashboard.png"
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 1000})
                page.goto(f"{base}/_dbpool/")
                page.wait_for_function("Number(document.body.dataset.updates || 0) >= 2")
                first = int(page.locator("#counters tr:first-child td.num").inner_text())
                page.wait_for_function("Number(document.body.dataset.updates || 0) >= 4")
                later = int(page.locator("#counters tr:first-child td.num").inner_text())
                assert later > first > 0  # checkouts keep coming: the numbers change
                assert page.locator("#pool").inner_text() == "browser-dash"
                assert page.locator("#pools").is_hidden()  # one pool: nothing to pick
                assert page.locator("#target").inner_text() == target
                max_label = page.locator("#g-open").inner_text()
                assert max_label.endswith("/ 2")
                assert page.locator("#endpoints tbody tr").count() >= 1
                assert "work" in page.locator("#endpoints").inner_text()
                painted = page.evaluate(
                    """() => {
                        const c = document.getElementById('series');
                        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
                        return n;
                    }"""
                )
                assert painted > 100  # the time series was drawn
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    finally:
        stop.set()
        for loader in loaders:
            loader.join(15)
        server.shutdown()
        app.extensions["dbpool"].close()
    assert shot.stat().st_size > 20_000
    assert _png_colours(shot) > 8  # rendered content, not a blank page


def test_dashboard_switches_between_an_apps_pools(postgres_url: str, sqlite_url: str) -> None:
    """An app with its DBPool and a SQLAlchemy engine's pool: the page lists both and shows
    the one picked."""
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("sqlalchemy")
    from flask_dbpool.flask import monitor
    from flask_dbpool.sqlalchemy import create_engine

    app = Flask("browser-two")
    app.config.update(DBPOOL_URL=sqlite_url, DBPOOL_DASHBOARD=True)
    DBPool(app)
    engine = create_engine(postgres_url, pool_size=3, max_overflow=0, name="reports")
    monitor(app, engine)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    held = engine.connect()  # shows in the engine's pool only
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, headless=True)
            try:
                page = browser.new_page()
                page.goto(f"{base}/_dbpool/")
                page.wait_for_function("Number(document.body.dataset.updates || 0) >= 1")
                assert page.locator("#pool").inner_text() == "browser-two"
                assert page.locator("#pools").is_visible()
                options = page.locator("#pools option").all_inner_texts()
                assert options == ["browser-two", "reports"]
                page.select_option("#pools", "reports")
                page.wait_for_function(
                    "document.getElementById('pool').textContent === 'reports'"
                )
                page.wait_for_function("document.getElementById('g-open').textContent === '1 / 3'")
                assert page.locator("#target").inner_text().startswith("postgresql+psycopg://")
                assert page.locator("#checkouts tbody tr").count() == 1
                assert "pool=reports" in page.url
            finally:
                browser.close()
    finally:
        held.close()
        server.shutdown()
        app.extensions["dbpool"].close()
        engine.dispose()
