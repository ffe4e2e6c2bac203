"""What one borrower leaves in a session, and whether the next borrower of the same session
sees it: the isolation matrix, per backend, driver and ``reset_on_return`` mode.

Each kind of state is left by borrower A (in a transaction the pool rolls back, or
committed), then looked for by borrower B on the same server session. With
``reset_on_return="discard"`` nothing may cross; with the default (rollback only) what
crosses must be exactly what the README's isolation table says, and the table is read back
from the README so that it cannot drift from what was observed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends import Backend, MakePool, query
from flask_dbpool import Pool

README = Path(__file__).resolve().parent.parent / "README.md"
POSTGRES, MYSQL = "PostgreSQL", "MySQL/MariaDB"


@dataclass(frozen=True)
class Kind:
    """One kind of session state: how a borrower leaves it, and how to see it."""

    label: str  # the first column of the README's table
    leave: Callable[[Any], None]
    seen: Callable[[Any], bool]


def _one(conn: Any, sql: str) -> Any:
    return query(conn, sql)[0][0]


def _fails(conn: Any, sql: str) -> bool:
    try:
        query(conn, sql)
    except Exception:
        return True
    return False


def _run(*statements: str) -> Callable[[Any], None]:
    def leave(conn: Any) -> None:
        for sql in statements:
            query(conn, sql)

    return leave


def _set_attribute(conn: Any) -> None:
    conn.rollback()  # the session id was read in a transaction: autocommit cannot change there
    conn.autocommit = True


POSTGRES_KINDS = [
    Kind(
        "`SET` (a setting)",
        _run("SET statement_timeout = '4321ms'"),
        lambda c: _one(c, "SHOW statement_timeout") == "4321ms",
    ),
    Kind(
        "`SET SESSION CHARACTERISTICS … READ ONLY`",
        _run("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
        lambda c: _one(c, "SHOW default_transaction_read_only") == "on",
    ),
    Kind(
        "`SET ROLE`",
        _run("SET ROLE dbpool_isolation_role"),
        lambda c: _one(c, "SELECT current_user") == "dbpool_isolation_role",
    ),
    Kind(
        "`set_config(…, false)`",
        _run("SELECT set_config('app.user_id', '42', false)"),
        lambda c: _one(c, "SELECT current_setting('app.user_id', true)") == "42",
    ),
    Kind(
        "`search_path`",
        _run("SET search_path TO dbpool_isolation, public"),
        lambda c: "dbpool_isolation" in _one(c, "SHOW search_path"),
    ),
    Kind(
        "temporary table",
        _run("CREATE TEMP TABLE dbpool_isolation_temp (v int)"),
        lambda c: _one(c, "SELECT to_regclass('pg_temp.dbpool_isolation_temp') IS NOT NULL"),
    ),
    Kind(
        "advisory lock (`pg_advisory_lock`)",
        _run("SELECT pg_advisory_lock(424242)"),
        lambda c: (
            _one(
                c,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid() AND granted",
            )
            > 0
        ),
    ),
    Kind(
        "`LISTEN`",
        _run("LISTEN dbpool_isolation"),
        lambda c: _one(c, "SELECT count(*) FROM pg_listening_channels()") > 0,
    ),
    Kind(
        "prepared statement (SQL `PREPARE`)",
        _run("PREPARE dbpool_isolation_stmt AS SELECT 1"),
        lambda c: (
            _one(
                c,
                "SELECT count(*) FROM pg_prepared_statements WHERE name = 'dbpool_isolation_stmt'",
            )
            > 0
        ),
    ),
    Kind(
        "open cursor (SQL `DECLARE … WITH HOLD`)",
        _run("DECLARE dbpool_isolation_cursor CURSOR WITH HOLD FOR SELECT 1"),
        lambda c: _one(c, "SELECT count(*) FROM pg_cursors") > 0,
    ),
    Kind(
        "driver setting (`conn.autocommit = True`)",
        _set_attribute,
        lambda c: bool(c.autocommit),
    ),
]


def _mysql_kinds(locked: str, other: str) -> list[Kind]:
    return [
        Kind(
            "user variable (`SET @v = …`)",
            _run("SET @dbpool_isolation = 42"),
            lambda c: _one(c, "SELECT @dbpool_isolation") is not None,
        ),
        Kind(
            "session variable (`SET SESSION …`)",
            _run("SET SESSION group_concat_max_len = 4321"),
            lambda c: _one(c, "SELECT @@SESSION.group_concat_max_len") == 4321,
        ),
        Kind(
            "`SET SESSION TRANSACTION READ ONLY`",
            _run("SET SESSION TRANSACTION READ ONLY"),
            lambda c: _one(c, "SELECT @@SESSION.tx_read_only") == 1,
        ),
        Kind(
            "`SET ROLE`",
            _run("SET ROLE dbpool_isolation_role"),
            lambda c: _one(c, "SELECT CURRENT_ROLE()") == "dbpool_isolation_role",
        ),
        Kind(
            "`SET NAMES` in SQL",
            _run("SET NAMES latin1"),
            lambda c: _one(c, "SELECT @@character_set_client") == "latin1",
        ),
        Kind(
            "`USE` another database",
            _run("USE information_schema"),
            lambda c: _one(c, "SELECT DATABASE()") == "information_schema",
        ),
        Kind(
            "temporary table",
            _run("CREATE TEMPORARY TABLE dbpool_isolation_temp (v int)"),
            lambda c: not _fails(c, "SELECT COUNT(*) FROM dbpool_isolation_temp"),
        ),
        Kind(
            "named lock (`GET_LOCK`)",
            _run("SELECT GET_LOCK('dbpool_isolation', 0)"),
            lambda c: _one(c, "SELECT IS_USED_LOCK('dbpool_isolation') = CONNECTION_ID()") == 1,
        ),
        Kind(
            "`LOCK TABLES`",
            _run(f"LOCK TABLES {locked} READ"),
            # Under LOCK TABLES a session may read no table but the locked ones.
            lambda c: _fails(c, f"SELECT COUNT(*) FROM {other}"),
        ),
        Kind(
            "prepared statement (SQL `PREPARE`)",
            _run("PREPARE dbpool_isolation_stmt FROM 'SELECT 1'"),
            lambda c: not _fails(c, "EXECUTE dbpool_isolation_stmt"),
        ),
        Kind(
            "driver setting (`conn.autocommit(True)`)",
            lambda c: c.autocommit(True),
            lambda c: bool(c.get_autocommit()),
        ),
    ]


def _crosses(pool: Pool, backend: Backend, kind: Kind, commit: bool) -> bool:
    """Whether ``kind`` left by one borrower (committed or not) is seen by the next."""
    conn = pool.acquire()
    session = backend.session_id(conn)
    kind.leave(conn)
    if commit:
        conn.commit()
    pool.release(conn)
    conn = pool.acquire()
    try:
        assert backend.session_id(conn) == session, "the next borrower got another session"
        return kind.seen(conn)
    finally:
        conn.invalidate()  # closed and given back: what crossed must not reach the next kind


def _observe(pool: Pool, backend: Backend, kinds: list[Kind]) -> dict[str, tuple[bool, bool]]:
    return {
        kind.label: (_crosses(pool, backend, kind, False), _crosses(pool, backend, kind, True))
        for kind in kinds
    }


def _readme_table() -> dict[str, dict[str, tuple[bool, bool]]]:
    """The README's isolation table: backend → label → (crosses when left in a rolled-back
    transaction, crosses when committed); its ``"discard"`` column must say no throughout."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- isolation:begin -->(.*?)<!-- isolation:end -->", text, re.S)
    assert match, "README.md has no isolation table between its markers"
    cells = {"**crosses**": True, "no": False}
    table: dict[str, dict[str, tuple[bool, bool]]] = {}
    for line in match.group(1).strip().splitlines()[2:]:
        backend, label, left_open, committed, discard = (
            cell.strip() for cell in line.strip().strip("|").split("|")
        )
        assert discard == "no", f"README: {label} crosses under 'discard'?"
        table.setdefault(backend, {})[label] = (cells[left_open], cells[committed])
    return table


@pytest.fixture(scope="module")
def isolation_role(postgres_url: str) -> Iterator[None]:
    import psycopg

    with psycopg.connect(postgres_url.split("?")[0], autocommit=True) as admin:
        admin.execute(
            "DO $$ BEGIN CREATE ROLE dbpool_isolation_role NOLOGIN; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        admin.execute("GRANT dbpool_isolation_role TO CURRENT_USER")
    yield


@pytest.mark.parametrize("reset", ["rollback", "discard"])
@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg2"])
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_postgres_isolation_matrix(
    backend: Backend, make_pool: MakePool, isolation_role: None, scheme: str, reset: str
) -> None:
    url = scheme + "://" + backend.url.partition("://")[2]
    pool = make_pool(url, pool_size=1, max_overflow=0, reset_on_return=reset)
    observed = _observe(pool, backend, POSTGRES_KINDS)
    expected = _readme_table()[POSTGRES]
    if reset == "discard":
        expected = {label: (False, False) for label in expected}
    assert observed == expected


@pytest.fixture(scope="module")
def mysql_isolation_role(mysql_url: str) -> Iterator[None]:
    with Pool(mysql_url, pool_size=1) as admin, admin.connection() as conn:
        query(conn, "CREATE ROLE IF NOT EXISTS dbpool_isolation_role")
        query(conn, "GRANT dbpool_isolation_role TO CURRENT_USER")
    yield


@pytest.mark.parametrize("reset", ["rollback", "discard"])
@pytest.mark.parametrize("scheme", ["mysql", "mysql+mysqldb"])
@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_mysql_isolation_matrix(
    backend: Backend, make_pool: MakePool, mysql_isolation_role: None, scheme: str, reset: str
) -> None:
    if scheme == "mysql+mysqldb":
        pytest.importorskip("MySQLdb", reason="mysqlclient is not installed (extra: mysqlclient)")
    url = scheme + "://" + backend.url.partition("://")[2]
    kinds = _mysql_kinds(backend.new_table(), backend.new_table())
    pool = make_pool(url, pool_size=1, max_overflow=0, reset_on_return=reset)
    observed = _observe(pool, backend, kinds)
    expected = _readme_table()[MYSQL]
    if reset == "discard":
        expected = {label: (False, False) for label in expected}
    assert observed == expected
