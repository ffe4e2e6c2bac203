"""``reset_on_return``: "discard" (full PostgreSQL session reset) and custom callables."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from backends import Backend, MakePool, query, wait_until
from flask_dbpool import ConfigError, Pool


def _leave_session_state(conn: Any) -> None:
    query(conn, "SET statement_timeout = '1234ms'")
    query(conn, "SELECT set_config('app.user', 'alice', false)")
    query(conn, "CREATE TEMP TABLE dbpool_secret (v text)")
    conn.commit()


def _session_state(conn: Any) -> tuple[Any, ...]:
    timeout = query(conn, "SHOW statement_timeout")[0][0]
    user = query(conn, "SELECT current_setting('app.user', true)")[0][0]
    temp = query(conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'dbpool_secret'")[0][0]
    return timeout, user or None, temp


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_discard_hides_one_borrowers_session_state_from_the_next(
    backend: Backend, make_pool: MakePool
) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, reset_on_return="discard")
    with pool.connection() as conn:
        first_session = backend.session_id(conn)
        for _ in range(6):  # let psycopg prepare a statement server-side
            query(conn, "SELECT %s::int", (1,))
        _leave_session_state(conn)
    with pool.connection() as conn:
        assert backend.session_id(conn) == first_session  # same session, reset, not reopened
        assert _session_state(conn) == ("0", None, 0)
        for _ in range(6):  # prepared statements forgotten on both sides: still works
            assert query(conn, "SELECT %s::int", (2,)) == [(2,)]
    assert pool.stats().created == 1


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_discard_never_loses_psycopgs_own_prepared_statements(
    backend: Backend, make_pool: MakePool
) -> None:
    """psycopg 3 prepares a statement on its 5th run and forgets its list on a DISCARD ALL
    only the first time it sees one on a connection: a reset that deallocated everything
    would, from the second checkout that prepared something, leave it running statements
    the server no longer has. Borrowers' SQL PREPAREs are still gone."""
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, reset_on_return="discard")
    with pool.connection():
        pass  # a first reset before psycopg has prepared anything
    for i in range(4):
        with pool.connection() as conn:
            for _ in range(6):
                assert query(conn, "SELECT 1") == [(1,)]
                assert query(conn, "SELECT %s::int", (i,)) == [(i,)]
            query(conn, f"PREPARE mine_{i} AS SELECT 1")
            conn.commit()
    with pool.connection() as conn:
        names = query(conn, "SELECT name FROM pg_prepared_statements WHERE from_sql")
        assert names == []
    assert pool.stats().created == 1


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_default_reset_keeps_session_state(backend: Backend, make_pool: MakePool) -> None:
    """What "discard" is for: a plain rollback leaves committed session state behind."""
    pool = make_pool(backend.url, pool_size=1, max_overflow=0)
    with pool.connection() as conn:
        _leave_session_state(conn)
    with pool.connection() as conn:
        assert _session_state(conn) == ("1234ms", "alice", 1)


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_callable_reset_runs_on_every_return(backend: Backend, make_pool: MakePool) -> None:
    calls: list[Any] = []
    table = backend.new_table()

    def reset(raw: Any) -> None:
        calls.append(raw)
        cur = raw.cursor()
        cur.execute(backend.sql(f"DELETE FROM {table}"))  # left open: the pool commits it
        cur.close()

    pool = make_pool(backend.url, pool_size=1, max_overflow=0, reset_on_return=reset)
    for i in range(3):
        with pool.connection() as conn:
            query(conn, backend.sql(f"INSERT INTO {table} (id, v) VALUES (%s, 'x')"), (i,))
            conn.commit()
    assert len(calls) == 3
    assert backend.count_rows(table) == 0  # the reset's DELETE was committed


def test_failing_callable_reset_discards_the_connection(sqlite_url: str) -> None:
    def reset(raw: Any) -> None:
        raise RuntimeError("cannot reset")

    with Pool(sqlite_url, pool_size=1, max_overflow=0, reset_on_return=reset) as pool:
        with pool.connection():
            pass
        stats = pool.stats()
        assert (stats.open, stats.closed) == (0, 1), stats
        with pool.connection() as conn:  # a fresh connection takes the slot
            assert query(conn, "SELECT 1") == [(1,)]


@pytest.mark.parametrize(
    "value", ["DISCARD", "none", 1, None], ids=["upper", "none", "int", "None"]
)
def test_invalid_reset_on_return(value: Any) -> None:
    with pytest.raises(ConfigError, match="reset_on_return"):
        Pool("sqlite:///:memory:", reset_on_return=value)


def test_discard_needs_a_server_session() -> None:
    with pytest.raises(ConfigError, match="PostgreSQL, MySQL and MariaDB only"):
        Pool("sqlite:///:memory:", reset_on_return="discard")


@pytest.mark.parametrize("scheme", ["mysql", "mysql+mysqldb"])
@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_mysql_discard_gives_the_next_borrower_the_session_as_opened(
    backend: Backend, make_pool: MakePool, scheme: str
) -> None:
    """After the server-side reset (which puts every session variable back to the server's
    defaults) the session is as the pool opened it: the URL's charset, sql_mode,
    init_command, autocommit off, and what on_connect set."""
    if scheme == "mysql+mysqldb":
        pytest.importorskip("MySQLdb", reason="mysqlclient is not installed (extra: mysqlclient)")
    rest = backend.url.partition("://")[2]
    url = (
        f"{scheme}://{rest}{'&' if '?' in rest else '?'}charset=latin1&sql_mode=ANSI"
        "&init_command=SET%20%40booted%20%3D%207"
    )
    connects: list[Any] = []

    def on_connect(raw: Any) -> None:
        connects.append(raw)
        query(raw, "SET SESSION group_concat_max_len = 2222")

    def session(conn: Any) -> tuple[Any, ...]:
        return query(
            conn,
            "SELECT @@character_set_client, @@sql_mode, @booted, @@autocommit, "
            "@@SESSION.group_concat_max_len, @left, DATABASE()",
        )[0]

    pool = make_pool(
        url, pool_size=1, max_overflow=0, reset_on_return="discard", on_connect=on_connect
    )
    with pool.connection() as conn:
        first = backend.session_id(conn)
        as_opened = session(conn)
        for sql in (
            "SET NAMES utf8mb4",
            "SET sql_mode = ''",
            "SET @booted = NULL, @left = 1, autocommit = 1",
            "SET SESSION group_concat_max_len = 4096",
            "USE information_schema",
        ):
            query(conn, sql)
    assert as_opened[:5] == (
        "latin1",
        "REAL_AS_FLOAT,PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,ANSI",
        7,
        0,
        2222,
    )
    with pool.connection() as conn:
        assert backend.session_id(conn) == first  # reset, not reopened
        assert session(conn) == as_opened
    assert pool.stats().created == 1
    assert len(connects) == 3  # at connect, then after each of the two resets


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
@pytest.mark.parametrize("module", ["MySQLdb", "pymysql"])
def test_mysql_discard_on_a_callable_target_discards_the_connection(
    backend: Backend, make_pool: MakePool, caplog: pytest.LogCaptureFixture, module: str
) -> None:
    """The MySQL reset restores the session the URL opened (mysqlclient's new login also
    needs its password): a connection the pool did not open from a URL is closed on return
    instead of going back unreset."""
    driver = pytest.importorskip(module, reason=f"{module} is not installed")

    def connect() -> Any:
        return driver.connect(host="127.0.0.1", user="root", database="test")

    pool = make_pool(connect, pool_size=1, max_overflow=0, reset_on_return="discard")
    with caplog.at_level(logging.INFO, logger="flask_dbpool"), pool.connection() as conn:
        query(conn, "SET @left = 1")
    stats = pool.stats()
    assert (stats.open, stats.closed_by_reason.get("reset_failed")) == (0, 1), stats
    assert "needs the pool to open the connection from a URL" in caplog.text
    with pool.connection() as conn:
        assert query(conn, "SELECT @left") == [(None,)]


@pytest.mark.parametrize("scheme", ["mysql", "mysql+mysqldb"])
@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_mysql_discard_on_a_url_without_a_database(
    backend: Backend, make_pool: MakePool, scheme: str
) -> None:
    """A session opened without a database cannot go back to none after a USE: PyMySQL's
    reset (which keeps the database) closes that connection instead; mysqlclient's new
    login takes none. Either way the next borrower is in no database, and a return that
    changed nothing keeps its connection."""
    if scheme == "mysql+mysqldb":
        pytest.importorskip("MySQLdb", reason="mysqlclient is not installed (extra: mysqlclient)")
    server = backend.url.partition("://")[2].partition("/")[0]
    pool = make_pool(
        f"{scheme}://{server}/", pool_size=1, max_overflow=0, reset_on_return="discard"
    )
    for _ in range(3):
        with pool.connection() as conn:
            assert query(conn, "SELECT DATABASE()") == [(None,)]
    assert pool.stats().created == 1  # kept across plain returns (no churn)
    with pool.connection() as conn:
        query(conn, "USE information_schema")
    with pool.connection() as conn:
        assert query(conn, "SELECT DATABASE()") == [(None,)]


@pytest.mark.parametrize("scheme", ["mysql", "mysql+mysqldb"])
@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_mysql_discard_puts_back_the_client_character_set(
    backend: Backend, make_pool: MakePool, scheme: str
) -> None:
    """A borrower's set_character_set() changes the client's encoding and the server's
    together, even on the driver's own object: the reset puts both back, so that the next
    borrower's text is encoded as the server reads it."""
    if scheme == "mysql+mysqldb":
        pytest.importorskip("MySQLdb", reason="mysqlclient is not installed (extra: mysqlclient)")
    table = backend.new_table()
    url = scheme + "://" + backend.url.partition("://")[2]
    pool = make_pool(url, pool_size=1, max_overflow=0, reset_on_return="discard")
    with pool.connection() as conn:
        conn.driver_connection.set_character_set("latin1")
    with pool.connection() as conn:
        query(conn, f"INSERT INTO {table} (id, v) VALUES (1, %s)", ("é€",))
        conn.commit()
        assert query(conn, f"SELECT v FROM {table}") == [("é€",)]
        assert query(conn, "SELECT @@character_set_client") == [("utf8mb4",)]
    assert pool.stats().created == 1


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_mysqlclient_discard_runs_init_command_where_its_connect_does(
    backend: Backend, make_pool: MakePool
) -> None:
    """mysqlclient runs init_command inside its connect, before it sets sql_mode: after a
    reset every borrower gets the session the first one got."""
    pytest.importorskip("MySQLdb", reason="mysqlclient is not installed (extra: mysqlclient)")
    rest = backend.url.partition("://")[2]
    url = (
        f"mysql+mysqldb://{rest}{'&' if '?' in rest else '?'}sql_mode=ANSI_QUOTES"
        "&init_command=SET%20sql_mode%3D%27TRADITIONAL%27"
    )
    pool = make_pool(url, pool_size=1, max_overflow=0, reset_on_return="discard")
    modes = []
    for _ in range(3):
        with pool.connection() as conn:
            modes.append(query(conn, "SELECT @@sql_mode")[0][0])
    assert modes == [modes[0]] * 3, modes
    assert pool.stats().created == 1


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_discard_drops_notifications_nobody_read(backend: Backend, make_pool: MakePool) -> None:
    """UNLISTEN stops new notifications; those psycopg 3 already received for the previous
    borrower must not be read by the next."""
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, reset_on_return="discard")
    with pool.connection() as conn:
        query(conn, "LISTEN dbpool_secrets")
        conn.commit()
        backend.admin_query("NOTIFY dbpool_secrets, 'card=4111'")
        # psycopg keeps what arrives during a query for a later notifies() call.
        wait_until(lambda: bool(query(conn, "SELECT 1")) and bool(conn._notifies_backlog))
    with pool.connection() as conn:
        conn.commit()
        assert [n.payload for n in conn.notifies(timeout=0.2)] == []
