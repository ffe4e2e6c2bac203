"""SQLite through the standard library's :mod:`sqlite3`."""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
from typing import Any, ClassVar

from flask_dbpool.drivers.aio_base import AsyncConnectFn, AsyncDriver
from flask_dbpool.drivers.base import BROKEN, IDLE, IN_TRANSACTION, ConnectFn, Driver, query_options
from flask_dbpool.errors import ConfigError
from flask_dbpool.url import DatabaseURL

__all__ = ["AiosqliteDriver", "SQLiteDriver"]

_memory_ids = itertools.count(1)

#: Connection attributes a borrower may set, restored on return when it did. ``autocommit``
#: exists from Python 3.12 on.
_SETTINGS = ("row_factory", "text_factory", "isolation_level", "autocommit")
_ABSENT = object()


class _MemoryDatabase:
    """The connect callable of a ``:memory:`` pool: opens connections to one private
    shared-cache in-memory database, which it keeps alive with an anchor connection.

    SQLite frees a shared-cache in-memory database when its last connection closes, so
    without the anchor ``idle_timeout`` (or any moment with no connection open) would empty
    it. The anchor is opened on the first connect (once, under a lock), is not a pool
    connection (never lent, not counted), and is freed with this object, i.e. when the pool
    that owns it is garbage-collected.
    """

    def __init__(self, timeout: float) -> None:
        name = f"flask-dbpool-memory-{os.getpid()}-{next(_memory_ids)}"
        self.uri = f"file:{name}?mode=memory&cache=shared"
        self.timeout = timeout
        self.anchor: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        return sqlite3.connect(self.uri, timeout=self.timeout, check_same_thread=False, uri=True)

    def __call__(self) -> sqlite3.Connection:
        if self.anchor is None:
            with self._lock:
                if self.anchor is None:
                    self.anchor = self._open()
        return self._open()


class SQLiteDriver(Driver):
    """``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``sqlite:///:memory:``.

    Pooled connections are opened with ``check_same_thread=False``: the pool guarantees a
    single holder at a time, but not that it is always the same thread.

    ``:memory:`` (or an empty path) gives each *pool* one private in-memory database shared by
    all of its connections (SQLite's shared cache), instead of a separate empty database per
    connection. It lives as long as the pool: an extra connection, opened with the first one
    and not counted in the pool's statistics, keeps it when the pool closes all of its own
    (``idle_timeout``); it is freed when the pool is garbage-collected. Shared-cache databases
    use table-level locks, so concurrent writers may see ``database table is locked``: use a
    file for concurrent write workloads.

    ``row_factory``, ``text_factory``, ``isolation_level`` (and ``autocommit`` on Python
    3.12+) set by a borrower through its handle are restored on return. SQLite has no
    network: :meth:`ping` needs no bound and takes ``timeout`` only for the interface.
    """

    # "Cannot operate on a closed database."
    closed_error_names: ClassVar[tuple[str, ...]] = ("ProgrammingError",)

    name = "sqlite3"
    module = "sqlite3"

    @classmethod
    def connect_factory(cls, url: DatabaseURL) -> ConnectFn:
        options = query_options(url, {"timeout": float}, "sqlite3")
        timeout = options.get("timeout", 5.0)
        path = url.database or ":memory:"
        if path == ":memory:":
            return _MemoryDatabase(timeout)
        uri = path.startswith("file:")

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(path, timeout=timeout, check_same_thread=False, uri=uri)

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

    @classmethod
    def ping(cls, raw: Any, timeout: float) -> None:
        """``SELECT 1`` without a bound (no network, nothing to wait for)."""
        cls._select_one(raw)

    @staticmethod
    def autocommit(raw: Any) -> bool:
        """``isolation_level=None`` (or Python 3.12's ``autocommit=True``)."""
        return raw.isolation_level is None or getattr(raw, "autocommit", None) is True

    @classmethod
    def cancel(cls, raw: Any, timeout: float, side_connect: ConnectFn) -> bool:
        """``interrupt()``: the running statement fails with "interrupted"."""
        raw.interrupt()
        return True

    @staticmethod
    def is_disconnect(exc: BaseException, raw: Any) -> bool:
        if isinstance(exc, sqlite3.ProgrammingError):
            try:
                raw.in_transaction  # noqa: B018 -- raises once closed
            except sqlite3.ProgrammingError:
                return True
        return False

    @classmethod
    def save_settings(cls, raw: Any) -> tuple[Any, ...]:
        """``row_factory``, ``text_factory``, ``isolation_level`` and ``autocommit``."""
        return tuple(getattr(raw, name, _ABSENT) for name in _SETTINGS)

    @classmethod
    def restore_settings(cls, raw: Any, saved: Any) -> None:
        """Set back each of :meth:`save_settings`' attributes that differs (no I/O: the
        connection is idle after the rollback, so changing ``isolation_level`` or
        ``autocommit`` commits nothing)."""
        for name, value in zip(_SETTINGS, saved, strict=True):
            if value is not _ABSENT and getattr(raw, name) != value:
                setattr(raw, name, value)


class AiosqliteDriver(AsyncDriver, SQLiteDriver):
    """aiosqlite: ``sqlite:///path.db``, ``sqlite+aiosqlite:///path.db`` (a file: each
    aiosqlite connection to ``:memory:`` would be a database of its own)."""

    name = "aiosqlite"
    module = "aiosqlite"
    closed_error_names: ClassVar[tuple[str, ...]] = ()
    watched_names: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def async_connect_factory(cls, url: DatabaseURL) -> AsyncConnectFn:
        aiosqlite = cls.import_module()
        path = url.database or ":memory:"
        if path == ":memory:" or "mode=memory" in path:
            raise ConfigError(
                f"{url.redacted()}: AsyncPool needs a database file (aiosqlite gives each "
                "connection to :memory: a database of its own)"
            )
        timeout = query_options(url, {"timeout": float}, "aiosqlite").get("timeout", 5.0)
        uri = path.startswith("file:")

        async def aconnect() -> Any:
            return await aiosqlite.connect(path, timeout=timeout, uri=uri)

        return aconnect

    @staticmethod
    def transaction_state(raw: Any) -> int:
        try:
            return IN_TRANSACTION if raw.in_transaction else IDLE
        except Exception:  # closed: aiosqlite has no connection to ask
            return BROKEN

    @staticmethod
    def is_disconnect(exc: BaseException, raw: Any) -> bool:
        return False

    @staticmethod
    async def aping(raw: Any) -> None:
        cursor = await raw.execute("SELECT 1")
        await cursor.close()

    @classmethod
    async def arestore_settings(cls, raw: Any, saved: Any) -> None:
        cls.restore_settings(raw, saved)  # attributes of the aiosqlite object: no I/O
