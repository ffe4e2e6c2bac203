"""The flask-dbpool demo: a notes JSON API, pooled and unpooled, side by side.

Run it with ``make demo`` or ``python -m flask_dbpool.demo --help``. Build the app yourself
with :func:`create_app` (``create_app(url, pooled=False)`` for the per-request-connection
comparison); :func:`run_demo` runs the whole comparison and returns the table's rows.
"""

from flask_dbpool.demo.app import (
    NotesStore,
    close_app,
    connections_opened,
    create_app,
    db,
    default_url,
)
from flask_dbpool.demo.cli import main, run_demo
from flask_dbpool.demo.load import BurstResult, format_table

__all__ = [
    "BurstResult",
    "NotesStore",
    "close_app",
    "connections_opened",
    "create_app",
    "db",
    "default_url",
    "format_table",
    "main",
    "run_demo",
]
