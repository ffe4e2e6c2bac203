"""MySQL and MariaDB through PyMySQL (preferred) or mysqlclient (``MySQLdb``)."""

from __future__ import annotations

import re
import socket
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flask_dbpool.drivers.aio_base import AsyncConnectFn, AsyncDriver
from flask_dbpool.drivers.base import (
    BROKEN,
    DEAD,
    IDLE,
    IN_TRANSACTION,
    RETRYABLE,
    SERVER_CHANGED,
    ConnectFn,
    Driver,
    ServerLimits,
    bounded_call,
    parse_bool,
    query_options,
    run_query,
)
from flask_dbpool.errors import ConfigError, PingTimeout, PoolError
from flask_dbpool.url import DatabaseURL

__all__ = ["AiomysqlDriver", "MySQLdbDriver", "PyMySQLDriver"]

#: Client and server error codes meaning the session is gone.
#: Error codes saying the server is no longer the one connected to: read-only (a primary
#: demoted after a failover: ER_OPTION_PREVENTS_STATEMENT with --read-only,
#: ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION, ER_READ_ONLY_MODE), or gone (CR_SERVER_GONE_ERROR,
#: CR_SERVER_LOST: a restart, or wait_timeout, which expires the other idle ones too).
SERVER_CHANGED_CODES = frozenset({1290, 1792, 1836, 2006, 2013})
#: ER_LOCK_DEADLOCK (the transaction was rolled back) and ER_LOCK_WAIT_TIMEOUT (the statement
#: was; run_transaction rolls the rest back before running it all again).
RETRYABLE_CODES = frozenset({1213, 1205})

DISCONNECT_CODES = frozenset(
    {
        1053,  # ER_SERVER_SHUTDOWN
        1927,  # ER_CONNECTION_KILLED (MariaDB)
        2006,  # CR_SERVER_GONE_ERROR
        2013,  # CR_SERVER_LOST
        2014,  # CR_COMMANDS_OUT_OF_SYNC
        2045,  # CR_CONN_UNKNOW_PROTOCOL
        2055,  # CR_SERVER_LOST_EXTENDED
        4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
    }
)
#: Server and client error codes meaning this login is refused for good (retrying the same
#: credentials, database and options cannot succeed).
REJECTION_CODES = frozenset(
    {
        1044,  # ER_DBACCESS_DENIED_ERROR: no access to the database
        1045,  # ER_ACCESS_DENIED_ERROR: wrong user or password
        1049,  # ER_BAD_DB_ERROR: unknown database
        1130,  # ER_HOST_NOT_PRIVILEGED: this host may not connect
        1251,  # ER_NOT_SUPPORTED_AUTH_MODE: the client cannot do the account's auth plugin
        1698,  # ER_ACCESS_DENIED_NO_PASSWORD_ERROR
        1862,  # ER_MUST_CHANGE_PASSWORD_LOGIN: expired password
        2059,  # CR_AUTH_PLUGIN_CANNOT_LOAD
        3118,  # ER_ACCOUNT_HAS_BEEN_LOCKED (MySQL)
        4151,  # ER_ACCOUNT_HAS_BEEN_LOCKED (MariaDB)
    }
)
_SERVER_STATUS_IN_TRANS = 0x0001
_SERVER_STATUS_AUTOCOMMIT = 0x0002

_URL_OPTIONS: dict[str, Any] = {
    "charset": str,
    "connect_timeout": float,
    "read_timeout": float,
    "write_timeout": float,
    "unix_socket": str,
    "init_command": str,
    "sql_mode": str,
    "autocommit": parse_bool,
    "ssl_ca": str,
    "ssl_cert": str,
    "ssl_key": str,
    "ssl_verify_cert": parse_bool,
    "ssl_verify_identity": parse_bool,
    "local_infile": parse_bool,
}


# mysqlclient takes SSL settings as one dict and timeouts as whole seconds.
_MYSQLDB_URL_OPTIONS: dict[str, Any] = {
    key: (int if key.endswith("timeout") else convert)
    for key, convert in _URL_OPTIONS.items()
    if not key.startswith("ssl_")
}


def _connect_kwargs(
    url: DatabaseURL, driver: str, database_key: str, allowed: dict[str, Any]
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "host": url.host or "localhost",
        "port": url.port or 3306,
        "user": url.username or "root",
        "password": url.password or "",
        "charset": "utf8mb4",
        "autocommit": False,
        "connect_timeout": 10,
    }
    if url.database is not None:
        kwargs[database_key] = url.database
    kwargs.update(query_options(url, allowed, driver))
    return kwargs


def _error_code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


_tracking_classes: dict[int, type] = {}


@contextmanager
def _io_bounded(conn: Any, bound: float | None) -> Iterator[None]:
    """Cap a PyMySQL connection's read and write timeouts at ``bound`` seconds for the block,
    then put the user's back.

    ``_read_timeout``/``_write_timeout`` are PyMySQL's private settings (no public setter),
    applied by its own I/O code before each read and write, which tracks what the socket
    has: the one place this module touches them.
    """
    saved = conn._read_timeout, conn._write_timeout

    def put(read: float | None, write: float | None) -> None:
        conn._read_timeout, conn._write_timeout = read, write

    if bound is not None:
        read, write = saved
        put(
            bound if read is None else min(bound, read),
            bound if write is None else min(bound, write),
        )
    try:
        yield
    finally:
        put(*saved)


#: COM_RESET_CONNECTION (MySQL 5.7.3+, MariaDB 10.2.4+): the server resets the session as a
#: new login would (transaction, user variables, temporary tables, GET_LOCK and table locks,
#: prepared statements, session variables) without authenticating again. PyMySQL has no name
#: for it.
_COM_RESET_CONNECTION = 0x1F
# What may be spliced into the SET that rebuilds a reset session: sql_mode's comma-separated
# words. Anything else is refused, not quoted.
_SQL_MODE = re.compile(r"[A-Za-z0-9_,]*")
_UNKNOWN: Any = object()


@dataclass
class _Opened:
    """What the pool opened a connection with: the session a full reset gives back.

    One object serves every connection opened from one URL; ``default_role`` (the account's
    default role, read once, at the first reset) is the same for all of them.
    """

    database: str | None
    charset: str
    collation: str | None
    autocommit: bool | None
    sql_mode: str | None
    init_command: str | None
    #: mysqlclient's reset is a new login (``change_user``): it needs these.
    user: str = ""
    password: str = field(default="", repr=False)
    default_role: Any = _UNKNOWN
    #: mysqlclient's Python-side encoding, as its connect left it.
    client_encoding: str = ""

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], database_key: str, *, login: bool) -> _Opened:
        return cls(
            database=kwargs.get(database_key),
            charset=kwargs["charset"],
            collation=kwargs.get("collation"),
            autocommit=kwargs["autocommit"],
            sql_mode=kwargs.get("sql_mode"),
            init_command=kwargs.get("init_command"),
            user=kwargs["user"] if login else "",
            password=kwargs["password"] if login else "",
        )


#: The connections this module opened, with what they were opened with (see _Opened).
_OPENED: weakref.WeakKeyDictionary[Any, _Opened] = weakref.WeakKeyDictionary()


def _restore_session(raw: Any, opened: _Opened, *, init_command_first: bool) -> None:
    """After a server-side reset (which sets every session variable back to the server's
    default, but keeps the current database and, on MariaDB, the current role), give the
    session what the driver's connect gave it, in the driver's order: the database and the
    account's default role, ``sql_mode``, ``init_command`` and ``autocommit``. Two round
    trips without ``init_command`` (one ``SELECT``, one ``SET``), more only to undo a
    ``USE`` or ``SET ROLE``. Raises :class:`PoolError` when the session cannot be put back
    (a database chosen on a connection opened without one; an invalid ``sql_mode``)."""
    database, role = _select_row(raw, "SELECT DATABASE(), CURRENT_ROLE()")
    if database != opened.database:
        if opened.database is None:
            raise PoolError(
                "a borrower chose a database (USE), and a session cannot go back to none"
            )
        raw.select_db(opened.database)
    role = None if role in (None, "NONE") else role  # MySQL 8 says NONE, MariaDB NULL
    if opened.default_role is _UNKNOWN:
        found = _select_row(
            raw,
            "SELECT (SELECT ROLE_NAME FROM information_schema.APPLICABLE_ROLES "
            "WHERE IS_DEFAULT = 'YES' LIMIT 1)",
        )
        opened.default_role = found[0]
    if role != opened.default_role:
        default = opened.default_role
        _execute(raw, "SET ROLE " + ("NONE" if default is None else _quoted_name(default)))
    settings = []
    if opened.sql_mode is not None:
        if not _SQL_MODE.fullmatch(opened.sql_mode):
            raise PoolError("cannot restore the session's sql_mode: not a list of SQL modes")
        settings.append(f"sql_mode = '{opened.sql_mode}'")
    autocommit = None if opened.autocommit is None else f"autocommit = {int(opened.autocommit)}"
    if opened.init_command is not None and init_command_first:
        _execute(raw, opened.init_command)
    if opened.init_command is None or init_command_first:
        settings += [autocommit] if autocommit else []
        autocommit = None
    if settings:
        _execute(raw, "SET " + ", ".join(settings))
    if opened.init_command is not None and not init_command_first:
        _execute(raw, opened.init_command)
    if autocommit:
        _execute(raw, "SET " + autocommit)


def _quoted_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _select_row(raw: Any, sql: str) -> tuple[Any, ...]:
    """The one row of ``sql`` (as a tuple, whatever the connection's cursor class)."""
    cur = raw.cursor()
    try:
        cur.execute(sql)
        row = cur.fetchone()
    finally:
        cur.close()
    return tuple(row.values()) if isinstance(row, dict) else tuple(row)


def _execute(raw: Any, sql: str) -> None:
    cur = raw.cursor()
    try:
        cur.execute(sql)
    finally:
        cur.close()


def _last_result(raw: Any) -> Any:
    """PyMySQL's last result of ``raw`` (private, but its own cursors rely on it so)."""
    return raw._result


def _tracking_class(pymysql: Any) -> type:
    """A PyMySQL connection class that remembers whether its last statement failed."""
    base = pymysql.connections.Connection
    cached = _tracking_classes.get(id(base))
    if cached is not None:
        return cached

    class TrackedConnection(base):  # type: ignore[misc,valid-type]
        dbpool_statement_failed = False
        connect_timeout: float | None

        def connect(self, sock: Any = None) -> None:
            # PyMySQL's connect_timeout covers only the TCP connect; the handshake and login
            # then read with read_timeout (None: forever), so a server that accepts but
            # never answers would hold the pool's caller for good. Bound them by
            # connect_timeout too, then give the user's timeouts back (PyMySQL applies them
            # again before its next read or write).
            with _io_bounded(self, self.connect_timeout):
                super().connect(sock)

        def query(self, sql: Any, unbuffered: bool = False) -> Any:
            self.dbpool_statement_failed = True
            result = super().query(sql, unbuffered)
            self.dbpool_statement_failed = False
            return result

        def next_result(self, unbuffered: bool = False) -> Any:
            # A later result of a CALL or multi-statement may be the error (cursor.close()
            # and nextset() read them): the statement failed just the same, and may have
            # left a transaction open behind a stale server_status.
            self.dbpool_statement_failed = True
            result = super().next_result(unbuffered)
            self.dbpool_statement_failed = False
            return result

        def dbpool_reset_connection(self) -> None:
            # COM_RESET_CONNECTION: PyMySQL has no public call for it; these are the two
            # steps its own select_db() takes for COM_INIT_DB (send, read the OK packet).
            self._execute_command(_COM_RESET_CONNECTION, b"")
            self._read_ok_packet()

    TrackedConnection.__module__ = base.__module__  # still recognised as a PyMySQL connection
    _tracking_classes[id(base)] = TrackedConnection
    return TrackedConnection


def _is_server_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from an error packet of the server (which ends the statement and
    leaves the protocol in step), rather than from the client library (codes 2000-2999)."""
    code = _error_code(exc)
    return code is not None and code > 0 and not 2000 <= code < 3000


@dataclass(frozen=True)
class _PyMySQLSettings:
    """The client-side settings of a PyMySQL connection as the pool set them up."""

    autocommit: bool | None
    charset: str
    collation: str | None
    cursorclass: Any
    encoders: dict[Any, Any]
    decoders: dict[Any, Any]


class _MySQLDriver(Driver):
    """What PyMySQL and mysqlclient share: error codes, the ``open`` flag, server limits."""

    supports_session_reset: ClassVar[bool] = True

    @staticmethod
    def is_rejection(exc: BaseException) -> bool:
        """Access denied (1044, 1045, 1698), unknown database (1049), host not allowed
        (1130), authentication plugin refused or not loadable (1251, 2059), expired password
        or locked account. Too many connections (1040), cannot connect (2003), lost
        connection (2013) and timeouts are outages, not rejections."""
        return _error_code(exc) in REJECTION_CODES

    @classmethod
    def server_version(cls, raw: Any) -> str:
        version = str(run_query(raw, "SELECT VERSION()")[0][0])
        product = "MariaDB" if "mariadb" in version.lower() else "MySQL"
        return f"{product} {version.split('-')[0]}"

    @classmethod
    def server_limits(cls, raw: Any) -> ServerLimits:
        max_connections = int(run_query(raw, "SELECT @@max_connections")[0][0])
        clients = run_query(
            raw,
            "SELECT user, count(*) FROM information_schema.processlist"
            " WHERE command <> 'Daemon' GROUP BY user ORDER BY 2 DESC, 1",
        )
        by_client = {str(user): int(count) for user, count in clients}
        return ServerLimits(
            server=cls.server_version(raw),
            max_connections=max_connections,
            reserved=0,  # MySQL admits one connection beyond the limit for admins
            sessions=sum(by_client.values()),
            by_client=by_client,
            client_label="user",
        )

    @classmethod
    def is_disconnect(cls, exc: BaseException, raw: Any) -> bool:
        if not raw.open:
            return True
        return isinstance(exc, cls.import_module().MySQLError) and (
            _error_code(exc) in DISCONNECT_CODES
        )

    @staticmethod
    def autocommit(raw: Any) -> bool:
        """From the client's own state (PyMySQL, mysqlclient: ``get_autocommit()``)."""
        return bool(raw.get_autocommit())

    @classmethod
    def cancel(cls, raw: Any, timeout: float, side_connect: ConnectFn) -> bool:
        """``KILL QUERY <its thread id>`` from a side connection (the protocol has no cancel
        request on the connection itself), only once that connection shows the id running a
        statement of the same user: a target that now resolves to another server (a
        failover, a proxy) must not have an unrelated session's statement killed there."""
        thread_id = int(raw.thread_id())
        side = side_connect()
        try:
            cursor = side.cursor()
            try:
                cursor.execute(
                    "SELECT COUNT(*) FROM information_schema.processlist WHERE id = %s "
                    "AND user = SUBSTRING_INDEX(USER(), '@', 1) AND command <> 'Sleep'",
                    (thread_id,),
                )
                row = cursor.fetchone()
                if not row or not row[0]:
                    return False
                cursor.execute(f"KILL QUERY {thread_id}")
            finally:
                cursor.close()
        finally:
            side.close()
        return True

    @classmethod
    def classify(cls, exc: BaseException, raw: Any) -> str | None:
        """By error code (see ``SERVER_CHANGED_CODES``, ``RETRYABLE_CODES``), then whether
        the connection is gone."""
        code = _error_code(exc) if isinstance(exc, cls.import_module().MySQLError) else None
        if code in SERVER_CHANGED_CODES:
            return SERVER_CHANGED
        if cls.is_disconnect(exc, raw):
            return DEAD
        if code in RETRYABLE_CODES:
            return RETRYABLE
        return None


class PyMySQLDriver(_MySQLDriver):
    """PyMySQL: ``mysql://``, ``mysql+pymysql://``, ``mariadb://``.

    The transaction status comes from the server-status flags of the last reply, so returning
    an idle connection costs no round trip.
    """

    name = "pymysql"
    module = "pymysql"
    closed_error_names = ("InterfaceError",)  # (0, '')
    extra = "mysql"

    @classmethod
    def connect_factory(cls, url: DatabaseURL) -> ConnectFn:
        connection_class = _tracking_class(cls.import_module())
        kwargs = _connect_kwargs(url, "pymysql", "database", _URL_OPTIONS)
        opened = _Opened.from_kwargs(kwargs, "database", login=False)

        def connect() -> Any:
            raw = connection_class(**kwargs)
            _OPENED[raw] = opened
            return raw

        return connect

    @staticmethod
    def transaction_state(raw: Any) -> int:
        if not raw.open:
            return BROKEN
        # A multi-result reply (a CALL, a multi-statement) not read to its end: PyMySQL's
        # flags describe only the results read so far, the rest (a transaction the
        # procedure opened, an error packet) would reach the next borrower. ``_result`` is
        # PyMySQL's last result (private, but its own cursors rely on it the same way).
        result = _last_result(raw)
        if result is not None and (result.has_next or result.unbuffered_active):
            return IN_TRANSACTION
        # PyMySQL refreshes server_status only from successful replies, so after a failed
        # statement (which may have opened a transaction and taken locks) the flag is stale.
        # Connections the pool opens record failures (see _tracking_class); assume the worst.
        if getattr(raw, "dbpool_statement_failed", False):
            return IN_TRANSACTION
        status = raw.server_status
        if status & _SERVER_STATUS_IN_TRANS:
            return IN_TRANSACTION
        # A SQL ``SET autocommit = 1`` behind the driver's back (the server's flag disagrees
        # with the mode PyMySQL was given; never true for a mode of None): rollback() puts
        # it back.
        if (not status & _SERVER_STATUS_AUTOCOMMIT) == raw.autocommit_mode:
            return IN_TRANSACTION
        return IDLE

    @classmethod
    def rollback(cls, raw: Any) -> None:
        """Read and drop any unread results, roll back, and put autocommit back to what
        PyMySQL was told (a SQL ``SET autocommit`` changed only the server's side).

        An error packet among the unread results (a later statement of the procedure
        failed) ended that reply and is dropped; any other error while draining means the
        protocol state is unknown and is raised (the pool then discards the connection).
        """
        result = _last_result(raw)
        if result is not None:
            try:
                if result.unbuffered_active:
                    # An unbuffered (SSCursor) result not read to its end: PyMySQL itself
                    # reads it out before the next command; do it here, without its warning.
                    result._finish_unbuffered_query()
                while (result := _last_result(raw)) is not None and result.has_next:
                    raw.next_result()
            except cls.import_module().MySQLError as exc:
                if not (raw.open and _is_server_error(exc)):
                    raise
        raw.rollback()
        if raw.autocommit_mode is not None:
            # No round trip unless the server's flag (fresh from ROLLBACK) differs.
            raw.autocommit(raw.autocommit_mode)

    @classmethod
    def ping(cls, raw: Any, timeout: float) -> None:
        """One ``COM_PING`` round trip, bounded by ``timeout`` through the socket timeout
        PyMySQL applies before each read and write; on expiry PyMySQL closes the socket and
        :class:`PingTimeout` is raised."""
        try:
            with _io_bounded(raw, timeout):
                raw.ping(reconnect=False)
        except cls.import_module().OperationalError as exc:
            if isinstance(exc.__context__, (TimeoutError, socket.timeout)):
                raise PingTimeout(
                    f"no answer to the ping within {timeout:.3g} s; the connection was closed"
                ) from exc
            raise

    @staticmethod
    def socket_fd(raw: Any) -> int | None:
        sock = raw._sock
        return sock.fileno() if sock is not None else None

    # autocommit(True) and set_character_set() change settings by a method call; encoders
    # and decoders are dicts a borrower may change in place. Reading any of them through
    # the handle marks the checkout changed (Driver.watch).
    watched_names: ClassVar[frozenset[str]] = frozenset(
        {"autocommit", "set_character_set", "set_charset", "encoders", "decoders"}
    )

    @classmethod
    def save_settings(cls, raw: Any) -> _PyMySQLSettings:
        """``autocommit`` mode, character set and collation, ``cursorclass``, and copies of
        the ``encoders`` and ``decoders`` maps."""
        return _PyMySQLSettings(
            autocommit=raw.autocommit_mode,
            charset=raw.charset,
            collation=raw.collation,
            cursorclass=raw.cursorclass,
            encoders=dict(raw.encoders),
            decoders=dict(raw.decoders),
        )

    @classmethod
    def restore_settings(cls, raw: Any, saved: Any) -> None:
        """Put back what :meth:`save_settings` saw: a round trip only for ``autocommit`` or
        the character set, and only when they differ. Raises :class:`PoolError` when the
        pool connected with the server's default autocommit (``autocommit=None``) and a
        borrower changed it: that default cannot be restored without asking the server."""
        assert isinstance(saved, _PyMySQLSettings)
        if saved.autocommit is not None:
            raw.autocommit(saved.autocommit)  # no round trip if the server's flag matches
        elif raw.autocommit_mode is not None:
            raise PoolError("autocommit was changed from the server default")
        if raw.charset != saved.charset or raw.collation != saved.collation:
            raw.set_character_set(saved.charset, saved.collation)
        if raw.cursorclass is not saved.cursorclass:
            raw.cursorclass = saved.cursorclass
        if raw.encoders != saved.encoders:
            raw.encoders = dict(saved.encoders)
        if raw.decoders != saved.decoders:
            raw.decoders = dict(saved.decoders)

    @staticmethod
    def reset_session(raw: Any) -> None:
        """``reset_on_return="discard"``: ``COM_RESET_CONNECTION`` (the server resets the
        session as a new login would, to the character set of the login), then the client's
        character set if a borrower changed it, and the session as opened (see
        ``_restore_session``): three round trips without ``init_command``. Raises the
        driver's error if the server refuses (MySQL before 5.7.3, MariaDB before 10.2.4),
        :class:`PoolError` if the session cannot be put back, or for a connection the pool
        did not open from a URL (a callable target's: it is then closed on return)."""
        opened = _OPENED.get(raw)
        if opened is None:
            raise PoolError(
                "reset_on_return='discard' with PyMySQL needs the pool to open the "
                "connection from a URL"
            )
        raw.dbpool_reset_connection()
        if raw.charset != opened.charset or raw.collation != opened.collation:
            raw.set_character_set(opened.charset, opened.collation)  # client and server
        _restore_session(raw, opened, init_command_first=False)


class MySQLdbDriver(_MySQLDriver):
    """mysqlclient: ``mysql+mysqldb://``. It has no transaction flag: every return rolls back."""

    name = "MySQLdb"
    module = "MySQLdb"
    # InterfaceError for most calls, OperationalError (2006) for some: a returned handle is
    # both, so either ``except`` catches it.
    closed_error_names = ("InterfaceError", "OperationalError")
    extra = "mysqlclient"

    @classmethod
    def connect_factory(cls, url: DatabaseURL) -> ConnectFn:
        mysqldb = cls.import_module()
        kwargs = _connect_kwargs(url, "MySQLdb", "database", _MYSQLDB_URL_OPTIONS)
        opened = _Opened.from_kwargs(kwargs, "database", login=True)

        def connect() -> Any:
            raw = mysqldb.connect(**kwargs)
            opened.client_encoding = raw.encoding
            _OPENED[raw] = opened
            return raw

        return connect

    @staticmethod
    def transaction_state(raw: Any) -> int:
        return IN_TRANSACTION if raw.open else BROKEN

    # autocommit(True) is a method call: watched so that the return restores it.
    watched_names: ClassVar[frozenset[str]] = frozenset({"autocommit"})

    @classmethod
    def save_settings(cls, raw: Any) -> bool:
        """The autocommit mode (``get_autocommit()`` reads the last reply's flags: no I/O)."""
        return bool(raw.get_autocommit())

    @classmethod
    def restore_settings(cls, raw: Any, saved: Any) -> None:
        """Set autocommit back (a round trip only if it differs)."""
        raw.autocommit(bool(saved))

    @staticmethod
    def reset_session(raw: Any) -> None:
        """``reset_on_return="discard"``: mysqlclient cannot send ``COM_RESET_CONNECTION``,
        so the session is reset by logging in again on it (``change_user``, which resets as
        much), then the character set, ``sql_mode``, ``init_command`` and ``autocommit`` it
        was opened with are set again. Raises :class:`PoolError` for a connection the pool
        did not open from a URL (a callable target's: its password is not known), or the
        driver's error."""
        opened = _OPENED.get(raw)
        if opened is None:
            raise PoolError(
                "reset_on_return='discard' with mysqlclient logs in again to reset the "
                "session, which needs the pool to open the connection from a URL"
            )
        if opened.database is None:
            raw.change_user(opened.user, opened.password)
        else:
            raw.change_user(opened.user, opened.password, opened.database)
        # A borrower's set_character_set() changed the client library's character set and
        # mysqlclient's own encoding, which the new login may not put back.
        if raw.character_set_name() != opened.charset or raw.encoding != opened.client_encoding:
            raw.set_character_set(opened.charset)
        # mysqlclient runs init_command inside its connect, before the rest.
        _restore_session(raw, opened, init_command_first=True)

    @classmethod
    def ping(cls, raw: Any, timeout: float) -> None:
        """One ``mysql_ping`` round trip. It blocks in C, where no socket timeout of ours
        applies: the shared watchdog shuts the socket (``fileno()``) down when ``timeout``
        passes, and :class:`PingTimeout` is raised."""
        bounded_call(cls.socket_fd(raw), timeout, raw.ping)


class AiomysqlDriver(AsyncDriver, _MySQLDriver):
    """aiomysql: ``mysql://``, ``mariadb://``, ``mysql+aiomysql://``. Its transaction flag is
    not refreshed by an error reply, so every return outside autocommit rolls back (one
    round trip), as with mysqlclient."""

    name = "aiomysql"
    module = "aiomysql"
    closed_error_names = ()
    # COM_RESET_CONNECTION is not reachable through aiomysql's public API.
    supports_session_reset: ClassVar[bool] = False

    @classmethod
    def async_connect_factory(cls, url: DatabaseURL) -> AsyncConnectFn:
        aiomysql = cls.import_module()
        kwargs = _connect_kwargs(url, "aiomysql", "db", _URL_OPTIONS)
        for ssl_key in [key for key in kwargs if key.startswith("ssl_")]:
            raise ConfigError(f"{url.redacted()}: {ssl_key} is not supported with aiomysql")

        async def aconnect() -> Any:
            return await aiomysql.connect(**kwargs)

        return aconnect

    @staticmethod
    def transaction_state(raw: Any) -> int:
        if raw.closed:
            return BROKEN
        return IDLE if raw.get_autocommit() and not raw.get_transaction_status() else IN_TRANSACTION

    @classmethod
    def is_disconnect(cls, exc: BaseException, raw: Any) -> bool:
        return bool(raw.closed) or super().is_disconnect(exc, _OpenView(raw))

    @staticmethod
    def autocommit(raw: Any) -> bool:
        return bool(raw.get_autocommit())

    @staticmethod
    async def aping(raw: Any) -> None:
        await raw.ping(reconnect=False)

    @staticmethod
    async def aclose(raw: Any) -> None:
        try:
            await raw.ensure_closed()  # COM_QUIT, then the transport
        except Exception:
            raw.close()

    @classmethod
    def save_settings(cls, raw: Any) -> Any:
        return bool(raw.get_autocommit())

    @classmethod
    async def arestore_settings(cls, raw: Any, saved: Any) -> None:
        if bool(raw.get_autocommit()) != saved:
            await raw.autocommit(saved)

    watched_names: ClassVar[frozenset[str]] = frozenset({"autocommit"})


class _OpenView:
    """``raw`` seen through PyMySQL's ``open`` flag (aiomysql calls it ``closed``)."""

    def __init__(self, raw: Any) -> None:
        self.open = not raw.closed
