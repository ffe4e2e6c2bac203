"""gunicorn settings for tests/test_fleet.py: the hooks the README shows."""

from __future__ import annotations

from typing import Any

from flask_dbpool.fleet import forget_worker


def child_exit(server: Any, worker: Any) -> None:
    forget_worker(worker.pid)  # in the master: a killed worker leaves the view at once
