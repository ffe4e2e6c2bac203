"""PostgreSQL through psycopg 3 (preferred) or psycopg2.

Both read the libpq transaction status locally, so returning an idle connection costs no
round trip. URL parts are passed to libpq as separate parameters, never as one string, so the
password cannot surface in a connection-string parse error.

Pings are bounded: psycopg 3 drives libpq non-blocking against a deadline; psycopg2 (whose
connections block inside libpq) goes through :func:`~flask_dbpool.drivers.base.bounded_call`,
whose shared watchdog thread shuts the socket down when the deadline passes, which makes
libpq's blocked read return.
"""

from __future__ import annotations

import re
import select
import threading
import weakref
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Any, ClassVar, NamedTuple

from flask_dbpool.drivers.aio_base import AsyncConnectFn, AsyncDriver
from flask_dbpool.drivers.base import (
    BROKEN,
    DEAD,
    FAILED,
    IDLE,
    IN_TRANSACTION,
    RETRYABLE,
    SERVER_CHANGED,
    ConnectFn,
    Driver,
    ServerLimits,
    bounded_call,
    run_query,
)
from flask_dbpool.errors import ConfigError, PingTimeout
from flask_dbpool.url import DatabaseURL

__all__ = ["AsyncPsycopgDriver", "AsyncpgDriver", "Psycopg2Driver", "PsycopgDriver"]

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
#: psycopg2.extensions.STATUS_READY: psycopg2 believes no transaction is open.
_STATUS_READY = 1


def _discard_all(raw: Any) -> None:
    # DISCARD ALL refuses to run in a transaction block: run it in autocommit.
    _in_autocommit(raw, "DISCARD ALL")


# For psycopg 3: DISCARD ALL less two parts (PostgreSQL documents DISCARD ALL as this list).
# - DEALLOCATE ALL becomes "deallocate the statements SQL PREPAREd": psycopg 3 prepares
#   statements of its own at the protocol level and keeps a client-side list of them, which it
#   clears on a DISCARD ALL only the first time it sees that statement text on a connection;
#   from the second reset on, it would run statements the server no longer has ("prepared
#   statement _pg3_0 does not exist"). Its statements carry no borrower's state: kept.
# - DISCARD PLANS: cached plans are nothing a borrower can see; dropping them would only make
#   those prepared statements plan again.
# One round trip (the simple protocol: no parameters, so psycopg never prepares it).
_PSYCOPG_RESET_SQL = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; "
    "DO $$DECLARE s record; BEGIN "
    "FOR s IN SELECT name FROM pg_prepared_statements WHERE from_sql LOOP "
    "EXECUTE format('DEALLOCATE %I', s.name); END LOOP; END$$"
)


def _in_autocommit(raw: Any, sql: str) -> None:
    """Run ``sql`` outside a transaction block, then put ``autocommit`` back as it was.

    If running it fails or is interrupted (``gevent.Timeout``, ``KeyboardInterrupt``), that
    error propagates: putting ``autocommit`` back would raise too on an interrupted
    connection (a command still in flight) and must not replace the caller's error. The pool
    discards the connection in that case, so its ``autocommit`` no longer matters.
    """
    was_autocommit = raw.autocommit
    if not was_autocommit:
        raw.autocommit = True
    cur = raw.cursor()
    try:
        cur.execute(sql)
    except BaseException:
        try:
            cur.close()
        except Exception:
            pass
        raise
    cur.close()
    if not was_autocommit:
        raw.autocommit = False


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


# ---------------------------------------------------------------------------- rejections

# SQLSTATEs of a login refused for good: invalid authorization (wrong password, unknown role,
# pg_hba.conf), unknown database, no CONNECT privilege, an invalid startup option. Transient
# refusals (53300 too many connections, 57P0x starting up / shutting down / terminated) are
# not listed: those are retried like an outage.
_REJECTED_SQLSTATES = frozenset({"28000", "28P01", "3D000", "42501", "42704", "22023"})

# libpq keeps no SQLSTATE for errors during the connection start-up (psycopg and psycopg2 both
# report none), so the message text decides. Servers and libpq translate their messages: a
# message that matches nothing here counts as an outage, the safe side (retried, as before).
_REJECTED_TEXT = re.compile(
    r"password authentication failed"
    r"|authentication failed for user"  # ident, peer, ldap, cert …
    r"|role \".*\" does not exist"
    r"|database \".*\" does not exist"
    r"|no pg_hba\.conf entry"
    r"|pg_hba\.conf rejects"
    r"|is not permitted to log in"
    r"|permission denied for database"
    r"|unrecognized configuration parameter"
    r"|invalid value for parameter"
    r"|invalid connection option"
    r"|invalid dsn"
    r"|invalid [\w ]*value"  # libpq: invalid sslmode value, invalid integer value …
    r"|invalid port number"
    r"|missing \"=\" after"
    r"|no password supplied"
    r"|ssl was required"
    r"|certificate verify failed",
    re.IGNORECASE,
)
# Outage markers, checked first: with several hosts libpq reports one failure per host, and
# one host down while another refuses the login is still worth retrying.
_TRANSIENT_TEXT = re.compile(
    r"too many (clients|connections)"
    r"|remaining connection slots"
    r"|starting up|shutting down|in recovery mode|not yet accepting connections"
    r"|administrator command"
    r"|connection refused|timeout expired|timed out|no route to host|network is unreachable"
    r"|could not translate host name|server closed the connection"
    r"|connection reset"
    # Logins checked by another service fail with the same words when that service is
    # down (an LDAP or KDC outage): not proof that the credentials are wrong.
    r"|(ldap|radius|pam|gssapi|sspi|bsd) authentication failed",
    re.IGNORECASE,
)


# SQLSTATEs saying the server is no longer the one connected to: read_only_sql_transaction (a
# primary demoted to a replica after a failover), admin_shutdown, crash_shutdown,
# cannot_connect_now (shutting down or restarting).
_SERVER_CHANGED_SQLSTATES = frozenset({"25006", "57P01", "57P02", "57P03"})
# serialization_failure, deadlock_detected: the server rolled the transaction back.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def _is_rejection(sqlstate: str | None, message: str) -> bool:
    if sqlstate:
        return sqlstate in _REJECTED_SQLSTATES
    if _TRANSIENT_TEXT.search(message):
        return False
    return _REJECTED_TEXT.search(message) is not None


# ---------------------------------------------------------------------------- pings


def _timed_out(timeout: float) -> PingTimeout:
    return PingTimeout(f"the server did not answer a ping within {timeout:.3g} s")


def _wait_socket(fd: int, write: bool, deadline: float, timeout: float) -> None:
    """Wait until ``fd`` is readable (writable); raise :class:`PingTimeout` at ``deadline``.

    ``select.poll`` when there is one (any fd number), else ``select.select``; both are the
    cooperative versions under gevent's monkey-patching.
    """
    remaining = deadline - monotonic()
    if remaining <= 0:
        raise _timed_out(timeout)
    poll = getattr(select, "poll", None)
    if poll is not None:
        poller = poll()
        poller.register(fd, select.POLLOUT if write else select.POLLIN)
        if not poller.poll(remaining * 1000.0):
            raise _timed_out(timeout)
    elif not any(select.select([] if write else [fd], [fd] if write else [], [], remaining)):
        raise _timed_out(timeout)


# ---------------------------------------------------------------------------- settings

# Connections on which a borrower created a named (server-side) cursor: a WITH HOLD one
# outlives the transaction, so the next borrower could meet its name (DuplicateCursor).
_NAMED_CURSORS: weakref.WeakSet[Any] = weakref.WeakSet()
_NAMED_CURSORS_LOCK = threading.Lock()


def _watch_cursor(cursor: Callable[..., Any], changed: Callable[[], None]) -> Callable[..., Any]:
    """Wrap a connection's bound ``cursor`` method: a named cursor marks the checkout."""

    def watched_cursor(*args: Any, **kwargs: Any) -> Any:
        if (args and args[0]) or kwargs.get("name"):  # the only cost for a plain cursor()
            changed()
            with _NAMED_CURSORS_LOCK:
                _NAMED_CURSORS.add(cursor.__self__)  # type: ignore[attr-defined]
        return cursor(*args, **kwargs)

    return watched_cursor


def _close_named_cursors(raw: Any) -> None:
    """``CLOSE ALL`` if a borrower created a named cursor on ``raw`` (one round trip)."""
    with _NAMED_CURSORS_LOCK:
        if raw not in _NAMED_CURSORS:
            return
        _NAMED_CURSORS.discard(raw)
    _in_autocommit(raw, "CLOSE ALL")


def _checked_params(psycopg: Any, url: DatabaseURL) -> dict[str, Any]:
    """psycopg's connect parameters for ``url``, checked by libpq now (a typo in an option
    name fails when the pool is built). Raises :class:`ConfigError`."""
    params = libpq_params(url)
    try:
        psycopg.conninfo.make_conninfo(**params)
    except psycopg.ProgrammingError as error:
        # libpq ends its messages with a newline
        raise ConfigError(f"{url.redacted()}: {str(error).strip()}") from None
    return params


def _forget_notifications(raw: Any) -> None:
    """Drop the ``NOTIFY`` messages psycopg 3 received for ``raw`` and nobody read: after
    ``UNLISTEN *`` they belong to the previous borrower. (psycopg keeps them in a private
    deque, with no public way to empty it without waiting on the socket.)"""
    backlog = getattr(raw, "_notifies_backlog", None)
    if backlog:
        backlog.clear()


def _clear_notices(raw: Any) -> None:
    """Empty psycopg2's ``notices`` (a list, or a deque a user installed)."""
    notices = raw.notices
    if isinstance(notices, (list, deque)) and notices:
        notices.clear()


class _PsycopgSettings(NamedTuple):
    values: tuple[Any, ...]
    notice_handlers: tuple[Any, ...]
    notify_handlers: tuple[Any, ...]


class _Psycopg2Settings(NamedTuple):
    session: tuple[Any, ...]
    cursor_factory: Any
    notices: Any
    encoding: str


# psycopg 3 attributes restored on return, in this order (after the rollback: none of them
# needs a round trip to set on an idle connection).
_PSYCOPG_ATTRIBUTES = (
    "autocommit",
    "isolation_level",
    "read_only",
    "deferrable",
    "row_factory",
    "cursor_factory",
    "server_cursor_factory",
    "prepare_threshold",
    "prepared_max",
)


def _psycopg2_session(raw: Any) -> tuple[Any, ...]:
    return (raw.autocommit, raw.isolation_level, raw.readonly, raw.deferrable)


class _PostgresDriver(Driver):
    """What psycopg and psycopg2 share: the server's identity and limits, the full reset."""

    supports_session_reset = True
    reset_session = staticmethod(_discard_all)

    @classmethod
    def server_version(cls, raw: Any) -> str:
        return _server_version(raw)

    @classmethod
    def server_limits(cls, raw: Any) -> ServerLimits:
        return _server_limits(raw)

    @classmethod
    def is_rejection(cls, exc: BaseException) -> bool:
        """Wrong password, unknown role or database, pg_hba.conf refusal, no ``CONNECT``
        privilege, an invalid option (to libpq or to the server): by SQLSTATE when the driver
        has one, else by the message (a connection start-up error carries none)."""
        module = cls.import_module()
        if not isinstance(exc, module.Error):
            return False
        # psycopg calls it sqlstate, psycopg2 pgcode.
        sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if not sqlstate and isinstance(exc, module.ProgrammingError):
            return True  # a connection string libpq cannot parse
        return _is_rejection(sqlstate, str(exc))

    @classmethod
    def classify(cls, exc: BaseException, raw: Any) -> str | None:
        """By SQLSTATE (see the module's sets), then whether the connection is gone."""
        sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if sqlstate in _SERVER_CHANGED_SQLSTATES:
            return SERVER_CHANGED
        if cls.is_disconnect(exc, raw):
            return DEAD
        if sqlstate in _RETRYABLE_SQLSTATES:
            return RETRYABLE
        return None


class PsycopgDriver(_PostgresDriver):
    """psycopg 3: ``postgresql://``, ``postgres://``, ``postgresql+psycopg://``."""

    name = "psycopg"
    module = "psycopg"
    closed_error_names = ("OperationalError",)  # "the connection is closed"
    extra = "postgres"

    @staticmethod
    def reset_session(raw: Any) -> None:
        """``reset_on_return="discard"``: what ``DISCARD ALL`` does, in one round trip, but
        keeping psycopg's own prepared statements (see ``_PSYCOPG_RESET_SQL``), and
        forgetting the notifications received and not read yet."""
        _in_autocommit(raw, _PSYCOPG_RESET_SQL)
        _forget_notifications(raw)

    @classmethod
    def connect_factory(cls, url: DatabaseURL) -> ConnectFn:
        psycopg = cls.import_module()
        params = _checked_params(psycopg, url)

        def connect() -> Any:
            return psycopg.connect(**params)

        return connect

    @staticmethod
    def transaction_state(raw: Any) -> int:
        return _STATE_BY_LIBPQ[raw.pgconn.transaction_status]

    # psycopg's rollback() reads libpq's status, so it ends a transaction opened with SQL
    # BEGIN in autocommit mode too: the inherited rollback is enough.

    @classmethod
    def ping(cls, raw: Any, timeout: float) -> None:
        """One ``SELECT 1`` round trip, sent by libpq directly (non-blocking) so that the
        wait has a deadline: raises :class:`PingTimeout` after ``timeout`` seconds without an
        answer (the query is then still in flight: the connection is unusable, and closing
        it does not block). Raises the driver's error for a dead connection. An idle
        connection stays idle (no BEGIN is sent)."""
        from psycopg import OperationalError, pq
        from psycopg.errors import error_from_result

        if raw.closed:
            raise OperationalError("the connection is closed")
        deadline = monotonic() + timeout
        pgconn = raw.pgconn
        with raw.lock:  # psycopg's own lock: nothing else may use the connection meanwhile
            if not pgconn.nonblocking:
                pgconn.nonblocking = 1
            pgconn.send_query(b"SELECT 1")
            fd = pgconn.socket
            while pgconn.flush():
                _wait_socket(fd, True, deadline, timeout)
            pgconn.consume_input()
            while pgconn.is_busy():
                _wait_socket(fd, False, deadline, timeout)
                pgconn.consume_input()
            failed = None
            while (result := pgconn.get_result()) is not None:
                if failed is None and result.status == pq.ExecStatus.FATAL_ERROR:
                    failed = result
        if failed is not None:
            raise error_from_result(failed, encoding=raw.info.encoding)

    @staticmethod
    def is_disconnect(exc: BaseException, raw: Any) -> bool:
        return bool(raw.closed or raw.broken)

    @staticmethod
    def disable_server_prepares(raw: Any) -> None:
        """psycopg 3 prepares a query on its 5th execution: never (``prepare_threshold``)."""
        raw.prepare_threshold = None

    @classmethod
    def cancel(cls, raw: Any, timeout: float, side_connect: ConnectFn) -> bool:
        """libpq's cancel request (``cancel_safe``, bounded by ``timeout``, where psycopg
        has it: 3.2+)."""
        cancel_safe = getattr(raw, "cancel_safe", None)
        if cancel_safe is not None:
            cancel_safe(timeout=timeout)
        else:
            raw.cancel()
        return True

    watched_names = frozenset(
        {
            "cursor",
            "set_autocommit",
            "set_isolation_level",
            "set_read_only",
            "set_deferrable",
            "add_notice_handler",
            "remove_notice_handler",
            "add_notify_handler",
            "remove_notify_handler",
        }
    )

    @classmethod
    def watch(cls, name: str, value: Any, changed: Callable[[], None]) -> Any:
        """``cursor``: wrapped, so that only a named (server-side) cursor marks the checkout
        (its ``WITH HOLD`` variant survives the transaction); the ``set_*`` and handler
        methods mark it at once."""
        if name == "cursor":
            return _watch_cursor(value, changed)
        changed()
        return value

    @classmethod
    def save_settings(cls, raw: Any) -> Any:
        """``autocommit``, ``isolation_level``, ``read_only``, ``deferrable``, the row and
        cursor factories, ``prepare_threshold``, ``prepared_max`` and the notice and notify
        handlers (no I/O)."""
        return _PsycopgSettings(
            tuple(getattr(raw, name) for name in _PSYCOPG_ATTRIBUTES),
            tuple(getattr(raw, "_notice_handlers", ())),
            tuple(getattr(raw, "_notify_handlers", ())),
        )

    @classmethod
    def restore_settings(cls, raw: Any, saved: Any) -> None:
        """Set back what :meth:`save_settings` saw (no I/O), then ``CLOSE ALL`` (one round
        trip) if a borrower created a named cursor. Raises psycopg's error if the connection
        is still in a transaction or the round trip fails."""
        for name, value in zip(_PSYCOPG_ATTRIBUTES, saved.values, strict=True):
            if getattr(raw, name) != value:
                setattr(raw, name, value)
        # psycopg has no public way to list the handlers: the lists are its private ones.
        for attribute, handlers in (
            ("_notice_handlers", saved.notice_handlers),
            ("_notify_handlers", saved.notify_handlers),
        ):
            current = getattr(raw, attribute, None)
            if current is not None and tuple(current) != handlers:
                current[:] = handlers
        _close_named_cursors(raw)

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
    closed_error_names = ("InterfaceError",)  # "connection already closed"
    extra = "postgres2"

    @classmethod
    def connect_factory(cls, url: DatabaseURL) -> ConnectFn:
        psycopg2 = cls.import_module()
        params = libpq_params(url)
        try:  # libpq checks option names now, so a typo fails when the pool is built
            psycopg2.extensions.parse_dsn(psycopg2.extensions.make_dsn(**params))
        except psycopg2.ProgrammingError as error:
            raise ConfigError(f"{url.redacted()}: {str(error).strip()}") from None

        def connect() -> Any:
            return psycopg2.connect(**params)

        return connect

    @staticmethod
    def transaction_state(raw: Any) -> int:
        """libpq's status, plus two cases that libpq reports idle but that must take the
        slow path (reported as ``IN_TRANSACTION``, so the return rolls back): psycopg2
        believing a transaction is open (a borrower ran ``COMMIT`` or ``ROLLBACK`` as SQL:
        without a resync psycopg2 would send no ``BEGIN`` and the next borrower's statements
        would autocommit) and server notices left in ``notices``. A few attribute reads."""
        if raw.closed:
            return BROKEN
        state = _STATE_BY_LIBPQ[raw.get_transaction_status()]
        # Not FAILED: after on_connect this is committed (which resynchronises too), whereas
        # an aborted transaction there is an error.
        if state == IDLE and (raw.status != _STATUS_READY or raw.notices):
            return IN_TRANSACTION
        return state

    @staticmethod
    def rollback(raw: Any) -> None:
        """Roll back, whatever psycopg2 believes: its ``rollback()`` sends nothing in
        autocommit mode (or when it thinks no transaction is open) even if a borrower opened
        one with SQL ``BEGIN``; then ``ROLLBACK`` is sent as SQL. Also resynchronises
        psycopg2 after a SQL ``COMMIT``, and empties ``notices``."""
        raw.rollback()
        if raw.get_transaction_status() != 0:  # still in a transaction on the server
            cur = raw.cursor()
            try:
                cur.execute("ROLLBACK")
            finally:
                cur.close()
            raw.rollback()  # ends the BEGIN psycopg2 may have sent before that statement
        _clear_notices(raw)

    @classmethod
    def ping(cls, raw: Any, timeout: float) -> None:
        """One ``SELECT 1`` round trip (in autocommit mode, so no ``BEGIN``/``ROLLBACK``,
        unless non-default session characteristics make switching it cost round trips).

        psycopg2 blocks inside libpq, so the deadline is kept by :func:`bounded_call`'s
        shared watchdog thread, which shuts the socket down after ``timeout`` seconds: the
        blocked read then returns and this raises :class:`PingTimeout`; the connection is
        unusable afterwards and closes without blocking. Raises the driver's error for a dead
        connection (a closed one is pinged without a bound: it fails at once).
        """
        bounded_call(cls.socket_fd(raw), timeout, lambda: _ping_psycopg2(raw))

    @staticmethod
    def is_disconnect(exc: BaseException, raw: Any) -> bool:
        return bool(raw.closed)

    @classmethod
    def cancel(cls, raw: Any, timeout: float, side_connect: ConnectFn) -> bool:
        """libpq's cancel request."""
        raw.cancel()
        return True

    watched_names = frozenset(
        {"cursor", "set_session", "set_isolation_level", "set_client_encoding"}
    )

    @classmethod
    def watch(cls, name: str, value: Any, changed: Callable[[], None]) -> Any:
        """``cursor``: wrapped, so that only a named (server-side) cursor marks the checkout;
        ``set_session``, ``set_isolation_level`` and ``set_client_encoding`` mark it at
        once."""
        if name == "cursor":
            return _watch_cursor(value, changed)
        changed()
        return value

    @classmethod
    def save_settings(cls, raw: Any) -> Any:
        """``autocommit``, ``isolation_level``, ``readonly``, ``deferrable``,
        ``cursor_factory``, the ``notices`` object and the client encoding (no I/O). Empties
        ``notices``: what ``on_connect`` caused is nobody's business."""
        _clear_notices(raw)
        return _Psycopg2Settings(
            _psycopg2_session(raw), raw.cursor_factory, raw.notices, raw.encoding
        )

    @classmethod
    def restore_settings(cls, raw: Any, saved: Any) -> None:
        """Set back what :meth:`save_settings` saw and empty ``notices``. No I/O, except a
        ``SET`` that psycopg2 sends itself when the session characteristics were changed in
        autocommit mode (it had applied them with ``SET``), a ``SET client_encoding`` when
        the borrower changed it, and ``CLOSE ALL`` when it created a named cursor. Raises
        psycopg2's error if the connection is still in a transaction or a round trip fails.
        """
        if _psycopg2_session(raw) != saved.session:
            autocommit, isolation_level, readonly, deferrable = saved.session
            # One call, so psycopg2 moves between autocommit and not with the right SETs;
            # None would mean "unchanged" here, "DEFAULT" means the server's default.
            raw.set_session(
                isolation_level="DEFAULT" if isolation_level is None else isolation_level,
                readonly="DEFAULT" if readonly is None else readonly,
                deferrable="DEFAULT" if deferrable is None else deferrable,
                autocommit=autocommit,
            )
        if raw.cursor_factory is not saved.cursor_factory:
            raw.cursor_factory = saved.cursor_factory
        if raw.notices is not saved.notices:
            raw.notices = saved.notices
        if raw.encoding != saved.encoding:
            raw.set_client_encoding(saved.encoding)
        _close_named_cursors(raw)
        _clear_notices(raw)


def _select_one(raw: Any) -> None:
    cur = raw.cursor()
    try:
        cur.execute("SELECT 1")
        cur.fetchall()
    finally:
        cur.close()


def _ping_psycopg2(raw: Any) -> None:
    if raw.autocommit or raw.status != _STATUS_READY:  # or inside a transaction already
        _select_one(raw)
    elif raw.isolation_level is None and raw.readonly is None and raw.deferrable is None:
        # Out of a transaction psycopg2 would send BEGIN (and the ping then need a ROLLBACK):
        # in autocommit mode it is one round trip. With default session characteristics,
        # switching autocommit costs no I/O.
        raw.autocommit = True
        _select_one(raw)
        raw.autocommit = False
    else:
        _select_one(raw)
        raw.rollback()


def read_pgbouncer(admin_url: str, timeout: float) -> tuple[dict[str, str], dict[str, int]]:
    """PgBouncer's ``SHOW CONFIG`` (key -> value) and each database's pool size from ``SHOW
    DATABASES`` (its own ``pgbouncer`` console left out; -1: the default), read from the
    admin console at ``admin_url`` with psycopg 3 (simple query protocol, which the console
    requires). Raises the driver's error when it cannot be reached."""
    import psycopg

    with psycopg.connect(
        admin_url,
        autocommit=True,
        connect_timeout=max(1, int(timeout)),
        cursor_factory=psycopg.ClientCursor,
    ) as conn:
        cursor = conn.cursor()
        cursor.execute("SHOW CONFIG")
        settings = {str(row[0]): str(row[1]) for row in cursor.fetchall()}
        cursor.execute("SHOW DATABASES")
        names = [column.name for column in cursor.description or ()]
        pools = {}
        for row in cursor.fetchall():
            record = dict(zip(names, row, strict=False))
            if record.get("name") == "pgbouncer":
                continue
            size = record.get("pool_size")
            pools[str(record.get("name"))] = int(size) if size is not None else -1
    return settings, pools


class AsyncPsycopgDriver(AsyncDriver, PsycopgDriver):
    """psycopg 3's ``AsyncConnection``: ``postgresql://``, ``postgres://``,
    ``postgresql+psycopg://``."""

    name = "psycopg (async)"
    # A named cursor of an AsyncConnection is closed through its own coroutines: not watched.
    watched_names = PsycopgDriver.watched_names - {"cursor"}

    @classmethod
    def async_connect_factory(cls, url: DatabaseURL) -> AsyncConnectFn:
        psycopg = cls.import_module()
        params = _checked_params(psycopg, url)
        connect = psycopg.AsyncConnection.connect

        async def aconnect() -> Any:
            return await connect(**params)

        return aconnect

    @staticmethod
    async def aping(raw: Any) -> None:
        # In autocommit for the round trip (no I/O to switch on an idle connection), so that
        # the SELECT opens no transaction to end with a second one.
        await _in_autocommit_async(raw, "SELECT 1")

    @staticmethod
    async def areset_session(raw: Any) -> None:
        await _in_autocommit_async(raw, _PSYCOPG_RESET_SQL)
        _forget_notifications(raw)

    @classmethod
    async def arestore_settings(cls, raw: Any, saved: Any) -> None:
        for name, value in zip(_PSYCOPG_ATTRIBUTES, saved.values, strict=True):
            if getattr(raw, name) != value:
                setter = getattr(raw, f"set_{name}", None)  # autocommit & co.: coroutines
                if setter is not None:
                    await setter(value)
                else:
                    setattr(raw, name, value)
        for attribute, handlers in (
            ("_notice_handlers", saved.notice_handlers),
            ("_notify_handlers", saved.notify_handlers),
        ):
            current = getattr(raw, attribute, None)
            if current is not None and tuple(current) != handlers:
                current[:] = handlers

    @classmethod
    async def acancel(cls, raw: Any, timeout: float) -> bool:
        await raw.cancel_safe(timeout=timeout)
        return True


async def _in_autocommit_async(raw: Any, sql: str) -> None:
    """Run ``sql`` on an idle psycopg ``AsyncConnection`` outside a transaction block."""
    was_autocommit = raw.autocommit
    if not was_autocommit:
        await raw.set_autocommit(True)
    await raw.execute(sql)
    if not was_autocommit:
        await raw.set_autocommit(False)


# asyncpg.connect() keyword options a URL may carry (the rest of libpq's are refused: asyncpg
# is not libpq).
_ASYNCPG_OPTIONS = {"connect_timeout", "application_name", "statement_cache_size", "sslmode"}


class AsyncpgDriver(AsyncDriver, _PostgresDriver):
    """asyncpg: ``postgresql+asyncpg://``. Its connections are not DB-API ones: use its own
    API through the handle (``await conn.fetchrow("… $1", x)``); ``async with
    pool.connection()`` still commits a transaction opened with SQL ``BEGIN`` and the pool
    rolls back what a borrower left open. Behind PgBouncer in transaction mode, put
    ``?statement_cache_size=0`` in the URL (asyncpg prepares every statement)."""

    name = "asyncpg"
    module = "asyncpg"
    extra = "asyncpg"
    watched_names: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def async_connect_factory(cls, url: DatabaseURL) -> AsyncConnectFn:
        asyncpg = cls.import_module()
        query = dict(url.query)
        unknown = sorted(set(query) - _ASYNCPG_OPTIONS)
        if unknown:
            raise ConfigError(
                f"{url.redacted()}: {', '.join(unknown)} not supported with asyncpg; "
                f"allowed: {', '.join(sorted(_ASYNCPG_OPTIONS))}"
            )
        kwargs: dict[str, Any] = {
            "host": url.host or "localhost",
            "port": url.port or 5432,
            "user": url.username,
            "password": url.password,
            "database": url.database,
            "timeout": float(query.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)),
        }
        if "application_name" in query:
            kwargs["server_settings"] = {"application_name": query["application_name"]}
        if "statement_cache_size" in query:
            kwargs["statement_cache_size"] = int(query["statement_cache_size"])
        if "sslmode" in query:
            kwargs["ssl"] = query["sslmode"]

        async def aconnect() -> Any:
            return await asyncpg.connect(**kwargs)

        return aconnect

    @staticmethod
    def transaction_state(raw: Any) -> int:
        if raw.is_closed():
            return BROKEN
        return IN_TRANSACTION if raw.is_in_transaction() else IDLE

    @classmethod
    def is_rejection(cls, exc: BaseException) -> bool:
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate is None and not isinstance(exc, OSError):
            return False
        return _is_rejection(sqlstate, str(exc))

    @staticmethod
    def is_disconnect(exc: BaseException, raw: Any) -> bool:
        return bool(raw.is_closed()) or isinstance(exc, (ConnectionError, OSError))

    @staticmethod
    async def arollback(raw: Any) -> None:
        if raw.is_in_transaction():
            await raw.execute("ROLLBACK")

    @staticmethod
    async def acommit(raw: Any) -> None:
        if raw.is_in_transaction():
            await raw.execute("COMMIT")

    @staticmethod
    async def aping(raw: Any) -> None:
        await raw.execute("SELECT 1")

    @staticmethod
    async def areset_session(raw: Any) -> None:
        # The same list as psycopg 3's, for the same reason: asyncpg prepares statements of
        # its own (its statement cache), which DISCARD ALL would drop under it. Sent with the
        # simple protocol (no arguments).
        await raw.execute(_PSYCOPG_RESET_SQL)

    @classmethod
    def save_settings(cls, raw: Any) -> Any:
        return None

    @staticmethod
    def disable_server_prepares(raw: Any) -> None:
        """asyncpg's statement cache is set at connect: ``?statement_cache_size=0``."""
