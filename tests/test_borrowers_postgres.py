"""Issue 17, PostgreSQL part: nothing crosses borrowers, nothing waits beyond its word.

Every test runs against the real PostgreSQL (psycopg 3 and psycopg2), never a mock:

* item 2: a transaction opened with SQL ``BEGIN`` in autocommit mode ends on return;
* item 3: a SQL ``COMMIT`` does not leave psycopg2 out of step (next borrower autocommitting);
* item 5: client-side settings, notices and ``WITH HOLD`` cursors are put back on return;
* item 7: a ping over a frozen network path gives up after its timeout (``PingTimeout``);
* item 8: a refused login is told from an outage (``is_rejection``);
* item 9: a ``gevent.Timeout`` during the ``DISCARD ALL`` reset reaches the caller;
* item 12: libpq's unknown-option message has no trailing newline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends import PostgresBackend, Worker, query
from flask_dbpool import ConfigError, Pool
from flask_dbpool.drivers import IDLE, Driver, connection_rejected
from flask_dbpool.drivers.postgres import Psycopg2Driver, PsycopgDriver
from flask_dbpool.errors import PingTimeout
from pgcluster import ThrowawayCluster
from tcprelay import TCPRelay

DRIVERS = {"psycopg": PsycopgDriver, "psycopg2": Psycopg2Driver}


@dataclass
class PG:
    """One PostgreSQL driver on the real server."""

    name: str
    driver: type[Driver]
    url: str  # a pool URL selecting exactly this driver
    backend: PostgresBackend

    @property
    def module(self) -> Any:
        return importlib.import_module(self.name)

    def connect(self, **params: Any) -> Any:
        """A raw connection of this driver to the test server, with libpq ``params``."""
        base = self.backend.url.partition("://")[2]
        return self.module.connect("postgresql://" + base, connect_timeout=10, **params)

    def pool(self, url: str | None = None, **options: Any) -> Pool:
        """A one-connection pool: every checkout gets the same driver connection."""
        options.setdefault("pool_size", 1)
        options.setdefault("max_overflow", 0)
        options.setdefault("timeout", 10)
        return Pool(url or self.url, **options)


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"driver {module} is not installed")


@pytest.fixture(params=sorted(DRIVERS))
def pg(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[PG]:
    name: str = request.param
    _require(name)
    backend = PostgresBackend(postgres_url)
    scheme = "postgresql+" + name
    yield PG(name, DRIVERS[name], scheme + "://" + backend.url.partition("://")[2], backend)
    backend.cleanup()


@pytest.fixture
def pg2(postgres_url: str) -> Iterator[PG]:
    _require("psycopg2")
    backend = PostgresBackend(postgres_url)
    yield PG(
        "psycopg2",
        Psycopg2Driver,
        "postgresql+psycopg2://" + backend.url.partition("://")[2],
        backend,
    )
    backend.cleanup()


@pytest.fixture
def pg3(postgres_url: str) -> Iterator[PG]:
    _require("psycopg")
    backend = PostgresBackend(postgres_url)
    yield PG(
        "psycopg",
        PsycopgDriver,
        "postgresql+psycopg://" + backend.url.partition("://")[2],
        backend,
    )
    backend.cleanup()


def _run(conn: Any, sql: str) -> None:
    cur = conn.cursor()
    try:
        cur.execute(sql)
    finally:
        cur.close()


# ---------------------------------------------------------------------- item 2


def test_item2_autocommit_begin_insert_is_rolled_back_on_return(pg: PG) -> None:
    """psycopg2's rollback() is a no-op in autocommit mode: the driver must still end the
    transaction the borrower opened with SQL BEGIN (psycopg 3 already did: checked too).
    ``release()`` (not a ``with`` block, which commits like the driver's) rolls back."""
    table = pg.backend.new_table()
    with pg.pool() as pool:
        conn = pool.acquire()
        conn.autocommit = True
        _run(conn, "BEGIN")
        _run(conn, f"INSERT INTO {table} VALUES (1, 'first borrower')")
        pool.release(conn)
        conn = pool.acquire()
        conn.autocommit = True  # whatever the pool restored: this borrower commits
        _run(conn, "COMMIT")  # must not commit the first borrower's insert
        pool.release(conn)
    assert pg.backend.count_rows(table) == 0


def test_item2_autocommit_aborted_transaction_is_rolled_back_on_return(pg: PG) -> None:
    with pg.pool() as pool:
        with pool.connection() as conn:
            conn.autocommit = True
            _run(conn, "BEGIN")
            with pytest.raises(pg.module.errors.DivisionByZero):
                _run(conn, "SELECT 1/0")
        for _ in range(3):  # later borrowers: no "current transaction is aborted"
            with pool.connection() as conn:
                assert query(conn, "SELECT 1") == [(1,)]
        assert pool.stats().open == 1  # the same connection, reset (not discarded)


# ---------------------------------------------------------------------- item 3


def test_item3_sql_commit_leaves_the_driver_in_step(pg: PG) -> None:
    """After a SQL COMMIT psycopg2 believed a transaction open and sent no BEGIN for the next
    borrower, whose insert then autocommitted although its block raised."""
    table = pg.backend.new_table()
    with pg.pool() as pool:
        with pool.connection() as conn:
            _run(conn, f"INSERT INTO {table} VALUES (1, 'committed by SQL')")
            _run(conn, "COMMIT")
        with pytest.raises(RuntimeError), pool.connection() as conn:
            _run(conn, f"INSERT INTO {table} VALUES (2, 'rolled back')")
            raise RuntimeError("the block fails: its insert must go")
        with pool.connection() as conn:
            assert query(conn, f"SELECT id FROM {table}") == [(1,)]
    assert pg.backend.count_rows(table) == 1


def test_item3_psycopg2_out_of_step_connection_takes_the_slow_path(pg2: PG) -> None:
    raw = pg2.connect()
    try:
        _run(raw, "SELECT 1")
        _run(raw, "COMMIT")
        assert raw.get_transaction_status() == 0  # libpq: idle …
        assert raw.status != pg2.module.extensions.STATUS_READY  # … psycopg2: in a transaction
        assert Psycopg2Driver.transaction_state(raw) != IDLE
        Psycopg2Driver.rollback(raw)
        assert raw.status == pg2.module.extensions.STATUS_READY
        assert Psycopg2Driver.transaction_state(raw) == IDLE
    finally:
        raw.close()


# ---------------------------------------------------------------------- item 5 (driver)


def _named_cursor_twice(conn: Any, cursors: list[Any]) -> list[tuple[Any, ...]]:
    """What the same function does on each checkout: a WITH HOLD cursor it does not close."""
    cur = conn.cursor("held", withhold=True)
    cursors.append(cur)  # closed by the test at the end (psycopg warns about open ones)
    cur.execute("SELECT generate_series(1, 3)")
    rows = [tuple(r) for r in cur.fetchmany(1)]
    conn.commit()
    return rows


def _changed_flag() -> tuple[list[int], Callable[[], None]]:
    calls: list[int] = []
    return calls, lambda: calls.append(1)


def test_item5_psycopg_settings_restored_by_driver(pg3: PG) -> None:
    import psycopg
    from psycopg.rows import dict_row

    raw = pg3.connect()
    try:
        saved = PsycopgDriver.save_settings(raw)
        notices: list[str] = []
        raw.autocommit = True
        raw.read_only = True
        raw.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        raw.deferrable = True
        raw.row_factory = dict_row
        raw.prepare_threshold = 0
        raw.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        PsycopgDriver.rollback(raw)
        PsycopgDriver.restore_settings(raw, saved)
        assert (raw.autocommit, raw.read_only, raw.isolation_level, raw.deferrable) == (
            False,
            None,
            None,
            None,
        )
        assert raw.prepare_threshold == 5
        _run(raw, "DO $$ BEGIN RAISE NOTICE 'for the next borrower'; END $$")
        assert raw.execute("SELECT 1 AS one").fetchall() == [(1,)]  # tuples again
        assert raw.execute("SHOW transaction_read_only").fetchall() == [("off",)]
        raw.rollback()
        assert notices == []  # the first borrower's handler was removed
    finally:
        raw.close()


def test_item5_psycopg2_settings_restored_by_driver(pg2: PG) -> None:
    import psycopg2.extensions
    import psycopg2.extras

    raw = pg2.connect()
    try:
        saved = Psycopg2Driver.save_settings(raw)
        raw.set_session(readonly=True, deferrable=True, isolation_level="SERIALIZABLE")
        raw.autocommit = True  # in autocommit psycopg2 applies the above with SET
        raw.cursor_factory = psycopg2.extras.DictCursor
        raw.set_client_encoding("LATIN1")
        _run(raw, "DO $$ BEGIN RAISE NOTICE 'seen by nobody else'; END $$")
        assert raw.notices
        Psycopg2Driver.rollback(raw)
        Psycopg2Driver.restore_settings(raw, saved)
        assert (raw.autocommit, raw.readonly, raw.deferrable, raw.isolation_level) == (
            False,
            None,
            None,
            None,
        )
        assert raw.cursor_factory is None
        assert raw.encoding == "UTF8"
        assert raw.notices == []
        cur = raw.cursor()
        assert type(cur) is psycopg2.extensions.cursor
        cur.execute("SHOW transaction_read_only")
        assert cur.fetchall() == [("off",)]
        cur.execute("SHOW default_transaction_isolation")
        assert cur.fetchall() == [("read committed",)]
        raw.rollback()
        raw.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        Psycopg2Driver.restore_settings(raw, saved)
        assert raw.autocommit is False
    finally:
        raw.close()


def test_item5_with_hold_cursor_closed_through_watch(pg: PG) -> None:
    """A WITH HOLD cursor left open by one borrower: the same code fails for the next one
    (DuplicateCursor) unless the return closes it. Only a named cursor marks the checkout."""
    raw = pg.connect()
    cursors: list[Any] = []
    try:
        saved = pg.driver.save_settings(raw)
        calls, changed = _changed_flag()
        plain = pg.driver.watch("cursor", raw.cursor, changed)()
        plain.close()
        assert calls == []  # a plain cursor() costs a check, nothing more
        cursor = pg.driver.watch("cursor", raw.cursor, changed)
        assert _named_cursor_twice(_Conn(raw, cursor), cursors) == [(1,)]
        assert calls == [1]
        pg.driver.rollback(raw)
        pg.driver.restore_settings(raw, saved)
        assert pg.driver.transaction_state(raw) == IDLE
        cursor = pg.driver.watch("cursor", raw.cursor, changed)
        assert _named_cursor_twice(_Conn(raw, cursor), cursors) == [(1,)]
    finally:
        raw.close()
        for cur in cursors:  # no I/O once the connection is closed: just marks them closed
            with contextlib.suppress(Exception):
                cur.close()


class _Conn:
    """``raw`` with its ``cursor`` replaced by what the pool's handle would give."""

    def __init__(self, raw: Any, cursor: Callable[..., Any]) -> None:
        self.cursor = cursor
        self.commit = raw.commit


def test_item5_psycopg2_notices_do_not_reach_the_next_borrower(pg2: PG) -> None:
    with pg2.pool() as pool:
        with pool.connection() as conn:
            _run(conn, "DO $$ BEGIN RAISE NOTICE 'first borrower'; END $$")
            conn.commit()
            assert any("first borrower" in n for n in conn.notices)
        with pool.connection() as conn:
            assert list(conn.notices) == []


# ---------------------------------------------------------------------- item 7


@pytest.fixture
def relay(postgres_url: str) -> Iterator[TCPRelay]:
    host, _, port = postgres_url.partition("@")[2].partition("/")[0].rpartition(":")
    if not host or not port.isdigit():
        pytest.skip(f"cannot relay to {postgres_url!r} (needs host:port)")
    with TCPRelay(host, int(port)) as r:
        yield r


def _relayed(pg: PG, relay: TCPRelay) -> Any:
    return pg.module.connect(
        host="127.0.0.1",
        port=relay.port,
        user="postgres",
        dbname=pg.backend.base_url.rpartition("/")[2].partition("?")[0],
        connect_timeout=10,
    )


def test_item7_ping_on_a_frozen_path_times_out(pg: PG, relay: TCPRelay) -> None:
    raw = _relayed(pg, relay)
    try:
        pg.driver.ping(raw, 5.0)
        relay.freeze()
        start = time.monotonic()
        pinger = Worker(lambda: pg.driver.ping(raw, 1.0), name="ping")
        pinger.start()
        with pytest.raises(PingTimeout):
            pinger.finish(timeout=4.0)  # a bound, not a speed test: unbounded before
        assert 0.9 <= time.monotonic() - start < 4.0
        closer = Worker(lambda: pg.driver.close(raw), name="close")
        closer.start()
        closer.finish(timeout=4.0)  # closing the abandoned connection does not hang either
    finally:
        relay.thaw()
        relay.close()  # ends a ping still blocked (before the fix) with EOF
        try:
            raw.close()
        except Exception:
            pass


def test_item7_ping_healthy_is_one_query_and_leaves_idle(pg: PG) -> None:
    raw = pg.connect()
    try:
        for _ in range(3):
            pg.driver.ping(raw, 5.0)
            assert pg.driver.transaction_state(raw) == IDLE
        if pg.name == "psycopg2":
            assert raw.status == pg.module.extensions.STATUS_READY
            assert raw.autocommit is False
        assert query(raw, "SELECT 2") == [(2,)]
        raw.rollback()
    finally:
        raw.close()


def test_item7_psycopg2_healthy_pings_leave_the_watchdog_heap_empty(
    pg2: PG, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finished pings leave no deadline behind in the shared watchdog: none after pings one
    after another, none after pings from several threads with different timeouts (so they
    end in another order than their deadlines). No thread per ping either."""
    from flask_dbpool.drivers.base import _WATCHDOG

    raws = [pg2.connect() for _ in range(4)]
    try:
        Psycopg2Driver.ping(raws[0], 5.0)  # the watchdog thread exists from here on
        # Counted at the source, not as the process's thread count, which other tests'
        # maintenance threads change while this runs.
        starts: list[object] = []
        start = _WATCHDOG._start

        def counting_start(*args: Any) -> Any:
            starts.append(args)
            return start(*args)

        monkeypatch.setattr(_WATCHDOG, "_start", counting_start)
        for _ in range(100):
            Psycopg2Driver.ping(raws[0], 5.0)
            assert _WATCHDOG._heap == []
        workers = [
            Worker(lambda raw=raw, t=t: [Psycopg2Driver.ping(raw, t) for _ in range(50)])
            for raw, t in zip(raws, (9.0, 3.0, 7.0, 5.0), strict=True)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.finish(timeout=30.0)
        assert _WATCHDOG._heap == []
        assert starts == []  # no thread per ping
        for raw in raws:  # never shut down by a stale deadline
            assert query(raw, "SELECT 1") == [(1,)]
    finally:
        for raw in raws:
            raw.close()


GEVENT_PING_SCRIPT = r"""
from gevent import monkey

monkey.patch_all()

import json
import sys
import time

import psycopg2

from flask_dbpool.drivers.postgres import Psycopg2Driver
from flask_dbpool.errors import PingTimeout

port, user, dbname = sys.argv[1:]
raw = psycopg2.connect(
    host="127.0.0.1", port=int(port), user=user, dbname=dbname, connect_timeout=10
)
Psycopg2Driver.ping(raw, 5.0)
print("READY", flush=True)
sys.stdin.readline()  # the test froze the relay
start = time.monotonic()
try:
    Psycopg2Driver.ping(raw, 1.0)
    outcome = "answered"
except PingTimeout:
    outcome = "PingTimeout"
print(json.dumps({"outcome": outcome, "elapsed": time.monotonic() - start}), flush=True)
"""


def test_item7_psycopg2_ping_under_gevent_is_bounded(
    pg2: PG, relay: TCPRelay, tmp_path: Path
) -> None:
    """Under ``monkey.patch_all()`` psycopg2 (no green wait callback) blocks the whole hub
    inside libpq: only a real OS thread can keep the deadline, so this would hang if the
    watchdog were a greenlet."""
    if importlib.util.find_spec("gevent") is None:
        pytest.skip("gevent is not installed")
    script = tmp_path / "gevent_ping.py"
    script.write_text(GEVENT_PING_SCRIPT)
    src = Path(__file__).resolve().parent.parent / "src"
    dbname = pg2.backend.base_url.rpartition("/")[2].partition("?")[0]
    proc = subprocess.Popen(
        [sys.executable, str(script), str(relay.port), "postgres", dbname],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready = proc.stdout.readline()  # connect_timeout bounds this
        assert ready.strip() == "READY", (ready, proc.stderr.read() if proc.stderr else "")
        relay.freeze()
        out, err = proc.communicate("go\n", timeout=15)  # unbounded ping: the test fails
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the ping under gevent hung\nstdout:\n{out}\nstderr:\n{err}")
    finally:
        relay.thaw()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["outcome"] == "PingTimeout", (result, err[-2000:])
    assert 0.9 <= result["elapsed"] < 4.0, result


def test_item7_ping_of_a_killed_session_raises_the_driver_error(pg: PG) -> None:
    raw = pg.connect()
    try:
        pg.backend.kill(raw.info.backend_pid)
        with pytest.raises(pg.module.Error):
            pg.driver.ping(raw, 5.0)
    finally:
        raw.close()


# ---------------------------------------------------------------------- item 8


def _connect_error(pg: PG, **params: Any) -> BaseException:
    base = dict(host="127.0.0.1", user="postgres", dbname="test", connect_timeout=5)
    base.update(params)
    try:
        pg.module.connect(**base).close()
    except Exception as error:
        return error
    pytest.fail(f"connecting with {params} succeeded")


@pytest.mark.parametrize(
    "params",
    [
        {"user": "dbpool_no_such_role"},
        {"dbname": "dbpool_no_such_db"},
        {"sslmode": "bogus"},
        {"options": "-c dbpool_no_such_setting=1"},
        {"options": "-c work_mem=notanumber"},
        {"sslmode": "require"},  # the server has no SSL: only the configuration can change it
    ],
    ids=["role", "database", "libpq-option", "server-option", "server-value", "ssl"],
)
def test_item8_rejections(pg: PG, params: dict[str, Any]) -> None:
    port = _port(pg)
    error = _connect_error(pg, port=port, **params)
    assert pg.driver.is_rejection(error), error
    assert connection_rejected(error), error


def _port(pg: PG) -> int:
    return int(pg.backend.base_url.partition("@")[2].partition("/")[0].rpartition(":")[2])


def test_item8_outages_are_not_rejections(pg: PG) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    refused = _connect_error(pg, port=free)
    assert not pg.driver.is_rejection(refused), refused
    assert not connection_rejected(refused), refused

    # 53300 "too many connections for role": transient, retried like an outage.
    role = f"dbpool_full_{uuid.uuid4().hex[:8]}"
    pg.backend.admin_query(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    try:
        full = _connect_error(pg, port=_port(pg), user=role)
        assert "too many connections" in str(full)
        assert not pg.driver.is_rejection(full), full
    finally:
        pg.backend.admin_query(f"DROP ROLE {role}")


def test_item8_password_and_hba_rejections(pg: PG, throwaway_postgres: ThrowawayCluster) -> None:
    """Wrong password and a pg_hba.conf ``reject`` line, on the session's own cluster (its
    pg_hba.conf gets lines for two roles of this test only)."""
    import psycopg

    cluster = throwaway_postgres
    suffix = uuid.uuid4().hex[:8]
    pw_role, rejected_role = f"dbpool_pw_{suffix}", f"dbpool_rej_{suffix}"
    hba = cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(
        f"host all {pw_role} 127.0.0.1/32 scram-sha-256\n"
        f"host all {rejected_role} 127.0.0.1/32 reject\n" + original
    )
    with psycopg.connect(cluster.url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {pw_role} LOGIN PASSWORD 'right'")
        admin.execute(f"CREATE ROLE {rejected_role} LOGIN")
        admin.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)  # the reload is asynchronous; a generous pause, not a speed test
        common = dict(host="127.0.0.1", port=cluster.port, dbname=cluster.dbname)
        wrong = _connect_error(pg, user=pw_role, password="wrong", **common)
        assert "password authentication failed" in str(wrong)
        assert pg.driver.is_rejection(wrong), wrong
        refused = _connect_error(pg, user=rejected_role, **common)
        assert "pg_hba.conf" in str(refused)
        assert pg.driver.is_rejection(refused), refused
    finally:
        hba.write_text(original)
        with psycopg.connect(cluster.url, autocommit=True) as admin:
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(f"DROP ROLE IF EXISTS {pw_role}")
            admin.execute(f"DROP ROLE IF EXISTS {rejected_role}")


# ---------------------------------------------------------------------- item 9

GEVENT_SCRIPT = r"""
from gevent import monkey

monkey.patch_all()

import json
import sys

import gevent

sys.path[:0] = [sys.argv[1], sys.argv[2]]
from tcprelay import TCPRelay
from flask_dbpool import Pool

host, port, dbname = sys.argv[3], int(sys.argv[4]), sys.argv[5]
relay = TCPRelay(host, port)
pool = Pool(
    f"postgresql+psycopg://postgres@127.0.0.1:{relay.port}/{dbname}",
    pool_size=1, max_overflow=0, reset_on_return="discard", timeout=10,
)
conn = pool.acquire()
conn.cursor().execute("SELECT 1")
conn.commit()
relay.freeze()  # DISCARD ALL will get no answer
outcome = "returned normally"
try:
    with gevent.Timeout(1.0):
        pool.release(conn)
except gevent.Timeout:
    outcome = "gevent.Timeout"
except BaseException as error:
    outcome = f"{type(error).__name__}: {error}"
relay.thaw()
stats = pool.stats()
print(json.dumps({"outcome": outcome, "open": stats.open}))
relay.close()
"""


def test_item9_gevent_timeout_during_discard_reset_propagates(
    postgres_url: str, tmp_path: Path
) -> None:
    if importlib.util.find_spec("gevent") is None:
        pytest.skip("gevent is not installed")
    _require("psycopg")
    host, _, port = postgres_url.partition("@")[2].partition("/")[0].rpartition(":")
    dbname = postgres_url.rpartition("/")[2].partition("?")[0]
    script = tmp_path / "discard_timeout.py"
    script.write_text(GEVENT_SCRIPT)
    tests = Path(__file__).resolve().parent
    src = tests.parent / "src"
    proc = subprocess.run(
        [sys.executable, str(script), str(src), str(tests), host, port, dbname],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(src)},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "gevent.Timeout", (result, proc.stderr[-2000:])
    assert result["open"] == 0  # the interrupted connection was discarded


# ---------------------------------------------------------------------- item 12


def test_item12_unknown_libpq_option_message_has_no_trailing_newline(
    pg: PG, postgres_url: str
) -> None:
    url = pg.url + ("&" if "?" in pg.url else "?") + "bogus=1"
    with pytest.raises(ConfigError) as info:
        Pool(url)
    message = str(info.value)
    assert "bogus" in message
    assert message == message.strip(), repr(message)


# ---------------------------------------------------------------------- item 5 (pool)


def test_item5_psycopg_settings_restored_through_pool(pg3: PG) -> None:
    import psycopg
    from psycopg.rows import dict_row

    heard: list[str] = []
    with pg3.pool() as pool:
        with pool.connection() as conn:
            first = pg3.backend.session_id(conn)
            conn.commit()
            conn.autocommit = True
            conn.read_only = True
            conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
            conn.deferrable = True
            conn.row_factory = dict_row
            conn.prepare_threshold = None
            conn.add_notice_handler(lambda diag: heard.append(diag.message_primary or ""))
        with pool.connection() as conn:
            assert pg3.backend.session_id(conn) == first  # the same connection, reset
            assert (conn.autocommit, conn.read_only, conn.isolation_level) == (False, None, None)
            assert (conn.deferrable, conn.prepare_threshold) == (None, 5)
            assert conn.execute("SELECT 1 AS one").fetchall() == [(1,)]
            assert conn.execute("SHOW transaction_read_only").fetchall() == [("off",)]
            conn.execute("DO $$ BEGIN RAISE NOTICE 'second borrower'; END $$")
        assert heard == []


def test_item5_psycopg2_settings_restored_through_pool(pg2: PG) -> None:
    from collections import deque

    import psycopg2.extensions
    import psycopg2.extras

    with pg2.pool() as pool:
        with pool.connection() as conn:
            first = pg2.backend.session_id(conn)
            conn.commit()
            conn.set_session(readonly=True, isolation_level="SERIALIZABLE", autocommit=True)
            conn.cursor_factory = psycopg2.extras.DictCursor
            conn.set_client_encoding("LATIN1")
            conn.notices = deque(maxlen=5)
        with pool.connection() as conn:
            assert pg2.backend.session_id(conn) == first
            assert (conn.autocommit, conn.readonly, conn.isolation_level) == (False, None, None)
            assert type(conn.cursor()) is psycopg2.extensions.cursor
            assert conn.encoding == "UTF8"
            assert type(conn.notices) is list
            assert query(conn, "SHOW transaction_read_only") == [("off",)]
            conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        with pool.connection() as conn:
            assert conn.autocommit is False


def test_item5_with_hold_cursor_same_code_twice_through_pool(pg: PG) -> None:
    """The same function on two checkouts: a WITH HOLD cursor it leaves open made the second
    run fail with DuplicateCursor."""
    cursors: list[Any] = []
    pool = pg.pool()
    try:
        for _ in range(2):
            with pool.connection() as conn:
                assert _named_cursor_twice(conn, cursors) == [(1,)]
    finally:
        pool.close()
        for cur in cursors:  # the connections are closed: no I/O, just marked closed
            with contextlib.suppress(Exception):
                cur.close()


def test_item5_on_connect_settings_are_what_is_restored(pg: PG) -> None:
    def on_connect(raw: Any) -> None:
        raw.autocommit = True

    with pg.pool(on_connect=on_connect) as pool:
        with pool.connection() as conn:
            conn.autocommit = False
        with pool.connection() as conn:
            assert conn.autocommit is True


def test_item3_on_connect_sql_commit_leaves_the_driver_in_step(pg: PG) -> None:
    """``on_connect`` ending with a SQL COMMIT: the first borrower gets a connection whose
    driver is in step (psycopg2's is resynchronised by the commit after on_connect)."""
    table = pg.backend.new_table()

    def on_connect(raw: Any) -> None:
        _run(raw, "SET application_name = 'dbpool_on_connect'")
        _run(raw, "COMMIT")

    with pg.pool(on_connect=on_connect) as pool:
        with pytest.raises(RuntimeError), pool.connection() as conn:
            _run(conn, f"INSERT INTO {table} VALUES (1, 'rolled back')")
            raise RuntimeError("the block fails: its insert must go")
    assert pg.backend.count_rows(table) == 0


@pytest.mark.parametrize("method", ["LDAP", "RADIUS", "PAM", "GSSAPI", "SSPI", "BSD"])
def test_item8_logins_checked_by_another_service_are_not_rejections(method: str) -> None:
    """PostgreSQL says "<method> authentication failed" for wrong credentials and for an
    outage of the service that checks them alike: retried as an outage, not raised at once.
    (The real driver's error class with the server's wording; no server here can run LDAP.)"""
    import psycopg
    import psycopg2

    message = (
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        f'FATAL:  {method} authentication failed for user "app"'
    )
    assert not PsycopgDriver.is_rejection(psycopg.OperationalError(message))
    assert not Psycopg2Driver.is_rejection(psycopg2.OperationalError(message))
    # The server's own password check stays a rejection.
    plain = message.replace(f"{method} authentication", "password authentication")
    assert PsycopgDriver.is_rejection(psycopg.OperationalError(plain))
