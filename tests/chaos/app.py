"""The Flask app the chaos suite serves under real gunicorn (``tests/chaos/harness.py``).

    CHAOS_URL=postgresql://… gunicorn -k gthread -w 2 --threads 8 'app:create_app()'

``GET /q`` runs one query on the request's pooled connection; ``GET /stats`` answers the
worker's pid and pool stats (the harness reads every worker's before it stops); ``GET /ping``
answers without the database. Pool settings come from ``CHAOS_POOL_SIZE`` (default 4, no
overflow) and ``CHAOS_TIMEOUT`` (default 10 s).
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify

from flask_dbpool import DBPool


def create_app() -> Flask:
    app = Flask("chaos")
    app.config.update(
        DBPOOL_URL=os.environ["CHAOS_URL"],
        DBPOOL_POOL_SIZE=int(os.environ.get("CHAOS_POOL_SIZE", "4")),
        DBPOOL_MAX_OVERFLOW=0,
        DBPOOL_TIMEOUT=float(os.environ.get("CHAOS_TIMEOUT", "10")),
    )
    db = DBPool(app)
    most_open = [0]

    @app.get("/q")
    def q() -> str:
        cursor = db.connection.cursor()
        cursor.execute("SELECT 1")
        cursor.fetchall()
        cursor.close()
        db.connection.commit()
        most_open[0] = max(most_open[0], db.pool.stats().open)
        return "ok"

    @app.get("/stats")
    def stats() -> Any:
        data = db.pool.stats().as_dict()
        return jsonify(pid=os.getpid(), stats=data, most_open=most_open[0])

    @app.get("/ping")
    def ping() -> str:
        return "ok"

    return app
