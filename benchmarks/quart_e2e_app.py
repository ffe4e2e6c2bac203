"""The Quart app of benchmarks/quart_e2e.py: one route reading a row, on the pool named by
``QUART_BENCH_VARIANT`` (``dbpool``: QuartDBPool on psycopg 3; ``dbpool_asyncpg``: QuartDBPool
on asyncpg; ``quart_db``: quart-db on asyncpg), 4 connections each, against ``QUART_BENCH_URL``."""

from __future__ import annotations

import os

from quart import Quart, g

URL = os.environ.get("QUART_BENCH_URL", "postgresql://127.0.0.1/test")
VARIANT = os.environ.get("QUART_BENCH_VARIANT", "dbpool")
TABLE = "dbpool_quart_bench"

app = Quart("quart-bench")


@app.get("/ping")
async def ping() -> str:
    return "ok"


if VARIANT == "dbpool":
    from flask_dbpool.quart import QuartDBPool

    app.config.update(DBPOOL_URL=URL, DBPOOL_POOL_SIZE=4, DBPOOL_MAX_OVERFLOW=0)
    db = QuartDBPool(app)

    @app.get("/item/<int:item_id>")
    async def item(item_id: int) -> dict[str, str]:
        conn = await db.connection()
        cur = await conn.execute(f"SELECT v FROM {TABLE} WHERE id = %s", (item_id,))
        row = await cur.fetchone()
        return {"v": row[0]}

elif VARIANT == "dbpool_asyncpg":
    from flask_dbpool.quart import QuartDBPool

    app.config.update(
        DBPOOL_URL="postgresql+asyncpg://" + URL.partition("://")[2],
        DBPOOL_POOL_SIZE=4,
        DBPOOL_MAX_OVERFLOW=0,
    )
    db = QuartDBPool(app)

    @app.get("/item/<int:item_id>")
    async def item(item_id: int) -> dict[str, str]:
        conn = await db.connection()
        row = await conn.fetchrow(f"SELECT v FROM {TABLE} WHERE id = $1", item_id)
        return {"v": row["v"]}

elif VARIANT == "quart_db":
    from quart_db import QuartDB

    quart_db = QuartDB(
        app, url=URL, migrations_folder=None, backend_options={"min_size": 4, "max_size": 4}
    )

    @app.get("/item/<int:item_id>")
    async def item(item_id: int) -> dict[str, str]:
        row = await g.connection.fetch_first(
            f"SELECT v FROM {TABLE} WHERE id = :id", {"id": item_id}
        )
        return {"v": row["v"]}

else:
    raise SystemExit(f"unknown QUART_BENCH_VARIANT {VARIANT!r}: dbpool, dbpool_asyncpg, quart_db")
