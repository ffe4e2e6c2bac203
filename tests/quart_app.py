"""A Quart app on QuartDBPool, for tests/test_quart.py (run under hypercorn there).

``DBPOOL_URL`` comes from the environment (``QUART_TEST_DBPOOL_URL``)."""

from __future__ import annotations

import asyncio
import os

from quart import Quart, jsonify

from flask_dbpool.quart import QuartDBPool

app = Quart("quart-dbpool-test")
app.config.update(
    DBPOOL_URL=os.environ.get("QUART_TEST_DBPOOL_URL", "postgresql://127.0.0.1/test"),
    DBPOOL_POOL_SIZE=4,
    DBPOOL_MAX_OVERFLOW=0,
    DBPOOL_TIMEOUT=10,
    DBPOOL_METRICS_ENDPOINT="/metrics",
    DBPOOL_DASHBOARD=True,
)
db = QuartDBPool(app)


@app.get("/value/<int:n>")
async def value(n: int) -> dict[str, int]:
    conn = await db.connection()
    again = await db.connection()
    assert again is conn  # one connection per request
    cur = await conn.execute("SELECT %s::int * 2, pg_backend_pid()", (n,))
    doubled, pid = await cur.fetchone()
    await asyncio.sleep(0.005)  # hold it a little, so that requests overlap
    return {"doubled": doubled, "pid": pid}


@app.get("/stats")
async def stats() -> object:
    s = db.pool.stats()
    return jsonify(open=s.open, in_use=s.in_use, waiting=s.waiting, acquired=s.acquired)
