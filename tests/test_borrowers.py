"""Issue 17, pool and handle side: nothing crosses borrowers, nothing is silently lost.

Against real SQLite, PostgreSQL and MariaDB/MySQL (``backend``). Each test names the item of
the issue it covers; each failed on the code before the fix.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from flask import Flask

from backends import Backend, MakePool, query, wait_until
from flask_dbpool import ConfigError, DBPool, Pool, PoolError

# ------------------------------------------------------------------ item 1: with blocks


def _insert(backend: Backend, conn: Any, table: str, key: int) -> None:
    query(conn, backend.sql(f"INSERT INTO {table} VALUES (%s, %s)"), (key, "x"))


def test_item1_with_on_acquired_handle_commits_like_the_driver(
    backend: Backend, make_pool: MakePool
) -> None:
    """``conn = pool.acquire(); with conn: insert`` keeps the row, as the raw driver does,
    and gives the connection back."""
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    conn = pool.acquire()
    with conn:
        _insert(backend, conn, table, 1)
    assert backend.count_rows(table) == 1
    assert conn.returned
    assert pool.stats().in_use == 0


def test_item1_with_pool_connection_commits(backend: Backend, make_pool: MakePool) -> None:
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    with pool.connection() as conn:
        _insert(backend, conn, table, 1)
    assert backend.count_rows(table) == 1


def test_item1_with_block_that_raises_rolls_back(backend: Backend, make_pool: MakePool) -> None:
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    conn = pool.acquire()
    with pytest.raises(RuntimeError), conn:
        _insert(backend, conn, table, 1)
        raise RuntimeError("boom")
    assert backend.count_rows(table) == 0
    assert conn.returned


def test_item1_explicit_release_still_rolls_back(backend: Backend, make_pool: MakePool) -> None:
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    conn = pool.acquire()
    _insert(backend, conn, table, 1)
    pool.release(conn)
    conn = pool.acquire()
    _insert(backend, conn, table, 2)
    conn.close()
    assert backend.count_rows(table) == 0


def test_item1_pinned_handle_commits_and_stays(backend: Backend, make_pool: MakePool) -> None:
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    conn = pool.acquire()
    pool.pin(conn)
    with conn:
        _insert(backend, conn, table, 1)
    assert not conn.returned
    assert backend.count_rows(table) == 1
    with pytest.raises(RuntimeError), conn:
        _insert(backend, conn, table, 2)
        raise RuntimeError("boom")
    assert not conn.returned
    assert backend.count_rows(table) == 1
    _insert(backend, conn, table, 3)  # the connection is still usable, in a new transaction
    pool.release(conn)
    assert backend.count_rows(table) == 1  # released without commit: rolled back


def test_item1_pin_is_for_one_checkout_only(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    conn = pool.acquire()
    pool.pin(conn)
    pool.release(conn)
    with pytest.raises(PoolError):
        pool.pin(conn)
    conn = pool.acquire()  # the same connection, a new checkout: not pinned
    with conn:
        pass
    assert conn.returned


def test_item1_flask_with_db_connection_commits_and_keeps_the_request_connection(
    backend: Backend,
) -> None:
    table = backend.new_table()
    app = Flask(__name__)
    app.config.update(DBPOOL_URL=backend.url, DBPOOL_POOL_SIZE=1, DBPOOL_MAX_OVERFLOW=0)
    db = DBPool(app)
    seen: dict[str, Any] = {}

    @app.post("/add")
    def add() -> str:
        first = db.connection
        with db.connection:
            _insert(backend, db.connection, table, 1)
        seen["same"] = db.connection is first
        seen["returned"] = first.returned
        try:
            with db.connection:
                _insert(backend, db.connection, table, 2)
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        return "ok"

    try:
        assert app.test_client().post("/add").status_code == 200
        assert seen == {"same": True, "returned": False}
        assert backend.count_rows(table) == 1
        assert DBPool.get_pool(app).stats().in_use == 0
    finally:
        DBPool.get_pool(app).close()


# ------------------------------------------------------------------ item 10: closed


def test_item10_closed_on_a_returned_handle_is_true(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url)
    conn = pool.acquire()
    conn.close()
    assert conn.closed
    if not conn.closed:  # psycopg-style code must not crash
        conn.close()
    with pytest.raises(PoolError, match="returned to the pool"):
        conn.cursor()


# ------------------------------------------------------------------ item 12: config errors


def test_item12_unclosed_ipv6_bracket_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot be parsed") as info:
        Pool("postgresql://app:pw@[::1/db")
    assert "pw" not in str(info.value)


def test_item12_misspelt_option_is_a_config_error_naming_the_option() -> None:
    with pytest.raises(ConfigError, match=r"poolsize; did you mean pool_size\?"):
        Pool("sqlite://", poolsize=3)  # type: ignore[call-arg]


# ------------------------------------------------------------------ item 15: leak returns


def test_item15_a_reported_leak_logs_its_return(
    sqlite_url: str, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(sqlite_url, leak_threshold=0.2)
    caplog.set_level(logging.WARNING, logger="flask_dbpool.leaks")
    conn = pool.acquire()
    wait_until(lambda: pool.stats().leaks_detected == 1, what="the leak warning")
    time.sleep(0.1)
    pool.release(conn)
    returned = [r for r in caplog.records if "came back after" in r.getMessage()]
    assert len(returned) == 1, caplog.text
    held = float(returned[0].getMessage().split("came back after ")[1].split(" s")[0])
    assert held >= 0.2
    # Only that checkout: the next one returns quietly.
    caplog.clear()
    with pool.connection():
        pass
    assert "came back after" not in caplog.text


# ------------------------------------------------------------------ item 5: pool side


def test_item5_settings_changed_through_the_handle_are_restored_for_the_next_borrower(
    sqlite_url: str, make_pool: MakePool
) -> None:
    import sqlite3

    pool = make_pool(sqlite_url, pool_size=1, max_overflow=0)
    with pool.connection() as conn:
        conn.row_factory = sqlite3.Row
        assert isinstance(conn.execute("SELECT 1 AS one").fetchone(), sqlite3.Row)
    with pool.connection() as conn:
        assert conn.row_factory is None
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert pool.stats().created == 1  # restored, not replaced


# ------------------------------------------------------------------ item 8: pool side


def test_item8_rejected_login_raises_the_driver_error_at_once(
    postgres_url: str, make_pool: MakePool
) -> None:
    import psycopg

    url = postgres_url.rsplit("/", 1)[0] + "/flask_dbpool_no_such_db"
    pool = make_pool(url, timeout=20)
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="flask_dbpool_no_such_db"):
        pool.acquire()
    # Within the back-off window, the next callers get it at once too, without a new attempt.
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            pool.acquire()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert len(errors) == 8
    assert all(isinstance(e, psycopg.OperationalError) for e in errors), errors
    assert time.monotonic() - started < 10  # a bound, far below the 20 s timeout
    assert pool.stats().connect_errors <= 4  # back-off between attempts, not a storm


# ------------------------------------------------------------------ item 11: driver APIs


def test_item11_driver_connection_passes_c_level_driver_apis(
    sqlite_url: str, postgres_url: str, make_pool: MakePool, tmp_path: Any
) -> None:
    """The README's examples: C-level driver functions refuse the proxy, take
    ``conn.driver_connection``."""
    import sqlite3
    import uuid

    psycopg2_extras = pytest.importorskip("psycopg2.extras")
    seed = sqlite3.connect(tmp_path / "seed.db")
    seed.execute("CREATE TABLE seeded (x INTEGER)")
    seed.execute("INSERT INTO seeded VALUES (42)")
    seed.commit()
    pool = make_pool(sqlite_url)
    with pool.connection() as conn:
        with pytest.raises(TypeError):
            seed.backup(conn)  # the proxy is refused...
        seed.backup(conn.driver_connection)  # ...the driver's own object is not
        assert conn.execute("SELECT x FROM seeded").fetchall() == [(42,)]
    seed.close()

    pg = make_pool(postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    with pg.connection() as conn:
        with pytest.raises(TypeError):
            psycopg2_extras.register_uuid(conn_or_curs=conn)
        psycopg2_extras.register_uuid(conn_or_curs=conn.driver_connection)
        cur = conn.cursor()
        cur.execute("SELECT %s::uuid", (uuid.UUID(int=1),))
        assert cur.fetchone()[0] == uuid.UUID(int=1)


# ------------------------------------------------------------------ item 7: pool side


def test_item7_pre_ping_on_a_frozen_path_keeps_the_callers_timeout(
    postgres_url: str, make_pool: MakePool
) -> None:
    """A server that stops answering (frozen TCP path) must not block a pre-pinging checkout
    past the caller's timeout (on 946ffcd it was still blocked after 6 s), nor maintenance."""
    from urllib.parse import urlsplit

    from flask_dbpool import PoolTimeout
    from tcprelay import TCPRelay

    parts = urlsplit(postgres_url)
    with TCPRelay(parts.hostname or "127.0.0.1", parts.port or 5432) as relay:
        url = f"postgresql://{parts.username}@127.0.0.1:{relay.port}{parts.path}?connect_timeout=1"
        pool = make_pool(url, pool_size=1, max_overflow=0, pre_ping=True, ping_interval=0)
        with pool.connection() as conn:
            query(conn, "SELECT 1")
        relay.freeze()
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            with pool.connection(timeout=1.0):
                pass
        # The ping gives up within the caller's 1 s; the reconnect attempt that follows is
        # bounded by connect_timeout (1 s). A bound, not a speed assertion.
        assert time.monotonic() - started < 5.0
        assert pool.stats().pings_failed == 1
        relay.thaw()
        with pool.connection(timeout=10) as conn:  # and it heals once the path is back
            assert query(conn, "SELECT 1") == [(1,)]


def test_item15_a_slow_reset_on_return_is_not_reported_as_a_leak(
    sqlite_url: str, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    """The holder gave the connection back under the threshold; the reset after it (here a
    slow on_checkin) must not be reported as the holder's leak."""
    pool = make_pool(sqlite_url, leak_threshold=0.3, on_checkin=lambda raw: time.sleep(0.6))
    caplog.set_level(logging.WARNING, logger="flask_dbpool.leaks")
    conn = pool.acquire()
    time.sleep(0.1)
    pool.release(conn)
    time.sleep(0.3)  # maintenance had the chance to look (it runs at lent_at + threshold)
    assert pool.stats().leaks_detected == 0
    assert "possible leak" not in caplog.text


def test_item15_an_interrupted_leak_return_log_loses_no_connection(
    sqlite_url: str, make_pool: MakePool
) -> None:
    """The log line is written once the connection is back: a handler interrupted there
    (KeyboardInterrupt, gevent.Timeout) cannot leave the connection unaccounted for."""

    class Interrupting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "came back" in record.getMessage():
                raise KeyboardInterrupt

    handler = Interrupting()
    leaks_logger = logging.getLogger("flask_dbpool.leaks")
    leaks_logger.addHandler(handler)
    try:
        pool = make_pool(sqlite_url, pool_size=1, max_overflow=0, leak_threshold=0.1)
        conn = pool.acquire()
        wait_until(lambda: pool.stats().leaks_detected == 1, what="the leak warning")
        with pytest.raises(KeyboardInterrupt):
            pool.release(conn)
    finally:
        leaks_logger.removeHandler(handler)
    s = pool.stats()
    assert (s.open, s.idle, s.in_use) == (1, 1, 0), s
    with pool.connection(timeout=1):
        pass
    assert pool.stats().closed == 0


def test_item5_watched_method_wrapper_is_reused(postgres_url: str, make_pool: MakePool) -> None:
    """``cursor`` is watched (a named WITH HOLD cursor must be closed on return); its wrapper
    is built once per connection, not on every ``conn.cursor`` read."""
    pool = make_pool(postgres_url, pool_size=1, max_overflow=0)
    with pool.connection() as conn:
        first = conn.cursor
        assert conn.cursor is first
        conn.cursor().close()
    with pool.connection() as conn:
        assert conn.cursor is first  # the same connection, the same wrapper
        conn.cursor("named").close()  # a named cursor marks the checkout...
        assert conn.cursor is not first  # ...and the next read wraps anew


# ------------------------------------------------------------------ review follow-ups


def test_item4_pymysql_error_in_a_later_result_that_was_read_is_rolled_back(
    mysql_url: str, make_pool: MakePool
) -> None:
    """A CALL whose procedure fails after its first result set: ``cursor.close()`` reads the
    rest and raises there, from ``next_result``, not ``query``; the transaction the procedure
    opened (and its row locks) must not reach the next borrower."""
    import uuid

    import pymysql

    table = f"dbpool_t_{uuid.uuid4().hex[:10]}"
    proc = f"dbpool_p_{uuid.uuid4().hex[:10]}"
    admin = pymysql.connect(host="127.0.0.1", user="root", database="test", autocommit=True)
    cur = admin.cursor()
    cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY) ENGINE=InnoDB")
    try:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        cur.execute(
            f"CREATE PROCEDURE {proc}() BEGIN SELECT 1; INSERT INTO {table} VALUES (2), (1); END"
        )
        pool = make_pool(mysql_url, pool_size=1, max_overflow=0)
        with pool.connection() as conn:
            pcur = conn.cursor()
            with pytest.raises(pymysql.IntegrityError):
                pcur.execute(f"CALL {proc}()")
                pcur.fetchall()
                pcur.close()  # reads the remaining results: the duplicate key is raised here
        with pool.connection() as conn:
            assert query(conn, "SELECT @@in_transaction") == [(0,)]
            conn.commit()
        cur.execute(f"SELECT id FROM {table} ORDER BY id")
        assert cur.fetchall() == ((1,),)
    finally:
        cur.execute(f"DROP PROCEDURE IF EXISTS {proc}")
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        admin.close()


def test_item5_a_setting_changed_with_the_transaction_left_open_is_never_committed(
    backend: Backend, make_pool: MakePool
) -> None:
    """With ``reset_on_return=False`` the transaction a borrower leaves open stays; if it
    also changed a setting, putting the setting back would commit it on some drivers (sqlite3
    ``isolation_level``, MySQL ``SET autocommit``): the connection is discarded instead."""
    table = backend.new_table()
    if backend.name == "sqlite":

        def setup(raw: Any) -> None:
            raw.isolation_level = None

        def change(conn: Any) -> None:
            conn.isolation_level = "DEFERRED"

    elif backend.name == "mysql":

        def setup(raw: Any) -> None:
            raw.autocommit(True)

        def change(conn: Any) -> None:
            conn.autocommit(False)

    else:

        def setup(raw: Any) -> None:
            raw.autocommit = True

        def change(conn: Any) -> None:
            conn.autocommit = False

    pool = make_pool(
        backend.url, pool_size=1, max_overflow=0, reset_on_return=False, on_connect=setup
    )
    conn = pool.acquire()
    change(conn)
    _insert(backend, conn, table, 1)
    pool.release(conn)
    assert backend.count_rows(table) == 0
    assert pool.stats().closed_by_reason["reset_failed"] == 1
