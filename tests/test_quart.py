"""QuartDBPool: the request's connection, teardown, config errors, metrics, and an app under
a real ASGI server (hypercorn) with concurrent requests and a graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

quart = pytest.importorskip("quart", reason="Quart is not installed (extra: quart)")

from flask_dbpool import ConfigError  # noqa: E402
from flask_dbpool.quart import QuartDBPool  # noqa: E402

TESTS = Path(__file__).resolve().parent


def _app(url: str, **config: Any) -> tuple[Any, QuartDBPool]:
    app = quart.Quart("quart-test")
    app.config.update(
        {"DBPOOL_URL": url, "DBPOOL_POOL_SIZE": 2, "DBPOOL_MAX_OVERFLOW": 0, **config}
    )
    return app, QuartDBPool(app)


def test_one_connection_per_request_returned_at_teardown(postgres_url: str) -> None:
    app, db = _app(postgres_url)
    table = f"dbpool_quart_{os.getpid()}"

    @app.post("/write/<int:n>")
    async def write(n: int) -> str:
        conn = await db.connection()
        assert await db.connection() is conn
        await conn.execute(f"INSERT INTO {table} VALUES (%s)", (n,))
        if n == 13:
            raise RuntimeError("unlucky")  # the request fails: nothing is kept
        async with await db.connection() as same:  # commits, keeps the connection
            assert same is conn
        await conn.execute(f"INSERT INTO {table} VALUES (%s)", (n + 1000,))  # not committed
        return "ok"

    @app.get("/count")
    async def count() -> str:
        cur = await (await db.connection()).execute(f"SELECT count(*) FROM {table}")
        row = await cur.fetchone()
        return str(row[0])

    pool = db.get_pool(app)

    async def main() -> None:
        async with app.test_app():
            async with pool.connection() as conn:
                await conn.execute(f"CREATE TABLE {table} (v int)")
            try:
                client = app.test_client()
                assert (await client.post("/write/1")).status_code == 200
                assert (await client.post("/write/13")).status_code == 500
                assert await (await client.get("/count")).get_data(as_text=True) == "1"
                stats = pool.stats()
                assert (stats.in_use, stats.waiting, stats.acquired) == (0, 0, 4), stats
            finally:
                async with pool.connection() as conn:
                    await conn.execute(f"DROP TABLE {table}")
        assert pool.closed  # after_serving

    asyncio.run(main())


def test_config_errors_name_the_key(postgres_url: str) -> None:
    with pytest.raises(ConfigError, match="DBPOOL_URL is required"):
        QuartDBPool(quart.Quart("a"))
    with pytest.raises(ConfigError, match="DBPOOL_POOL_SIZE"):
        _app(postgres_url, DBPOOL_POOL_SIZE=0)
    with pytest.raises(ConfigError, match=r"DBPOOL_POOLSIZE.*DBPOOL_POOL_SIZE"):
        _app(postgres_url, DBPOOL_POOLSIZE=3)
    with pytest.raises(ConfigError, match="DBPOOL_DASHBOARD_TOKEN must be"):
        _app(postgres_url, DBPOOL_DASHBOARD=True, DBPOOL_DASHBOARD_TOKEN="short")
    app, _ = _app(postgres_url)
    with pytest.raises(ConfigError, match="already initialised"):
        QuartDBPool(app)


def test_metrics_endpoint(postgres_url: str) -> None:
    pytest.importorskip("prometheus_client", reason="prometheus_client is not installed")
    app, db = _app(postgres_url, DBPOOL_METRICS_ENDPOINT="/metrics")

    async def main() -> str:
        async with app.test_app():
            async with db.get_pool(app).connection():
                pass
            response = await app.test_client().get("/metrics")
            return await response.get_data(as_text=True)

    text = asyncio.run(main())
    assert 'flask_dbpool_checkouts_total{pool_name="quart-test"} 1.0' in text


def test_dashboard_with_its_token(postgres_url: str) -> None:
    token = "a-token-of-sixteen-chars"
    app, db = _app(postgres_url, DBPOOL_DASHBOARD=True, DBPOOL_DASHBOARD_TOKEN=token)

    async def main() -> None:
        async with app.test_app():
            pool = db.get_pool(app)
            held = await pool.acquire()
            client = app.test_client()  # (its remote address is not loopback)
            assert (await client.get("/_dbpool/data")).status_code == 403
            auth = {"Authorization": f"Bearer {token}"}
            data = await (await client.get("/_dbpool/data", headers=auth)).get_json()
            assert data["pool"] == "quart-test" and data["pools"] == ["quart-test"]
            assert data["stats"]["in_use"] == 1 and len(data["checkouts"]) == 1
            page = await client.get(f"/_dbpool/?token={token}")
            assert page.status_code == 200
            assert "static/dashboard.js" in await page.get_data(as_text=True)
            script = await client.get("/_dbpool/static/dashboard.js")  # no data: no token
            assert script.status_code == 200
            missing = await client.get("/_dbpool/data?pool=other", headers=auth)
            assert missing.status_code == 404
            await pool.release(held)

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=20) as response:
        return json.loads(response.read())


def test_under_hypercorn_with_concurrent_requests(postgres_url: str) -> None:
    pytest.importorskip("hypercorn", reason="hypercorn is not installed (dev extra)")
    tag = f"dbpool_quart_srv_{os.getpid()}"
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}application_name={tag}"
    port = _free_port()
    env = {**os.environ, "QUART_TEST_DBPOOL_URL": url, "PYTHONPATH": str(TESTS)}
    server = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "quart_app:app"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                _get(base + "/stats")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        with ThreadPoolExecutor(16) as executor:
            results = list(executor.map(lambda n: _get(f"{base}/value/{n}"), range(200)))
        assert [r["doubled"] for r in results] == [2 * n for n in range(200)]
        assert len({r["pid"] for r in results}) <= 4  # pool_size=4, max_overflow=0
        stats = _get(base + "/stats")
        assert stats["open"] <= 4 and stats["in_use"] == 0 and stats["acquired"] == 200
        data = _get(base + "/_dbpool/data")  # from loopback: no token needed
        assert data["stats"]["acquired"] == 200
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=20)[0].decode(errors="replace")
    assert server.returncode == 0, output
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        left = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (tag,)
        ).fetchone()
    assert left == (0,), output  # after_serving closed the pool's connections
