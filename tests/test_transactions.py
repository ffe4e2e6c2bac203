"""``Pool.run_transaction``: the whole unit of work runs again only when the error proves
nothing was committed; a connection lost during COMMIT raises CommitOutcomeUnknown. Real
PostgreSQL, MariaDB and SQLite: real serialization failures, deadlocks and killed sessions."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from backends import Backend, MakePool, query
from flask_dbpool import CommitOutcomeUnknown, ConfigError

SERVERS = ["postgres", "mysql"]

#: A statement the server fails with a retryable error, every time it runs.
RETRYABLE_SQL = {
    # serialization_failure, raised by the server itself
    "postgres": "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
    # ER_LOCK_DEADLOCK, raised by the server itself
    "mysql": "SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'conflict'",
}


def _insert(backend: Backend, conn: Any, table: str, row: int, value: str) -> None:
    query(conn, backend.sql(f"INSERT INTO {table} (id, v) VALUES (%s, %s)"), (row, value))


@pytest.mark.parametrize("backend", ["sqlite", *SERVERS], indirect=True)
def test_commits_and_returns_what_the_work_returned(
    backend: Backend, make_pool: MakePool
) -> None:
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=2)

    def work(conn: Any) -> str:
        _insert(backend, conn, table, 1, "a")
        _insert(backend, conn, table, 2, "b")
        return "done"

    assert pool.run_transaction(work) == "done"
    assert backend.count_rows(table) == 2
    stats = pool.stats()
    assert stats.transaction_retries == 0 and stats.in_use == 0 and stats.idle == 1


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_retryable_error_runs_the_whole_unit_again(
    backend: Backend, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    """The first statements of a failed attempt are rolled back with it and run again: the
    naive retry (the failed statement alone) would lose row 1, or commit it twice."""
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1)
    attempts: list[int] = []

    def work(conn: Any) -> int:
        attempts.append(1)
        _insert(backend, conn, table, 1, "first statement of the unit")
        if len(attempts) < 3:
            query(conn, RETRYABLE_SQL[backend.name])
        _insert(backend, conn, table, 2, "last")
        return len(attempts)

    with caplog.at_level(logging.DEBUG, logger="flask_dbpool.transactions"):
        assert pool.run_transaction(work) == 3
    assert backend.count_rows(table) == 2
    assert pool.stats().transaction_retries == 2
    retried = [r.getMessage() for r in caplog.records if "again" in r.getMessage()]
    assert len(retried) == 2 and "attempt 2 of 4" in retried[0] and "retryable" in retried[0]


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_retries_run_out_and_the_error_propagates(backend: Backend, make_pool: MakePool) -> None:
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1)
    attempts: list[int] = []

    def work(conn: Any) -> None:
        attempts.append(1)
        _insert(backend, conn, table, len(attempts), "x")
        query(conn, RETRYABLE_SQL[backend.name])

    with pytest.raises(backend.operational_error if backend.name == "mysql" else Exception) as e:
        pool.run_transaction(work, retries=1)
    assert "conflict" in str(e.value)
    assert len(attempts) == 2 and backend.count_rows(table) == 0
    stats = pool.stats()
    assert stats.transaction_retries == 1 and stats.in_use == 0 and stats.open == 1


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_real_deadlock_is_run_again(backend: Backend, make_pool: MakePool) -> None:
    """Two transactions lock two rows in opposite orders: the server kills one (deadlock),
    run_transaction runs it again, and both units end up committed, each once."""
    table = backend.new_table()
    backend.admin_query(f"INSERT INTO {table} (id, v) VALUES (1, ''), (2, '')")
    pool = make_pool(backend.url, pool_size=2, max_overflow=0)
    both_hold_one = threading.Barrier(2)
    runs = {"ab": 0, "ba": 0}
    errors: list[BaseException] = []

    def transfer(first: int, second: int, name: str) -> None:
        def work(conn: Any) -> None:
            runs[name] += 1
            update = backend.sql(
                f"UPDATE {table} SET v = CONCAT(v, CAST(%s AS CHAR(2))) WHERE id = %s"
            )
            query(conn, update, (name, first))
            if runs[name] == 1:
                both_hold_one.wait(10)  # each holds its first row: the second waits
            query(conn, update, (name, second))

        try:
            pool.run_transaction(work, retries=3)
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=transfer, args=(1, 2, "ab")),
        threading.Thread(target=transfer, args=(2, 1, "ba")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert sorted(runs.values()) == [1, 2]  # one was the deadlock victim, run again
    rows = backend.admin_query(f"SELECT id, v FROM {table} ORDER BY id")
    # Each row got each unit's mark exactly once (the victim's first attempt rolled back).
    assert [(int(i), sorted([v[:2], v[2:]])) for i, v in rows] == [
        (1, ["ab", "ba"]),
        (2, ["ab", "ba"]),
    ]
    assert pool.stats().transaction_retries == 1


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_connection_lost_before_the_commit_runs_again_on_a_new_one(
    backend: Backend, make_pool: MakePool
) -> None:
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=2, max_overflow=0)
    sessions: list[Any] = []

    def work(conn: Any) -> None:
        sessions.append(backend.session_id(conn))
        _insert(backend, conn, table, 1, "x")
        if len(sessions) == 1:
            backend.kill(sessions[0])  # the session dies mid-transaction
        _insert(backend, conn, table, 2, "y")

    pool.run_transaction(work)
    assert len(sessions) == 2 and sessions[0] != sessions[1]
    assert backend.count_rows(table) == 2  # the second attempt's two rows, once
    assert pool.stats().transaction_retries == 1


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_connection_lost_during_the_commit_is_never_run_again(
    backend: Backend, make_pool: MakePool
) -> None:
    """The COMMIT meets a dead connection: whether the server committed is unknown to the
    client, so the unit is not run again (it could apply twice)."""
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1)
    runs: list[int] = []

    def work(conn: Any) -> None:
        runs.append(1)
        _insert(backend, conn, table, 1, "x")
        backend.kill(backend.session_id(conn))  # gone before COMMIT reaches it

    with pytest.raises(CommitOutcomeUnknown) as caught:
        pool.run_transaction(work)
    assert isinstance(caught.value.__cause__, backend.operational_error)
    assert "may or may not have been committed" in str(caught.value)
    assert len(runs) == 1 and pool.stats().transaction_retries == 0
    stats = pool.stats()
    assert stats.in_use == 0 and stats.closed_by_reason.get("broken") == 1, stats


@pytest.mark.parametrize("backend", ["sqlite", *SERVERS], indirect=True)
def test_other_errors_roll_back_and_propagate_at_once(
    backend: Backend, make_pool: MakePool
) -> None:
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=1)
    runs: list[int] = []

    def app_error(conn: Any) -> None:
        runs.append(1)
        _insert(backend, conn, table, 1, "x")
        raise ValueError("the application changed its mind")

    with pytest.raises(ValueError, match="changed its mind"):
        pool.run_transaction(app_error)

    def duplicate_key(conn: Any) -> None:
        runs.append(1)
        _insert(backend, conn, table, 1, "x")
        _insert(backend, conn, table, 1, "x")  # an integrity error: not retryable

    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        pool.run_transaction(duplicate_key)
    assert len(runs) == 2 and backend.count_rows(table) == 0
    stats = pool.stats()
    assert stats.transaction_retries == 0 and stats.open == 1 and stats.idle == 1


def test_classify_error_makes_an_application_error_retryable(
    sqlite_url: str, make_pool: MakePool
) -> None:
    class Conflict(Exception):
        pass

    pool = make_pool(
        sqlite_url,
        classify_error=lambda error, raw: "retryable" if isinstance(error, Conflict) else None,
    )
    runs: list[int] = []

    def work(conn: Any) -> int:
        runs.append(1)
        if len(runs) == 1:
            raise Conflict("optimistic lock lost")
        return len(runs)

    assert pool.run_transaction(work) == 2
    assert pool.stats().transaction_retries == 1


@pytest.mark.parametrize("retries", [-1, 1.5, "3", True])
def test_bad_retries_is_a_config_error(
    sqlite_url: str, make_pool: MakePool, retries: Any
) -> None:
    pool = make_pool(sqlite_url)
    with pytest.raises(ConfigError, match="retries must be an integer >= 0"):
        pool.run_transaction(lambda conn: None, retries=retries)
    assert pool.stats().acquired == 0


def test_a_classify_error_that_misbehaves_leaves_it_to_the_driver(
    sqlite_url: str, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(sqlite_url, classify_error=lambda error, raw: "maybe")
    with caplog.at_level(logging.WARNING, logger="flask_dbpool.pool"), pytest.raises(ValueError):
        pool.run_transaction(lambda conn: (_ for _ in ()).throw(ValueError("x")))
    assert any("returned 'maybe'" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="classify_error must be None or a callable"):
        make_pool(sqlite_url, classify_error="dead")


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_flask_run_transaction(backend: Backend) -> None:
    from flask import Flask

    from flask_dbpool import DBPool

    table = backend.new_table()
    app = Flask("tx-app")
    app.config.update(DBPOOL_URL=backend.url, DBPOOL_POOL_SIZE=2)
    db = DBPool(app)
    runs: list[int] = []

    @app.post("/order/<int:number>")
    def order(number: int) -> str:
        def work(conn: Any) -> int:
            runs.append(number)
            _insert(backend, conn, table, number, "ordered")
            if len(runs) == 1:
                query(conn, RETRYABLE_SQL["postgres"])
            return number

        return str(db.run_transaction(work))

    try:
        assert app.test_client().post("/order/7").get_data(as_text=True) == "7"
        assert runs == [7, 7] and backend.count_rows(table) == 1
        assert db.get_pool(app).stats().transaction_retries == 1
    finally:
        db.get_pool(app).close()


READ_ONLY = {
    # what a primary demoted to a replica answers a write with: 25006, 1792
    "postgres": ("SET TRANSACTION READ ONLY", "read-only"),
    "mysql": ("START TRANSACTION READ ONLY", "READ ONLY"),
}


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_read_only_server_is_a_changed_server_and_drains_the_pool(
    backend: Backend, make_pool: MakePool
) -> None:
    """A write refused because the server is read-only (as after a failover) says the
    server is no longer the one connected to: every connection is retired, and
    run_transaction runs the unit again on a new one (which, here, writes)."""
    table = backend.new_table()
    pool = make_pool(backend.url, pool_size=3, max_overflow=0)
    held = [pool.acquire() for _ in range(3)]
    for conn in held[1:]:
        conn.close()
    start, words = READ_ONLY[backend.name]
    conn = held[0]
    try:
        query(conn, start)
        _insert(backend, conn, table, 1, "x")
    except Exception as error:
        assert words.lower() in str(error).lower()
        assert pool.classify(error, conn) == "server_changed"
        pool.release(conn, error)
    else:
        pytest.fail("the read-only transaction accepted a write")
    stats = pool.stats()
    assert stats.closed_by_reason == {"broken": 1, "drained": 2} and stats.open == 0, stats
    runs: list[int] = []

    def work(conn: Any) -> None:
        runs.append(1)
        if len(runs) == 1:
            query(conn, start)
        _insert(backend, conn, table, len(runs), "x")

    pool.run_transaction(work)
    assert len(runs) == 2 and backend.count_rows(table) == 1


def test_an_autocommit_pool_is_refused_and_a_returned_connection_is_said(
    postgres_url: str, make_pool: MakePool
) -> None:
    """A pool whose connections commit each statement cannot run a unit of work again
    safely: refused. A unit of work that gives its connection back: said, not a retry."""
    from flask_dbpool import PoolError

    auto = make_pool(postgres_url, on_connect=lambda raw: setattr(raw, "autocommit", True))
    with pytest.raises(ConfigError, match="autocommit is on"):
        auto.run_transaction(lambda conn: None)
    assert auto.stats().in_use == 0
    pool = make_pool(postgres_url)
    with pytest.raises(PoolError, match="returned its connection"):
        pool.run_transaction(lambda conn: conn.close())

    def close_then_fail(conn: Any) -> None:
        conn.close()
        raise KeyError("the application's own error")

    with pytest.raises(KeyError, match="own error"):
        pool.run_transaction(close_then_fail)
    assert pool.stats().in_use == 0 and pool.stats().transaction_retries == 0
