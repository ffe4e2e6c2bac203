"""One real database per :class:`Backend`: URLs, server-session helpers and cleanup.

A backend gives tests what they need to observe the pool from the server's side:

* ``url``: a fresh URL (a temp file for SQLite; for PostgreSQL the server URL tagged with a
  unique ``application_name``, so leftovers of a failed test can be terminated at teardown).
* ``session_id(conn)`` / ``session_id_sql``: the server session behind a connection
  (``pg_backend_pid()``, ``CONNECTION_ID()``; for SQLite the driver connection object itself).
* ``kill(session_id)``: terminate a session from a separate admin connection.
* ``tagged()``: ``(url, count_sessions)``, a URL whose sessions the server can pick out, and a
  callable counting them from an admin connection (``pg_stat_activity`` by
  ``application_name``; ``information_schema.processlist`` by a throwaway MySQL user).
* ``new_table()`` / ``count_rows()``: a scratch table (InnoDB on MySQL) and a row count read
  through the admin connection, i.e. outside every pooled transaction.

Everything a backend creates on a server (tables, users, sessions) is removed by
:meth:`Backend.cleanup`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pytest

if TYPE_CHECKING:
    from flask_dbpool import Pool

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "MakePool",
    "SessionCounter",
    "Worker",
    "query",
    "wait_until",
]

BACKEND_NAMES = ("sqlite", "postgres", "mysql")

#: The ``make_pool`` fixture: ``make_pool(target, **options)`` -> a Pool closed at teardown.
MakePool = Callable[..., "Pool"]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds.

    For state that a server updates asynchronously (a closed session disappears from
    ``pg_stat_activity`` a moment after the client closed it). Not a speed assertion: the
    bound is generous and only stops a hung test.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)


class Worker(threading.Thread):
    """A daemon thread that keeps its exception (or result) for the test to check."""

    def __init__(self, target: Callable[[], Any], name: str = "worker") -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float = 20.0) -> Any:
        """Join (bounded), fail if still running, re-raise the thread's exception."""
        self.join(timeout)
        if self.is_alive():
            pytest.fail(f"thread {self.name} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def query(conn: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run ``sql`` on a DB-API connection (pooled or raw) and return all rows."""
    cur = conn.cursor()
    try:
        if params:
            cur.execute(sql, tuple(params))
        else:  # no parameters: a literal % must not be taken for a placeholder
            cur.execute(sql)
        rows = cur.fetchall() if cur.description is not None else []
        return [tuple(r) for r in rows]
    finally:
        cur.close()


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class SessionCounter:
    """Counts (and lists) the server sessions of one tagged URL, from an admin connection."""

    def __init__(self, ids: Callable[[], set[Any]]) -> None:
        self._ids = ids

    def __call__(self) -> int:
        return len(self._ids())

    def ids(self) -> set[Any]:
        """The server session ids (``pg_backend_pid()`` / ``CONNECTION_ID()``) right now."""
        return self._ids()


class Backend:
    """A real database for one test. Subclasses: :class:`SQLiteBackend`,
    :class:`PostgresBackend`, :class:`MySQLBackend` (built by :meth:`create`)."""

    name: str = ""
    #: SQL returning the server session id, or ``None`` (SQLite: no server).
    session_id_sql: str | None = None
    #: Whether :meth:`kill` and :meth:`tagged` are available.
    has_server: bool = False
    #: The DB-API placeholder for :meth:`sql`.
    placeholder: str = "%s"

    def __init__(self, url: str) -> None:
        self.url = url
        self._tables: list[str] = []
        self._cleanups: list[Callable[[], None]] = []
        self._admin: Any = None

    @staticmethod
    def create(name: str, base_url: str, tmp_path: Path) -> Backend:
        if name == "sqlite":
            return SQLiteBackend(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "backend.db")
        if name == "postgres":
            return PostgresBackend(base_url)
        if name == "mysql":
            return MySQLBackend(base_url)
        raise ValueError(name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # ------------------------------------------------------------------ SQL helpers

    def sql(self, text: str) -> str:
        """``text`` with ``%s`` placeholders converted to this driver's style."""
        return text if self.placeholder == "%s" else text.replace("%s", self.placeholder)

    def session_id(self, conn: Any) -> Any:
        """The server session behind a (pooled or raw) connection, asked over the wire."""
        assert self.session_id_sql is not None
        return query(conn, self.session_id_sql)[0][0]

    def client_session_id(self, raw: Any) -> Any:
        """The server session id of a raw driver connection, known client-side (no I/O)."""
        raise NotImplementedError

    def client_closed(self, raw: Any) -> bool:
        """Whether the client side of a raw driver connection is closed (no I/O)."""
        raise NotImplementedError

    @property
    def operational_error(self) -> type[Exception]:
        """The driver's ``OperationalError`` (raised e.g. for a killed session)."""
        raise NotImplementedError

    def raw_connect(self) -> Any:
        """A new driver connection opened without the pool (for callable pool targets)."""
        raise NotImplementedError

    @property
    def admin(self) -> Any:
        """A separate autocommit connection, opened on first use, closed at cleanup."""
        if self._admin is None:
            self._admin = self._connect_admin()
        return self._admin

    def admin_query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return query(self.admin, self.sql(sql), params)

    def new_table(self) -> str:
        """Create (committed) a scratch table ``(id INTEGER PRIMARY KEY, v VARCHAR(50))``."""
        table = _unique("dbpool_t")
        self.admin_query(
            f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, v VARCHAR(50))" + self._table_suffix()
        )
        self._tables.append(table)
        return table

    def count_rows(self, table: str) -> int:
        """Committed rows in ``table``, read outside every pooled transaction."""
        return int(self.admin_query(f"SELECT COUNT(*) FROM {table}")[0][0])

    # ------------------------------------------------------------------ server sessions

    def kill(self, session_id: Any) -> None:
        """Terminate a server session from the admin connection; wait until it is gone."""
        pytest.skip(f"{self.name} has no server sessions to kill")

    def tagged(self) -> tuple[str, SessionCounter]:
        """A URL whose sessions the server can identify, and a counter of those sessions."""
        pytest.skip(f"{self.name} has no server sessions to count")

    # ------------------------------------------------------------------ teardown

    def cleanup(self) -> None:
        """Drop what this backend created; never raise for a leftover."""
        for fn in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                fn()
        for table in self._tables:
            with contextlib.suppress(Exception):
                self.admin_query(f"DROP TABLE {table}")
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None

    # ------------------------------------------------------------------ per backend

    def _connect_admin(self) -> Any:
        raise NotImplementedError

    def _table_suffix(self) -> str:
        return ""


class SQLiteBackend(Backend):
    name = "sqlite"
    placeholder = "?"

    def __init__(self, url: str, path: Path) -> None:
        super().__init__(url)
        self.path = path

    def session_id(self, conn: Any) -> Any:
        # No server: the driver connection object itself identifies the "session" (holding it
        # keeps it alive, so unlike id() it can never be reused by another connection).
        return getattr(conn, "driver_connection", conn)

    def client_session_id(self, raw: Any) -> Any:
        return raw

    def client_closed(self, raw: Any) -> bool:
        try:
            raw.in_transaction  # noqa: B018 -- raises once closed
        except sqlite3.ProgrammingError:
            return True
        return False

    @property
    def operational_error(self) -> type[Exception]:
        return sqlite3.OperationalError

    def _connect_admin(self) -> Any:
        return sqlite3.connect(self.path, isolation_level=None, timeout=10)

    def raw_connect(self) -> Any:
        return sqlite3.connect(self.path, check_same_thread=False, timeout=10)


def _plain_pg_url(url: str) -> str:
    """``url`` as libpq accepts it (no ``+driver`` in the scheme)."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgres") else url


def _with_query(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


class PostgresBackend(Backend):
    name = "postgres"
    has_server = True
    session_id_sql = "SELECT pg_backend_pid()"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._tag = _unique("dbpool")
        self._tags = [self._tag]
        super().__init__(_with_query(base_url, "application_name", self._tag))

    def client_session_id(self, raw: Any) -> Any:
        return raw.info.backend_pid

    def client_closed(self, raw: Any) -> bool:
        return bool(raw.closed)

    @property
    def operational_error(self) -> type[Exception]:
        import psycopg

        return psycopg.OperationalError

    def _connect_admin(self) -> Any:
        import psycopg

        conn = psycopg.connect(
            _plain_pg_url(self.base_url), autocommit=True, application_name="dbpool_admin"
        )
        conn.execute("SET lock_timeout = '10s'")
        return conn

    def raw_connect(self) -> Any:
        import psycopg

        return psycopg.connect(_plain_pg_url(self.url), connect_timeout=10)

    def _ids(self, tag: str) -> set[Any]:
        rows = self.admin_query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (tag,)
        )
        return {r[0] for r in rows}

    def kill(self, session_id: Any) -> None:
        (ok,) = self.admin_query("SELECT pg_terminate_backend(%s, 10000)", (session_id,))[0]
        assert ok, f"could not terminate PostgreSQL backend {session_id}"

    def tagged(self) -> tuple[str, SessionCounter]:
        tag = _unique("dbpool")
        self._tags.append(tag)
        return _with_query(self.base_url, "application_name", tag), SessionCounter(
            lambda: self._ids(tag)
        )

    def cleanup(self) -> None:
        # Sessions a failed test left behind would hold locks on the tables dropped below.
        with contextlib.suppress(Exception):
            self.admin_query(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE application_name = ANY(%s)",
                (self._tags,),
            )
        super().cleanup()


class MySQLBackend(Backend):
    name = "mysql"
    has_server = True
    session_id_sql = "SELECT CONNECTION_ID()"

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        parts = urlsplit(base_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 3306
        self._user = unquote(parts.username) if parts.username else "root"
        self._password = unquote(parts.password) if parts.password else ""
        self._database = unquote(parts.path.lstrip("/")) or "test"
        self._scheme = parts.scheme

    def client_session_id(self, raw: Any) -> Any:
        return raw.thread_id()

    def client_closed(self, raw: Any) -> bool:
        return not raw.open

    @property
    def operational_error(self) -> type[Exception]:
        import pymysql

        return pymysql.err.OperationalError

    def rollback_count(self, conn: Any) -> int:
        """How many ROLLBACK statements this session has run (``Com_rollback``)."""
        return int(query(conn, "SHOW SESSION STATUS LIKE 'Com_rollback'")[0][1])

    def raw_connect(self, autocommit: bool = False) -> Any:
        import pymysql

        return pymysql.connect(
            host=self._host,
            port=self._port,
            user=self._user,
            password=self._password,
            database=self._database,
            autocommit=autocommit,
            connect_timeout=10,
        )

    def _connect_admin(self) -> Any:
        conn = self.raw_connect(autocommit=True)
        query(conn, "SET SESSION lock_wait_timeout = 10")
        return conn

    def _table_suffix(self) -> str:
        return " ENGINE=InnoDB"

    def _ids_of(self, user: str) -> set[Any]:
        rows = self.admin_query(
            "SELECT id FROM information_schema.processlist WHERE user = %s AND command <> 'Killed'",
            (user,),
        )
        return {r[0] for r in rows}

    def _gone(self, session_id: Any) -> bool:
        rows = self.admin_query(
            "SELECT COUNT(*) FROM information_schema.processlist "
            "WHERE id = %s AND command <> 'Killed'",
            (session_id,),
        )
        return int(rows[0][0]) == 0

    def kill(self, session_id: Any) -> None:
        self.admin_query(f"KILL {int(session_id)}")
        wait_until(lambda: self._gone(session_id), what=f"MySQL session {session_id} to end")

    def tagged(self) -> tuple[str, SessionCounter]:
        user = _unique("dbpool")[:32]
        self.admin_query(f"CREATE USER '{user}'@'%'")
        self._cleanups.append(lambda: self._drop_user(user))
        self.admin_query(f"GRANT ALL ON `{self._database}`.* TO '{user}'@'%'")
        port = f":{self._port}"
        url = f"{self._scheme}://{user}@{self._host}{port}/{self._database}"
        return url, SessionCounter(lambda: self._ids_of(user))

    def _drop_user(self, user: str) -> None:
        for session_id in self._ids_of(user):
            with contextlib.suppress(Exception):
                self.admin_query(f"KILL {int(session_id)}")
        self.admin_query(f"DROP USER '{user}'@'%'")
