"""SQLite through the standard library's :mod:`sqlite3`."""

from __future__ import annotations

import itertools
import os
import sqlite3
from typing import Any

from flask_dbpool.drivers.base import BROKEN, IDLE, IN_TRANSACTION, ConnectFn, Driver, query_options
from flask_dbpool.url import DatabaseURL

__all__ = ["SQLiteDriver"]

_memory_ids = itertools.count(1)


class SQLiteDriver(Driver):
    """``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``sqlite:///:memory:``.

    Pooled connections are opened with ``check_same_thread=False``: the pool guarantees a
    single holder at a time, but not that it is always the same thread.

    ``:memory:`` (or an empty path) gives each *pool* one private in-memory database shared by
    all of its connections (SQLite's shared cache), instead of a separate empty database per
    connection. It lives as long as the pool keeps a connection open. Shared-cache databases
    use table-level locks, so concurrent writers may see ``database table is locked``: use a
    file for concurrent write workloads.
    """

    name = "sqlite3"
    module = "sqlite3"

    @classmethod
    def connect_factory(cls, url: DatabaseURL) -> ConnectFn:
        options = query_options(url, {"timeout": float}, "sqlite3")
        timeout = options.get("timeout", 5.0)
        path = url.database or ":memory:"
        if path == ":memory:":
            name = f"flask-dbpool-memory-{os.getpid()}-{next(_memory_ids)}"
            target = f"file:{name}?mode=memory&cache=shared"
            uri = True
        else:
            target = path
            uri = path.startswith("file:")

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(target, timeout=timeout, check_same_thread=False, uri=uri)

        return connect

    @classmethod
    def server_version(cls, raw: Any) -> str:
        return f"SQLite {sqlite3.sqlite_version} (embedded, no server)"

    @staticmethod
    def transaction_state(raw: Any) -> int:
        try:
            return IN_TRANSACTION if raw.in_transaction else IDLE
        except sqlite3.ProgrammingError:  # closed connection
            return BROKEN

    @staticmethod
    def is_disconnect(exc: BaseException, raw: Any) -> bool:
        if isinstance(exc, sqlite3.ProgrammingError):
            try:
                raw.in_transaction  # noqa: B018 -- raises once closed
            except sqlite3.ProgrammingError:
                return True
        return False

