"""The Flask app driven by ``benchmarks/e2e/run.py`` under gunicorn (issue 11 item 1).

    E2E_VARIANT=dbpool E2E_URL=postgresql://postgres@127.0.0.1/bench_e2e \\
        gunicorn -k gthread --threads 8 -w 1 'app:create_app()'

One factory, five ways to get the request's connection (``E2E_VARIANT``):

- ``connect``: the Flask tutorial's ``get_db()``, a new psycopg connection per request kept on
  ``g`` and closed in teardown;
- ``dbpool``: :class:`flask_dbpool.DBPool`, ``db.connection`` (returned at teardown);
- ``psycopg_pool``: a :class:`psycopg_pool.ConnectionPool` by hand, ``g.conn = pool.getconn()``
  and ``pool.putconn()`` in teardown;
- ``flask_sqlalchemy``: Flask-SQLAlchemy, ``db.session.execute(text(...))``, session removed at
  teardown;
- ``fsa_dbpool``: the same Flask-SQLAlchemy app on flask-dbpool's ``SQLAlchemyPool``
  (``SQLALCHEMY_ENGINE_OPTIONS=engine_options(...)``).

``GET /item/<id>`` does the same server work in every variant: one primary-key ``SELECT`` in
one transaction, committed by the view (so a pool's rollback-on-return finds the connection
idle and sends nothing). Pooled variants use ``E2E_POOL_SIZE`` connections (default 4), no
overflow, created in the worker (gunicorn loads the app after the fork; the psycopg_pool pool
is built on the first request). ``GET /ping`` answers without touching the database (the
harness's readiness check). Connections are tagged by libpq's ``PGAPPNAME``, set by the harness.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from flask import Flask, abort, g, jsonify

VARIANTS = ("connect", "dbpool", "psycopg_pool", "flask_sqlalchemy", "fsa_dbpool")
SQL = "SELECT id, name, value FROM e2e_items WHERE id = %s"


def _row_reply(row: Any) -> Any:
    if row is None:
        abort(404)
    return jsonify(id=row[0], name=row[1], value=row[2])


def _connect(app: Flask, url: str, pool_size: int) -> None:
    import psycopg

    def get_db() -> psycopg.Connection[Any]:
        if "db" not in g:
            g.db = psycopg.connect(url)
        return g.db  # type: ignore[no-any-return]

    @app.teardown_appcontext
    def close_db(exc: BaseException | None) -> None:
        db = g.pop("db", None)
        if db is not None:
            db.close()

    @app.route("/item/<int:item_id>")
    def item(item_id: int) -> Any:
        conn = get_db()
        row = conn.execute(SQL, (item_id,)).fetchone()
        conn.commit()
        return _row_reply(row)


def _dbpool(app: Flask, url: str, pool_size: int) -> None:
    from flask_dbpool import DBPool

    app.config.update(DBPOOL_URL=url, DBPOOL_POOL_SIZE=pool_size, DBPOOL_MAX_OVERFLOW=0)
    db = DBPool(app)

    @app.route("/item/<int:item_id>")
    def item(item_id: int) -> Any:
        conn = db.connection
        row = conn.execute(SQL, (item_id,)).fetchone()
        conn.commit()
        return _row_reply(row)


def _psycopg_pool(app: Flask, url: str, pool_size: int) -> None:
    from psycopg_pool import ConnectionPool

    lock = threading.Lock()
    pools: list[ConnectionPool] = []

    def get_pool() -> ConnectionPool:
        if not pools:
            with lock:
                if not pools:
                    pool = ConnectionPool(url, min_size=pool_size, max_size=pool_size, open=True)
                    atexit.register(pool.close)  # not at interpreter teardown (gevent)
                    pools.append(pool)
        return pools[0]

    @app.teardown_appcontext
    def put_back(exc: BaseException | None) -> None:
        conn = g.pop("conn", None)
        if conn is not None:
            get_pool().putconn(conn)

    @app.route("/item/<int:item_id>")
    def item(item_id: int) -> Any:
        if "conn" not in g:
            g.conn = get_pool().getconn()
        conn = g.conn
        row = conn.execute(SQL, (item_id,)).fetchone()
        conn.commit()
        return _row_reply(row)


def _flask_sqlalchemy(app: Flask, url: str, pool_size: int, *, on_dbpool: bool = False) -> None:
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy import text

    from flask_dbpool.sqlalchemy import engine_options

    scheme, rest = url.split("://", 1)
    options: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 0}
    app.config.update(
        SQLALCHEMY_DATABASE_URI=f"{scheme.split('+')[0]}+psycopg://{rest}",
        # The same app on flask-dbpool's SQLAlchemyPool: one line of config.
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(**options) if on_dbpool else options,
    )
    db = SQLAlchemy(app)
    query = text(SQL.replace("%s", ":id"))

    @app.route("/item/<int:item_id>")
    def item(item_id: int) -> Any:
        row = db.session.execute(query, {"id": item_id}).first()
        db.session.commit()
        return _row_reply(row)


def create_app(variant: str | None = None) -> Flask:
    """The app for ``variant`` (default: ``E2E_VARIANT``), on ``E2E_URL``."""
    variant = variant or os.environ.get("E2E_VARIANT", "dbpool")
    url = os.environ.get("E2E_URL", "postgresql://postgres@127.0.0.1:5432/bench_e2e")
    pool_size = int(os.environ.get("E2E_POOL_SIZE", "4"))
    if variant not in VARIANTS:
        raise ValueError(f"E2E_VARIANT={variant!r}: expected one of {', '.join(VARIANTS)}")
    app = Flask(f"e2e_{variant}")
    {
        "connect": _connect,
        "dbpool": _dbpool,
        "psycopg_pool": _psycopg_pool,
        "flask_sqlalchemy": _flask_sqlalchemy,
        "fsa_dbpool": lambda app, url, size: _flask_sqlalchemy(app, url, size, on_dbpool=True),
    }[variant](app, url, pool_size)

    @app.route("/ping")
    def ping() -> str:
        return "ok"

    return app
