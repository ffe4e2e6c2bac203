"""The flask-dbpool demo: a notes JSON API, pooled and unpooled, side by side.

Run it with ``make demo`` or ``python -m flask_dbpool.demo --help``. Build the app yourself
with :func:`create_app` (``create_app(url, pooled=False)`` for the per-request-connection
comparison); :func:`run_demo` runs the comparison on one database and returns the table's
rows; :func:`run_both` is ``make demo``: SQLite, then PostgreSQL (a :class:`LocalPostgres`
started for the demo unless a server URL is given).
"""

from flask_dbpool.demo.app import (
    NotesStore,
    close_app,
    connections_opened,
    create_app,
    db,
    default_url,
)
from flask_dbpool.demo.cli import main, run_both, run_demo
from flask_dbpool.demo.load import BurstResult, format_table
from flask_dbpool.demo.postgres import LocalPostgres, PostgresUnavailable

__all__ = [
    "BurstResult",
    "LocalPostgres",
    "NotesStore",
    "PostgresUnavailable",
    "close_app",
    "connections_opened",
    "create_app",
    "db",
    "default_url",
    "format_table",
    "main",
    "run_both",
    "run_demo",
]
