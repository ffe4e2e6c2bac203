"""The demo's notes API: a small JSON service backed by flask-dbpool.

``create_app()`` builds the same API in one of two modes:

``pooled`` (the default)
    Views use :attr:`DBPool.connection <flask_dbpool.DBPool.connection>`: one pooled connection
    per request, returned (and rolled back if need be) at teardown.
``direct``
    The comparison: every request opens a brand-new driver connection and closes it at
    teardown, which is what an app without a pool does.

Both modes count the database connections they open (:func:`connections_opened`). The SQL is
the same on SQLite, PostgreSQL and MySQL/MariaDB: only the ``CREATE TABLE`` statement differs,
and ``?`` placeholders are rewritten to ``%s`` for drivers whose DB-API ``paramstyle`` needs it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, current_app, g, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, InternalServerError

from flask_dbpool.drivers import Connector, resolve_target
from flask_dbpool.errors import ConfigError
from flask_dbpool.flask import DBPool
from flask_dbpool.url import parse_url, redact

__all__ = [
    "DEFAULT_TABLE",
    "MAX_LIMIT",
    "MAX_TEXT_LENGTH",
    "DemoState",
    "DirectConnections",
    "Note",
    "NotesStore",
    "close_app",
    "connections_opened",
    "create_app",
    "db",
    "default_sqlite_url",
    "default_url",
    "demo_state",
]

logger = logging.getLogger("flask_dbpool.demo")

#: The pooled apps' extension; each app that ``create_app`` builds gets its own pool.
db = DBPool()

DEFAULT_TABLE = "dbpool_demo_notes"
"""Table used by default (prefixed so that it is unlikely to clash with anything)."""
MAX_TEXT_LENGTH = 1000
"""Longest note accepted, in characters."""
DEFAULT_LIMIT = 20
MAX_LIMIT = 200
"""Most notes ``GET /notes`` returns at once."""
_MAX_ID = 2**63 - 1
_EXTENSION_KEY = "dbpool_demo"
_G_DIRECT = "_dbpool_demo_direct_connection"
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")

_CREATE_TABLE = {
    "sqlite": (
        "CREATE TABLE IF NOT EXISTS {table} ("
        "id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, "
        "created_at VARCHAR(40) NOT NULL)"
    ),
    "postgresql": (
        "CREATE TABLE IF NOT EXISTS {table} ("
        "id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL, created_at VARCHAR(40) NOT NULL)"
    ),
    "mysql": (
        "CREATE TABLE IF NOT EXISTS {table} ("
        "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, body TEXT NOT NULL, "
        "created_at VARCHAR(40) NOT NULL) DEFAULT CHARSET=utf8mb4"
    ),
}


def default_url() -> str:
    """``$DBPOOL_URL`` if set, else an SQLite file in ``./demo-data/`` (created if need be).

    Falls back to a directory under the system temp dir when the current directory is not
    writable.
    """
    env = os.environ.get("DBPOOL_URL")
    if env:
        return env
    return default_sqlite_url()


def default_sqlite_url() -> str:
    """An SQLite file in ``./demo-data/`` (created if need be), else under the temp dir."""
    for directory in (Path.cwd() / "demo-data", Path(tempfile.gettempdir()) / "flask-dbpool-demo"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK):
            return f"sqlite:///{(directory / 'notes.db').resolve()}"
    raise ConfigError("no writable directory for the demo's SQLite database: set DBPOOL_URL")


def paramstyle_of(raw: Any) -> str:
    """The DB-API ``paramstyle`` of the module that made the driver connection ``raw``."""
    module = sys.modules.get(type(raw).__module__.partition(".")[0])
    style = getattr(module, "paramstyle", "qmark")
    return style if isinstance(style, str) else "qmark"


@dataclass(frozen=True, slots=True)
class Note:
    """One note, as stored."""

    id: int
    text: str
    created_at: str

    def as_json(self) -> dict[str, Any]:
        """The note as the API returns it."""
        return {"id": self.id, "text": self.text, "created_at": self.created_at}


class NotesStore:
    """The notes table: portable SQL for sqlite3, psycopg/psycopg2 and PyMySQL/mysqlclient.

    ``dialect`` is ``sqlite``, ``postgresql`` or ``mysql``; ``paramstyle`` the driver's DB-API
    paramstyle (``qmark``, ``format`` or ``pyformat``). Queries are written with ``?`` and
    rewritten once here. Methods take any DB-API connection (pooled or not); writes commit.
    """

    def __init__(self, dialect: str, paramstyle: str, table: str = DEFAULT_TABLE) -> None:
        if dialect not in _CREATE_TABLE:
            raise ConfigError(f"the demo does not support the {dialect!r} dialect")
        if not _TABLE_NAME.match(table):
            raise ConfigError(f"invalid table name {table!r}: use letters, digits and _")
        if paramstyle not in ("qmark", "format", "pyformat"):
            raise ConfigError(f"unsupported DB-API paramstyle {paramstyle!r}")
        self.dialect = dialect
        self.table = table
        self._style = paramstyle
        returning = " RETURNING id" if dialect == "postgresql" else ""
        columns = f"id, body, created_at FROM {table}"
        self._sql = {
            "create": _CREATE_TABLE[dialect].format(table=table),
            "list": self._q(f"SELECT {columns} ORDER BY id DESC LIMIT ?"),
            "get": self._q(f"SELECT {columns} WHERE id = ?"),
            "insert": self._q(f"INSERT INTO {table} (body, created_at) VALUES (?, ?){returning}"),
            "delete": self._q(f"DELETE FROM {table} WHERE id = ?"),
            "count": f"SELECT COUNT(*) FROM {table}",
            "drop": f"DROP TABLE IF EXISTS {table}",
        }

    def _q(self, sql: str) -> str:
        return sql if self._style == "qmark" else sql.replace("?", "%s")

    @staticmethod
    @contextmanager
    def _cursor(conn: Any) -> Iterator[Any]:
        cur = conn.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def create_schema(self, conn: Any) -> None:
        """Create the table if it is missing (and turn on WAL for an SQLite file)."""
        with self._cursor(conn) as cur:
            if self.dialect == "sqlite":
                cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
                cur.fetchall()
            cur.execute(self._sql["create"])
        conn.commit()

    def drop_schema(self, conn: Any) -> None:
        """Drop the table (tests and clean-up)."""
        with self._cursor(conn) as cur:
            cur.execute(self._sql["drop"])
        conn.commit()

    def recent(self, conn: Any, limit: int = DEFAULT_LIMIT) -> list[Note]:
        """The ``limit`` newest notes, newest first."""
        with self._cursor(conn) as cur:
            cur.execute(self._sql["list"], (limit,))
            return [_note(row) for row in cur.fetchall()]

    def get(self, conn: Any, note_id: int) -> Note | None:
        """The note ``note_id``, or ``None``."""
        if not 0 < note_id <= _MAX_ID:
            return None
        with self._cursor(conn) as cur:
            cur.execute(self._sql["get"], (note_id,))
            row = cur.fetchone()
        return None if row is None else _note(row)

    def add(self, conn: Any, text: str) -> Note:
        """Insert a note and commit; return it."""
        created_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with self._cursor(conn) as cur:
            cur.execute(self._sql["insert"], (text, created_at))
            note_id = cur.fetchone()[0] if self.dialect == "postgresql" else cur.lastrowid
        conn.commit()
        return Note(int(note_id), text, created_at)

    def delete(self, conn: Any, note_ids: Iterable[int]) -> int:
        """Delete notes by id and commit; return how many existed."""
        deleted = 0
        with self._cursor(conn) as cur:
            for note_id in note_ids:
                if 0 < note_id <= _MAX_ID:
                    cur.execute(self._sql["delete"], (note_id,))
                    deleted += max(cur.rowcount, 0)
        conn.commit()
        return deleted

    def count(self, conn: Any) -> int:
        """How many notes there are."""
        with self._cursor(conn) as cur:
            cur.execute(self._sql["count"])
            return int(cur.fetchone()[0])


def _note(row: Any) -> Note:
    return Note(int(row[0]), str(row[1]), str(row[2]))


class DirectConnections:
    """No pool: a new driver connection for each app context, closed at its teardown.

    ``opened`` counts the connections opened so far.
    """

    def __init__(self, connector: Connector) -> None:
        self._connector = connector
        self._lock = threading.Lock()
        self._opened = 0

    @property
    def opened(self) -> int:
        """Connections opened so far."""
        with self._lock:
            return self._opened

    def connection(self) -> Any:
        """This app context's connection, opened on first use."""
        conn = g.get(_G_DIRECT)
        if conn is None:
            conn = self._connector.connect()
            with self._lock:
                self._opened += 1
            setattr(g, _G_DIRECT, conn)
        return conn

    @staticmethod
    def teardown(exc: BaseException | None) -> None:
        """Close the app context's connection, if one was opened (registered as teardown)."""
        conn = g.pop(_G_DIRECT, None)
        if conn is not None:
            try:
                conn.close()  # an open transaction dies with the session
            except Exception:
                logger.exception("closing a direct connection failed")


@dataclass(frozen=True)
class DemoState:
    """What ``create_app`` attaches to an app (``app.extensions["dbpool_demo"]``)."""

    mode: str
    """``"pooled"`` or ``"direct"``."""
    database: str
    """The database URL, password redacted."""
    store: NotesStore
    """The notes table."""
    direct: DirectConnections | None
    """The connection opener of a direct app; ``None`` for a pooled app."""

    def connection(self) -> Any:
        """This app context's connection: pooled, or opened for it."""
        if self.direct is None:
            return db.connection
        return self.direct.connection()


def demo_state(app: Flask | None = None) -> DemoState:
    """The :class:`DemoState` of ``app`` (default: the current app)."""
    target = app if app is not None else current_app
    state: DemoState = target.extensions[_EXTENSION_KEY]
    return state


def connections_opened(app: Flask) -> int:
    """Database connections ``app`` has opened so far (pool ``created`` or direct opens)."""
    state = demo_state(app)
    if state.direct is not None:
        return state.direct.opened
    return DBPool.get_pool(app).stats().created


def close_app(app: Flask) -> None:
    """Close ``app``'s pool, if it has one (idle connections are closed now)."""
    if demo_state(app).direct is None:
        DBPool.get_pool(app).close()


def create_app(
    url: str | None = None,
    *,
    pooled: bool = True,
    pool_size: int = 4,
    max_overflow: int = 0,
    timeout: float = 10.0,
    table: str = DEFAULT_TABLE,
) -> Flask:
    """Build the notes API on ``url`` (default: :func:`default_url`); create its table.

    ``pooled=False`` builds the comparison app, which opens a new connection per request.
    ``pool_size``, ``max_overflow`` and ``timeout`` configure the pool (``DBPOOL_*``).
    Raises :class:`~flask_dbpool.ConfigError` for a bad URL or setting, and the driver's error
    when the database cannot be reached.
    """
    url = url or default_url()
    parsed = parse_url(url)
    dialect = parsed.dialect
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    direct: DirectConnections | None = None
    if pooled:
        app.config.update(
            DBPOOL_URL=url,
            DBPOOL_POOL_SIZE=pool_size,
            DBPOOL_MAX_OVERFLOW=max_overflow,
            DBPOOL_TIMEOUT=timeout,
            DBPOOL_NAME="demo",
            DBPOOL_DASHBOARD=True,  # at /_dbpool/, for loopback visitors
            DBPOOL_LEAK_THRESHOLD=30,  # so the dashboard shows where connections are held
        )
        db.init_app(app)
        pool = DBPool.get_pool(app)
        try:
            with pool.connection() as conn:  # stays in the pool (an in-memory DB lives on)
                store = NotesStore(dialect, paramstyle_of(conn.driver_connection), table)
                store.create_schema(conn)
        except BaseException:
            pool.close()
            raise
    else:
        if dialect == "sqlite" and parsed.database in (None, ":memory:"):
            raise ConfigError(
                "direct mode needs a database that outlives a connection: use an SQLite file, "
                "not :memory:"
            )
        connector = resolve_target(url)
        direct = DirectConnections(connector)
        raw = connector.connect()
        try:
            store = NotesStore(dialect, paramstyle_of(raw), table)
            store.create_schema(raw)
        finally:
            raw.close()
        app.teardown_appcontext(direct.teardown)
    app.extensions[_EXTENSION_KEY] = DemoState(
        mode="pooled" if pooled else "direct",
        database=redact(url),
        store=store,
        direct=direct,
    )
    app.register_blueprint(api)
    return app


# ------------------------------------------------------------------------------------- views

api = Blueprint("notes", __name__)
"""The API's routes; registered on every app ``create_app`` builds."""


def _error(status: int, message: str) -> ResponseReturnValue:
    return jsonify(error=message, status=status), status


@api.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> ResponseReturnValue:
    """Every HTTP error as JSON, including 500 for an unhandled exception (logged by Flask)."""
    code = exc.code or 500
    if code == 404:
        message = f"no route for {request.method} {request.path}"
    elif code == 405:
        message = f"method {request.method} not allowed on {request.path}"
    elif isinstance(exc, InternalServerError):
        message = "internal server error (see the server log)"
    else:
        message = exc.description or exc.name
    return _error(code, message)


@api.get("/notes")
def list_notes() -> ResponseReturnValue:
    """``GET /notes?limit=N``: the newest notes first."""
    raw_limit = request.args.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        return _error(400, f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw_limit!r}")
    state = demo_state()
    notes = state.store.recent(state.connection(), limit)
    return jsonify(notes=[note.as_json() for note in notes], count=len(notes))


@api.post("/notes")
def create_note() -> ResponseReturnValue:
    """``POST /notes`` with ``{"text": "..."}``: 201 and the note, or 400 and an error."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        return _error(400, 'the body must be a JSON object such as {"text": "buy milk"}')
    unknown = sorted(set(payload) - {"text"})
    if unknown:
        return _error(400, f"unknown field(s): {', '.join(unknown)}; only 'text' is accepted")
    text = payload.get("text")
    if not isinstance(text, str):
        return _error(400, "'text' is required and must be a string")
    text = text.strip()
    if not text:
        return _error(400, "'text' must not be empty")
    if len(text) > MAX_TEXT_LENGTH:
        return _error(400, f"'text' is longer than {MAX_TEXT_LENGTH} characters")
    state = demo_state()
    note = state.store.add(state.connection(), text)
    location = url_for("notes.get_note", note_id=note.id)
    return jsonify(note.as_json()), 201, {"Location": location}


@api.get("/notes/<int:note_id>")
def get_note(note_id: int) -> ResponseReturnValue:
    """``GET /notes/<id>``: the note, or 404."""
    state = demo_state()
    note = state.store.get(state.connection(), note_id)
    if note is None:
        return _error(404, f"note {note_id} not found")
    return jsonify(note.as_json())


@api.delete("/notes/<int:note_id>")
def delete_note(note_id: int) -> ResponseReturnValue:
    """``DELETE /notes/<id>``: 204, or 404 if there was no such note."""
    state = demo_state()
    if not state.store.delete(state.connection(), [note_id]):
        return _error(404, f"note {note_id} not found")
    return "", 204


@api.get("/health")
def health() -> ResponseReturnValue:
    """``GET /health``: 200 when the database answers, 503 otherwise."""
    state = demo_state()
    body: dict[str, Any] = {"mode": state.mode, "database": state.database}
    try:
        body["notes"] = state.store.count(state.connection())
    except Exception as exc:
        logger.warning("health check failed: %r", exc)
        return jsonify(status="unavailable", error=type(exc).__name__, **body), 503
    return jsonify(status="ok", **body)


@api.get("/stats")
def stats() -> ResponseReturnValue:
    """``GET /stats``: connections opened and, for the pooled app, the pool's statistics."""
    state = demo_state()
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    pool = None if state.direct is not None else DBPool.get_pool(app).stats().as_dict()
    return jsonify(mode=state.mode, connections_opened=connections_opened(app), pool=pool)
