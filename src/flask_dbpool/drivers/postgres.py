"""PostgreSQL through psycopg 3 (preferred) or psycopg2.

Both read the libpq transaction status locally, so returning an idle connection costs no
round trip. URL parts are passed to libpq as separate parameters, never as one string, so the
password cannot surface in a connection-string parse error.
"""

from __future__ import annotations

from typing import Any

from flask_dbpool.drivers.base import (
    BROKEN,
    FAILED,
    IDLE,
    IN_TRANSACTION,
    ConnectFn,
    Driver,
    ServerLimits,
    run_query,
)
from flask_dbpool.errors import ConfigError
from flask_dbpool.url import DatabaseURL

__all__ = ["Psycopg2Driver", "PsycopgDriver"]

#: libpq waits forever for an unreachable host by default; a pool should not.
DEFAULT_CONNECT_TIMEOUT = "10"


def libpq_params(url: DatabaseURL) -> dict[str, Any]:
    """libpq keyword parameters for ``url``; query options pass through to libpq unchanged."""
    params: dict[str, Any] = {}
    if url.host is not None:
        params["host"] = url.host
    if url.port is not None:
        params["port"] = url.port
    if url.username is not None:
        params["user"] = url.username
    if url.password is not None:
        params["password"] = url.password
    if url.database is not None:
        params["dbname"] = url.database
    params.update(url.query)
    params.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    return params


# Indexed by PQtransactionStatus: IDLE, ACTIVE, INTRANS, INERROR, UNKNOWN. ACTIVE (a command
# still running, e.g. an unfinished COPY) and UNKNOWN (connection bad) cannot be reused. A tuple
# lookup keeps this read, done on every return, to one step.
_STATE_BY_LIBPQ = (IDLE, BROKEN, IN_TRANSACTION, FAILED, BROKEN)


def _discard_all(raw: Any) -> None:
    # DISCARD ALL refuses to run in a transaction block: run it in autocommit. It goes through
    # the driver (not libpq directly) so that psycopg forgets its prepared statements too.
    was_autocommit = raw.autocommit
    raw.autocommit = True
    try:
        cur = raw.cursor()
        try:
            cur.execute("DISCARD ALL")
        finally:
            cur.close()
    finally:
        raw.autocommit = was_autocommit


def _server_version(raw: Any) -> str:
    return "PostgreSQL " + str(run_query(raw, "SHOW server_version")[0][0]).split(" ")[0]


def _server_limits(raw: Any) -> ServerLimits:
    settings = run_query(
        raw,
        "SELECT current_setting('max_connections')::int,"
        " current_setting('superuser_reserved_connections')::int,"
        " coalesce(current_setting('reserved_connections', true), '0')::int",  # PG 16+
    )[0]
    clients = run_query(
        raw,
        "SELECT coalesce(nullif(application_name, ''), '(none)'), count(*)"
        " FROM pg_stat_activity WHERE backend_type = 'client backend'"
        " GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    by_client = {str(name): int(count) for name, count in clients}
    return ServerLimits(
        server=_server_version(raw),
        max_connections=int(settings[0]),
        reserved=int(settings[1]) + int(settings[2]),
        sessions=sum(by_client.values()),
        by_client=by_client,
        client_label="application_name",
    )


class _PostgresDriver(Driver):
    """What psycopg and psycopg2 share: the server's identity and limits."""

    @classmethod
    def server_version(cls, raw: Any) -> str:
        return _server_version(raw)

    @classmethod
    def server_limits(cls, raw: Any) -> ServerLimits:
        return _server_limits(raw)


class PsycopgDriver(_PostgresDriver):
    """psycopg 3: ``postgresql://``, ``postgres://``, ``postgresql+psycopg://``."""

    name = "psycopg"
    module = "psycopg"
    extra = "postgres"
    supports_session_reset = True
    reset_session = staticmethod(_discard_all)

    @classmethod
    def connect_factory(cls, url: DatabaseURL) -> ConnectFn:
        psycopg = cls.import_module()
        params = libpq_params(url)
        try:  # libpq checks option names now, so a typo fails when the pool is built
            psycopg.conninfo.make_conninfo(**params)
        except psycopg.ProgrammingError as error:
            raise ConfigError(f"{url.redacted()}: {error}") from None

        def connect() -> Any:
            return psycopg.connect(**params)

        return connect

    @staticmethod
    def transaction_state(raw: Any) -> int:
        return _STATE_BY_LIBPQ[raw.pgconn.transaction_status]

    @staticmethod
    def is_disconnect(exc: BaseException, raw: Any) -> bool:
        return bool(raw.closed or raw.broken)

    @staticmethod
    def socket_fd(raw: Any) -> int | None:
        try:
            return int(raw.pgconn.socket)
        except Exception:  # closed or bad connection: nothing to protect
            return None


class Psycopg2Driver(_PostgresDriver):
    """psycopg2: ``postgresql+psycopg2://`` (or ``postgresql://`` when psycopg 3 is absent)."""

    name = "psycopg2"
    module = "psycopg2"
    extra = "postgres2"
    supports_session_reset = True
    reset_session = staticmethod(_discard_all)

    @classmethod
    def connect_factory(cls, url: DatabaseURL) -> ConnectFn:
        psycopg2 = cls.import_module()
        params = libpq_params(url)
        try:  # libpq checks option names now, so a typo fails when the pool is built
            psycopg2.extensions.parse_dsn(psycopg2.extensions.make_dsn(**params))
        except psycopg2.ProgrammingError as error:
            raise ConfigError(f"{url.redacted()}: {error}".strip()) from None

        def connect() -> Any:
            return psycopg2.connect(**params)

        return connect

    @staticmethod
    def transaction_state(raw: Any) -> int:
        if raw.closed:
            return BROKEN
        return _STATE_BY_LIBPQ[raw.info.transaction_status]

    @staticmethod
    def is_disconnect(exc: BaseException, raw: Any) -> bool:
        return bool(raw.closed)
