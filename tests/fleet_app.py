"""The Flask app of tests/test_fleet.py, served by real gunicorn with several workers:
``GET /q`` runs one query on the request's connection, ``GET /slow`` holds it 50 ms,
``GET /pid`` answers the worker's pid; the dashboard is on (``/_dbpool``). ``FLEET_URL``
is the database."""

from __future__ import annotations

import os

from flask import Flask

from flask_dbpool import DBPool

app = Flask("fleet")
app.config.update(
    DBPOOL_URL=os.environ["FLEET_URL"],
    DBPOOL_POOL_SIZE=2,
    DBPOOL_MAX_OVERFLOW=0,
    DBPOOL_DASHBOARD=True,
)
db = DBPool(app)


@app.get("/q")
def q() -> str:
    cursor = db.connection.cursor()
    cursor.execute("SELECT 1")
    cursor.fetchall()
    cursor.close()
    return "ok"


@app.get("/slow")
def slow() -> str:
    cursor = db.connection.cursor()
    cursor.execute("SELECT pg_sleep(0.05)")
    cursor.fetchall()
    cursor.close()
    return "ok"


@app.get("/pid")
def pid() -> str:
    return str(os.getpid())
