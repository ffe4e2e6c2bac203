"""MySQL and MariaDB through PyMySQL (preferred) or mysqlclient (``MySQLdb``)."""

from __future__ import annotations

from typing import Any

from flask_dbpool.drivers.base import (
    BROKEN,
    IDLE,
    IN_TRANSACTION,
    ConnectFn,
    Driver,
    ServerLimits,
    parse_bool,
    query_options,
    run_query,
)
from flask_dbpool.url import DatabaseURL

__all__ = ["MySQLdbDriver", "PyMySQLDriver"]

#: Client and server error codes meaning the session is gone.
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
_SERVER_STATUS_IN_TRANS = 0x0001

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


def _tracking_class(pymysql: Any) -> type:
    """A PyMySQL connection class that remembers whether its last statement failed."""
    base = pymysql.connections.Connection
    cached = _tracking_classes.get(id(base))
    if cached is not None:
        return cached

    class TrackedConnection(base):  # type: ignore[misc,valid-type]
        dbpool_statement_failed = False

        def query(self, sql: Any, unbuffered: bool = False) -> Any:
            self.dbpool_statement_failed = True
            result = super().query(sql, unbuffered)
            self.dbpool_statement_failed = False
            return result

    TrackedConnection.__module__ = base.__module__  # still recognised as a PyMySQL connection
    _tracking_classes[id(base)] = TrackedConnection
    return TrackedConnection


class _MySQLDriver(Driver):
    """What PyMySQL and mysqlclient share: error codes, the ``open`` flag, server limits."""

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


class PyMySQLDriver(_MySQLDriver):
    """PyMySQL: ``mysql://``, ``mysql+pymysql://``, ``mariadb://``.

    The transaction status comes from the server-status flags of the last reply, so returning
    an idle connection costs no round trip.
    """

    name = "pymysql"
    module = "pymysql"
    extra = "mysql"

    @classmethod
    def connect_factory(cls, url: DatabaseURL) -> ConnectFn:
        connection_class = _tracking_class(cls.import_module())
        kwargs = _connect_kwargs(url, "pymysql", "database", _URL_OPTIONS)

        def connect() -> Any:
            return connection_class(**kwargs)

        return connect

    @staticmethod
    def transaction_state(raw: Any) -> int:
        if not raw.open:
            return BROKEN
        # PyMySQL refreshes server_status only from successful replies, so after a failed
        # statement (which may have opened a transaction and taken locks) the flag is stale.
        # Connections the pool opens record failures (see _tracking_class); assume the worst.
        if getattr(raw, "dbpool_statement_failed", False):
            return IN_TRANSACTION
        return IN_TRANSACTION if raw.server_status & _SERVER_STATUS_IN_TRANS else IDLE

    @classmethod
    def ping(cls, raw: Any, timeout: float) -> None:
        raw.ping(reconnect=False)

    @staticmethod
    def socket_fd(raw: Any) -> int | None:
        sock = raw._sock
        return sock.fileno() if sock is not None else None


class MySQLdbDriver(_MySQLDriver):
    """mysqlclient: ``mysql+mysqldb://``. It has no transaction flag: every return rolls back."""

    name = "MySQLdb"
    module = "MySQLdb"
    extra = "mysqlclient"

    @classmethod
    def connect_factory(cls, url: DatabaseURL) -> ConnectFn:
        mysqldb = cls.import_module()
        kwargs = _connect_kwargs(url, "MySQLdb", "database", _MYSQLDB_URL_OPTIONS)

        def connect() -> Any:
            return mysqldb.connect(**kwargs)

        return connect

    @staticmethod
    def transaction_state(raw: Any) -> int:
        return IN_TRANSACTION if raw.open else BROKEN

    @classmethod
    def ping(cls, raw: Any, timeout: float) -> None:
        raw.ping()
