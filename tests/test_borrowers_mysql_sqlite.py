"""Issue 17, MySQL (PyMySQL) and SQLite drivers: nothing crosses borrowers, waits keep
their word, rejected logins are told apart from outages.

Items: 4 (unread multi-result replies), 5 (client-side settings), 6 (``sqlite:///:memory:``
outliving its connections), 7 (bounded pings), 8 (rejections). Every test runs against the
real server (MariaDB/MySQL for PyMySQL) or a real SQLite database.
"""

from __future__ import annotations

import gc
import os
import socket
import sqlite3
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from backends import Backend, MakePool, MySQLBackend, Worker, query, wait_until
from flask_dbpool import Pool, PoolTimeout
from flask_dbpool.drivers import BROKEN, Driver, connection_rejected, resolve_target
from flask_dbpool.drivers.base import _WATCHDOG, bounded_call
from flask_dbpool.drivers.mysql import PyMySQLDriver
from flask_dbpool.drivers.sqlite import SQLiteDriver
from flask_dbpool.errors import PingTimeout
from tcprelay import TCPRelay

pymysql = pytest.importorskip("pymysql", reason="PyMySQL is not installed")


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def mysql(mysql_url: str, tmp_path: Path) -> Iterator[MySQLBackend]:
    backend = Backend.create("mysql", mysql_url, tmp_path)
    assert isinstance(backend, MySQLBackend)
    yield backend
    backend.cleanup()


def _procedure(mysql: MySQLBackend, body: str) -> str:
    """Create a stored procedure (dropped at cleanup) and return its name."""
    name = _unique("dbpool_p")
    mysql.admin_query(f"CREATE PROCEDURE {name}() BEGIN {body} END")
    mysql._cleanups.append(lambda: mysql.admin_query(f"DROP PROCEDURE IF EXISTS {name}"))
    return name


def _one_connection_pool(make_pool: MakePool, url: str, **options: Any) -> Pool:
    return make_pool(url, pool_size=1, max_overflow=0, timeout=10, **options)


# --------------------------------------------------------------------------- item 4


def test_item4_pymysql_unread_call_transaction_does_not_reach_next_borrower(
    mysql: MySQLBackend, make_pool: MakePool
) -> None:
    table = mysql.new_table()
    proc = _procedure(
        mysql, f"START TRANSACTION; INSERT INTO {table} VALUES (1, 'first'); SELECT 1;"
    )
    pool = _one_connection_pool(make_pool, mysql.url)

    first = pool.acquire()
    session = mysql.session_id(first)
    cur = first.cursor()
    cur.execute(f"CALL {proc}()")  # reads the SELECT's result; the CALL's own OK is unread
    assert cur.fetchall() == ((1,),)
    pool.release(first)  # the cursor is left open, as in code that forgets to close it

    second = pool.acquire()
    assert mysql.session_id(second) == session  # the same connection, kept (not discarded)
    assert query(second, "SELECT @@in_transaction") == [(0,)]
    second.commit()
    pool.release(second)
    assert mysql.count_rows(table) == 0  # the first borrower's insert was rolled back


def test_item4_pymysql_unread_error_packet_is_not_raised_at_next_borrower(
    mysql: MySQLBackend, make_pool: MakePool
) -> None:
    table = mysql.new_table()
    missing = _unique("dbpool_missing")
    proc = _procedure(
        mysql,
        f"START TRANSACTION; INSERT INTO {table} VALUES (1, 'first'); SELECT 1; "
        f"SELECT * FROM {missing};",
    )
    pool = _one_connection_pool(make_pool, mysql.url)

    first = pool.acquire()
    session = mysql.session_id(first)
    cur = first.cursor()
    cur.execute(f"CALL {proc}()")  # the error packet of the second SELECT is not read yet
    assert cur.fetchall() == ((1,),)
    pool.release(first)

    second = pool.acquire()
    assert query(second, "SELECT 2") == [(2,)]  # not the first borrower's "doesn't exist"
    assert mysql.session_id(second) == session
    assert query(second, "SELECT @@in_transaction") == [(0,)]
    second.commit()
    pool.release(second)
    assert mysql.count_rows(table) == 0


def test_item4_pymysql_drain_that_fails_discards_the_connection(
    mysql: MySQLBackend, make_pool: MakePool
) -> None:
    """Unread results that cannot be read (the session died meanwhile): the protocol state
    is unknown, so the connection is discarded instead of lent again."""
    proc = _procedure(mysql, "SELECT 1; SELECT 2;")
    pool = _one_connection_pool(make_pool, mysql.url)

    first = pool.acquire()
    session = mysql.session_id(first)
    cur = first.cursor()
    cur.execute(f"CALL {proc}()")
    assert cur.fetchall() == ((1,),)
    mysql.kill(session)
    pool.release(first)

    second = pool.acquire()
    assert mysql.session_id(second) != session
    assert query(second, "SELECT 3") == [(3,)]
    pool.release(second)


def test_item4_pymysql_unread_unbuffered_result_is_drained_on_return(
    mysql: MySQLBackend, make_pool: MakePool
) -> None:
    pool = _one_connection_pool(make_pool, mysql.url)

    first = pool.acquire()
    session = mysql.session_id(first)
    cur = first.cursor(pymysql.cursors.SSCursor)
    cur.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)"
        " SELECT i FROM n"
    )
    assert cur.fetchone() == (1,)  # 4999 rows left unread
    pool.release(first)

    second = pool.acquire()
    with warnings.catch_warnings():
        # PyMySQL warns "Previous unbuffered result was left incomplete" when the next
        # borrower's first command has to read out the first one's rows.
        warnings.simplefilter("error")
        assert query(second, "SELECT 2") == [(2,)]
    assert mysql.session_id(second) == session
    pool.release(second)
    del cur


# --------------------------------------------------------------------------- item 5


def test_item5_pymysql_autocommit_method_does_not_reach_next_borrower(
    mysql: MySQLBackend, make_pool: MakePool
) -> None:
    table = mysql.new_table()
    pool = _one_connection_pool(make_pool, mysql.url)

    first = pool.acquire()
    first.autocommit(True)
    pool.release(first)

    second = pool.acquire()
    assert query(second, "SELECT @@autocommit") == [(0,)]
    assert second.get_autocommit() is False
    query(second, f"INSERT INTO {table} VALUES (1, 'x')")
    pool.release(second)  # not committed: rolled back on return
    assert mysql.count_rows(table) == 0


def test_item5_pymysql_sql_set_autocommit_does_not_reach_next_borrower(
    mysql: MySQLBackend, make_pool: MakePool
) -> None:
    table = mysql.new_table()
    pool = _one_connection_pool(make_pool, mysql.url)

    first = pool.acquire()
    session = mysql.session_id(first)
    query(first, "SET autocommit = 1")  # behind the driver's back
    pool.release(first)

    second = pool.acquire()
    assert mysql.session_id(second) == session
    assert query(second, "SELECT @@autocommit") == [(0,)]
    query(second, f"INSERT INTO {table} VALUES (1, 'x')")
    pool.release(second)
    assert mysql.count_rows(table) == 0


def test_item5_pymysql_cursorclass_charset_and_encoders_do_not_reach_next_borrower(
    mysql: MySQLBackend, make_pool: MakePool
) -> None:
    pool = _one_connection_pool(make_pool, mysql.url)

    first = pool.acquire()
    first.cursorclass = pymysql.cursors.DictCursor
    first.set_character_set("latin1")
    first.encoders[bool] = lambda value, mapping=None: "'yes'"  # changed in place
    pool.release(first)

    second = pool.acquire()
    raw = second.driver_connection
    assert raw.cursorclass is pymysql.cursors.Cursor
    assert query(second, "SELECT 1 AS one") == [(1,)]  # tuples, not dicts
    assert raw.charset == "utf8mb4"
    assert query(second, "SELECT @@character_set_client") == [("utf8mb4",)]
    assert second.escape(True) == "1"
    pool.release(second)


def test_item5_sqlite_settings_do_not_reach_next_borrower(
    sqlite_url: str, make_pool: MakePool
) -> None:
    pool = _one_connection_pool(make_pool, sqlite_url)

    first = pool.acquire()
    raw = first.driver_connection
    first.row_factory = sqlite3.Row
    first.text_factory = bytes
    first.isolation_level = None
    pool.release(first)

    second = pool.acquire()
    assert second.driver_connection is raw  # the same connection, restored
    assert second.row_factory is None
    assert second.text_factory is str
    assert second.isolation_level == ""
    assert second.execute("SELECT 'text'").fetchone() == ("text",)
    pool.release(second)


def test_item5_sqlite_restore_settings_puts_back_what_save_settings_saw(
    tmp_path: Path,
) -> None:
    raw = sqlite3.connect(tmp_path / "settings.db", isolation_level="IMMEDIATE")
    try:
        saved = SQLiteDriver.save_settings(raw)
        raw.row_factory = sqlite3.Row
        raw.text_factory = bytes
        raw.isolation_level = "DEFERRED"
        SQLiteDriver.restore_settings(raw, saved)
        assert raw.row_factory is None
        assert raw.text_factory is str
        assert raw.isolation_level == "IMMEDIATE"
        assert not raw.in_transaction
    finally:
        raw.close()


# --------------------------------------------------------------------------- item 6


def test_item6_sqlite_memory_database_survives_idle_timeout(make_pool: MakePool) -> None:
    pool = make_pool("sqlite:///:memory:", pool_size=2, idle_timeout=0.2, min_idle=0)
    conn = pool.acquire()
    conn.execute("CREATE TABLE kept (v TEXT)")
    conn.execute("INSERT INTO kept VALUES ('still here')")
    conn.commit()
    pool.release(conn)

    wait_until(lambda: pool.stats().open == 0, what="idle_timeout to close the connection")

    conn = pool.acquire()
    assert conn.execute("SELECT v FROM kept").fetchall() == [("still here",)]
    pool.release(conn)
    assert pool.stats().open == 1  # the keeper is not a pool connection


def test_item6_sqlite_memory_database_is_freed_with_its_pool() -> None:
    """The database outlives the pool's connections but not the pool: many pools in one
    process do not accumulate databases."""
    uris = []
    connects = []
    for i in range(20):
        pool = Pool("sqlite:///:memory:", pool_size=1, max_overflow=0)
        conn = pool.acquire()
        conn.execute(f"CREATE TABLE t{i} (v INTEGER)")
        conn.commit()
        pool.release(conn)
        connect = pool._keeper.life.connector.connect  # the test looks inside on purpose
        uris.append(connect.uri)  # type: ignore[attr-defined]
        connects.append(weakref.ref(connect))
        pool.close()  # every pool connection is closed now
        probe = sqlite3.connect(uris[-1], uri=True)
        try:  # kept by the pool's keeper connection while the pool exists
            assert probe.execute(f"SELECT COUNT(*) FROM t{i}").fetchone() == (0,)
        finally:
            probe.close()
        del pool, conn, connect
    gc.collect()
    assert [ref for ref in connects if ref() is not None] == []
    for uri in uris:
        probe = sqlite3.connect(uri, uri=True)
        try:  # a new, empty database: the old one was freed
            assert probe.execute("SELECT COUNT(*) FROM sqlite_master").fetchone() == (0,)
        finally:
            probe.close()


# --------------------------------------------------------------------------- item 7


@pytest.fixture
def relay(mysql_url: str) -> Iterator[TCPRelay]:
    parts = urlsplit(mysql_url)
    with TCPRelay(parts.hostname or "127.0.0.1", parts.port or 3306) as r:
        yield r
        r.thaw()


def _relayed(mysql_url: str, relay: TCPRelay) -> str:
    parts = urlsplit(mysql_url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{relay.port}" if userinfo else f"127.0.0.1:{relay.port}"
    return parts._replace(netloc=netloc).geturl()


def _timed(fn: Any, bound: float, name: str) -> tuple[float, BaseException | None]:
    """Run ``fn`` in a thread; fail if it is still running after ``bound`` seconds (so that
    an unbounded wait fails the test instead of hanging it). Returns (elapsed, error)."""
    started = time.monotonic()
    worker = Worker(fn, name=name)
    worker.start()
    worker.join(bound)
    if worker.is_alive():
        pytest.fail(f"{name} still blocked after {bound} s")
    return time.monotonic() - started, worker.error


def test_item7_pymysql_ping_gives_up_on_a_frozen_path(mysql_url: str, relay: TCPRelay) -> None:
    raw = resolve_target(_relayed(mysql_url, relay) + "?read_timeout=30").connect()
    PyMySQLDriver.ping(raw, 1.0)  # healthy: answers
    assert (raw._read_timeout, raw._write_timeout) == (30, None)  # the user's, put back
    relay.freeze()
    elapsed, error = _timed(lambda: PyMySQLDriver.ping(raw, 1.0), 4.0, "ping")
    assert isinstance(error, PingTimeout), error
    assert elapsed >= 0.9
    assert PyMySQLDriver.transaction_state(raw) == BROKEN  # unusable: the pool closes it
    elapsed, error = _timed(lambda: PyMySQLDriver.close(raw), 4.0, "close")
    assert error is None


class _SocketConnection(pymysql.connections.Connection):  # type: ignore[misc]
    """A PyMySQL connection seen as an unknown DB-API driver that exposes ``fileno()``
    (as mysqlclient does), to exercise the generic, watchdog-bounded ping."""

    def fileno(self) -> int:
        return int(self._sock.fileno())


def _generic_raw(mysql_url: str) -> Any:
    parts = urlsplit(mysql_url)
    return _SocketConnection(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/") or "test",
    )


def test_item7_generic_ping_is_bounded_by_the_shared_watchdog(
    mysql_url: str, relay: TCPRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _generic_raw(_relayed(mysql_url, relay))
    Driver.ping(raw, 1.0)
    relay.freeze()
    elapsed, error = _timed(lambda: Driver.ping(raw, 1.0), 4.0, "generic ping")
    assert isinstance(error, PingTimeout), error
    assert elapsed >= 0.9
    elapsed, error = _timed(lambda: Driver.close(raw), 4.0, "close")

    # Healthy pings reuse the one watchdog thread: no thread is started per ping (counted
    # at the source: the process's thread count also moves with other tests' maintenance
    # threads).
    healthy = _generic_raw(mysql_url)
    try:
        Driver.ping(healthy, 1.0)
        starts: list[object] = []
        start = _WATCHDOG._start

        def counting_start(*args: Any) -> Any:
            starts.append(args)
            return start(*args)

        monkeypatch.setattr(_WATCHDOG, "_start", counting_start)
        for _ in range(50):
            Driver.ping(healthy, 1.0)
        assert _WATCHDOG._heap == []  # finished pings leave no deadline behind
        assert starts == []
        assert query(healthy, "SELECT 1") == [(1,)]  # never shut down by a stale deadline
    finally:
        healthy.close()

    # No socket (SQLite): pinged without a bound, the timeout accepted and ignored.
    lite = sqlite3.connect(tmp_path / "ping.db")
    try:
        Driver.ping(lite, 0.01)
        SQLiteDriver.ping(lite, 0.01)
        assert not lite.in_transaction
    finally:
        lite.close()


def _works(a: socket.socket, b: socket.socket) -> bool:
    """Whether the connected pair still carries bytes both ways (not shut down)."""
    try:
        a.sendall(b"a")
        b.sendall(b"b")
        b.settimeout(2.0)
        a.settimeout(2.0)
        return b.recv(1) == b"a" and a.recv(1) == b"b"
    except OSError:
        return False


def test_item7_watchdog_never_shuts_down_a_reused_descriptor() -> None:
    """The watchdog shuts down the socket of the call in progress, never whatever socket
    has the descriptor number by then: a driver may close its socket during the call (libpq
    and PyMySQL do on a read error) and another thread open one with the same number before
    the call ends; and once a call has ended in time its deadline is dead."""
    # During the call: the driver drops its socket, the number is reused, the deadline passes.
    mine, peer = socket.socketpair()
    fd = mine.fileno()
    other, other_peer = socket.socketpair()
    reused: list[socket.socket] = []

    def drops_its_socket_then_overruns() -> None:
        mine.close()
        os.dup2(other.fileno(), fd)  # fd now names another connection's socket
        reused.append(socket.socket(fileno=fd))
        time.sleep(0.3)  # past the deadline, still in the call

    try:
        with pytest.raises(PingTimeout):
            bounded_call(fd, 0.05, drops_its_socket_then_overruns)
        assert _works(other, other_peer)  # the other connection was not shut down
    finally:
        for sock in (peer, other, other_peer, *reused):
            sock.close()

    # After the call: it ended in time, its number is reused, its deadline passes.
    mine, peer = socket.socketpair()
    fd = mine.fileno()
    other, other_peer = socket.socketpair()
    try:
        assert bounded_call(fd, 0.05, lambda: _works(mine, peer))
        mine.close()
        os.dup2(other.fileno(), fd)
        reused_after = socket.socket(fileno=fd)
        time.sleep(0.3)
        assert _works(reused_after, other_peer)
        reused_after.close()
    finally:
        for sock in (peer, other, other_peer):
            sock.close()
    assert _WATCHDOG._heap == []


def test_item7_watchdog_drops_calls_that_end_out_of_order() -> None:
    """A call that ends before one armed earlier (a longer timeout, or just luck) leaves a
    finished entry below the top of the heap; it goes when the earlier call ends, so the
    heap is empty once no call is in progress, and the survivor is not shut down."""
    first_pair, second_pair = socket.socketpair(), socket.socketpair()
    release_first = threading.Event()
    first_armed = threading.Event()

    def first_call() -> bool:
        first_armed.set()
        release_first.wait(10.0)
        return _works(*first_pair)

    first = Worker(lambda: bounded_call(first_pair[0].fileno(), 5.0, first_call), "first")
    try:
        first.start()
        assert first_armed.wait(10.0)
        # Armed after the first, with a later deadline, and ended before it: its entry
        # waits below the first call's (popping it now would cost a search of the heap).
        assert bounded_call(second_pair[0].fileno(), 10.0, lambda: _works(*second_pair))
        assert len(_WATCHDOG._heap) == 2
        release_first.set()
        first.finish(timeout=10.0)
        assert first.result is True
        assert _WATCHDOG._heap == []  # both gone when the first ended
        assert _works(*first_pair) and _works(*second_pair)
    finally:
        release_first.set()
        for sock in (*first_pair, *second_pair):
            sock.close()


def test_item7_pymysql_connect_gives_up_on_a_frozen_handshake(
    mysql_url: str, relay: TCPRelay
) -> None:
    relay.freeze()  # TCP connects (to the relay); the server's greeting never comes
    connect = resolve_target(_relayed(mysql_url, relay) + "?connect_timeout=1").connect
    _, error = _timed(connect, 4.0, "connect")
    assert isinstance(error, pymysql.err.OperationalError), error
    assert not connection_rejected(error)  # an outage, retried

    # A healthy connect keeps the user's read timeout (none): a query may outlast the
    # connect_timeout that bounded the handshake.
    relay.thaw()
    raw = connect()
    try:
        assert raw._read_timeout is None
        assert query(raw, "SELECT SLEEP(1.5)") == [(0,)]
    finally:
        raw.close()


def test_item7_pre_ping_on_a_frozen_path_keeps_the_callers_timeout(
    mysql_url: str, relay: TCPRelay, make_pool: MakePool
) -> None:
    # connect_timeout=1: after the ping gives up, the pool's new connection meets the same
    # frozen path; the driver bounds that handshake by connect_timeout.
    url = _relayed(mysql_url, relay) + "?connect_timeout=1"
    pool = _one_connection_pool(make_pool, url, pre_ping=True, ping_interval=0)
    pool.release(pool.acquire())
    relay.freeze()
    _, error = _timed(lambda: pool.acquire(timeout=1.0), 6.0, "acquire")
    assert isinstance(error, PoolTimeout), error


# --------------------------------------------------------------------------- item 8


@pytest.fixture
def password_user(mysql: MySQLBackend) -> tuple[str, str]:
    """A throwaway MySQL user with a password and no grant on the test database."""
    user = _unique("dbpool_r")[:32]
    mysql.admin_query(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'right-pw'")
    mysql._cleanups.append(lambda: mysql.admin_query(f"DROP USER IF EXISTS '{user}'@'%'"))
    return user, "right-pw"


def _connect_error(**kwargs: Any) -> BaseException:
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 3306, "connect_timeout": 5}
    options.update(kwargs)
    with pytest.raises(pymysql.MySQLError) as info:
        pymysql.connect(**options).close()
    return info.value


def _mysql_host_port(mysql_url: str) -> dict[str, Any]:
    parts = urlsplit(mysql_url)
    return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 3306}


def test_item8_mysql_refused_logins_are_rejections_outages_are_not(
    mysql_url: str, mysql: MySQLBackend, password_user: tuple[str, str], relay: TCPRelay
) -> None:
    user, password = password_user
    where = _mysql_host_port(mysql_url)
    wrong_password = _connect_error(user=user, password="wrong", **where)
    assert wrong_password.args[0] == 1045
    no_grant = _connect_error(user=user, password=password, database="test", **where)
    assert no_grant.args[0] == 1044
    unknown_db = _connect_error(user="root", password="", database=_unique("dbpool_nodb"), **where)
    assert unknown_db.args[0] == 1049
    for error in (wrong_password, no_grant, unknown_db):
        assert connection_rejected(error), error
        assert PyMySQLDriver.is_rejection(error), error

    # 2003: nothing listens on the port.
    probe = socket.create_server(("127.0.0.1", 0))
    free_port = probe.getsockname()[1]
    probe.close()
    refused = _connect_error(user="root", host="127.0.0.1", port=free_port)
    assert refused.args[0] == 2003
    # The server stops answering during the handshake: a timeout (2013).
    relay.freeze()
    timed_out = _connect_error(
        user="root", host="127.0.0.1", port=relay.port, connect_timeout=1, read_timeout=1
    )
    relay.thaw()
    # Too many connections for this account (1226), as the server reports it.
    limited = _unique("dbpool_l")[:32]
    mysql.admin_query(f"CREATE USER '{limited}'@'%' WITH MAX_USER_CONNECTIONS 1")
    mysql._cleanups.append(lambda: mysql.admin_query(f"DROP USER IF EXISTS '{limited}'@'%'"))
    held = pymysql.connect(user=limited, **where)
    try:
        too_many = _connect_error(user=limited, **where)
    finally:
        held.close()
    assert too_many.args[0] == 1226
    # ER_CON_COUNT_ERROR (1040) cannot be provoked without lowering the shared server's
    # max_connections: classify the error PyMySQL raises for it.
    server_full = pymysql.err.OperationalError(1040, "Too many connections")
    for error in (refused, timed_out, too_many, server_full):
        assert not connection_rejected(error), error
        assert not PyMySQLDriver.is_rejection(error), error


def test_item8_pool_raises_a_rejected_login_at_once(
    mysql_url: str, password_user: tuple[str, str], make_pool: MakePool
) -> None:
    user, _ = password_user
    parts = urlsplit(mysql_url)
    url = f"mysql://{user}:wrong@{parts.hostname}:{parts.port or 3306}/test"
    pool = make_pool(url, timeout=20)
    elapsed, error = _timed(pool.acquire, 10.0, "acquire")
    assert isinstance(error, pymysql.err.OperationalError), error
    assert error.args[0] == 1045
    assert elapsed < 10
