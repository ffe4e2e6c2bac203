"""Database outages against a real PostgreSQL: restarts, killed sessions, a server that is down.

Every test runs on the session's private throwaway cluster (``throwaway_postgres``), which it
may stop, restart and terminate sessions on; never on a shared server. Each test is run
through psycopg 3 and through psycopg2.

What is checked (the health features of the pool):

* Under load (16 threads, at most 8 connections), a server restart or the termination of
  every pool session is survived: every thread succeeds again within a bounded time, no
  connection of the old server (or a killed session) is lent once the pool has seen the
  outage, every connection lent after that works, and the pool's gauges stay consistent
  throughout (sampled by a monitor thread) and settle afterwards with exactly as many server
  sessions as the pool counts open, and none once the pool is closed. Each runs ``busy``
  (threads run through the outage) and ``quiet`` (threads parked during it, so dead idle
  connections must be caught by the pool's checks rather than flushed by use).
* A connection that raised a disconnect error is discarded; once a disconnect is seen, older
  idle connections are checked before reuse and older ones out on loan when returned.
* While the server is down, ``acquire(timeout=t)`` fails after about ``t`` seconds with
  ``PoolTimeout`` carrying the last connection error (text and ``__cause__``); reconnecting
  is done with back-off, not by every waiting caller; callers waiting when the server comes
  back are served within seconds.
* ``Pool(..., open_timeout=…)`` and ``wait_ready()`` wait for a first connection and raise
  ``PoolTimeout`` with the cause (connection refused, or a server error such as a database
  that does not exist).
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import psycopg
import pytest

from backends import query, wait_until
from flask_dbpool import Pool, PoolTimeout
from flask_dbpool.policy import RECOVERY_STEP
from pgcluster import ThrowawayCluster

pytestmark = pytest.mark.timeout(60)

#: Threads of the load tests, against pool_size + max_overflow = 4 + 4 connections.
THREADS = 16
POOL_SIZE = 4
MAX_OVERFLOW = 4
MAX_OPEN = POOL_SIZE + MAX_OVERFLOW
#: A bound (not a speed target) for every load thread to succeed again after the outage.
RECOVERY = 15.0
#: A bound for callers waiting while the server is down to be served once it is back: the
#: reconnect back-off is capped at a few seconds, plus the time to connect.
BACK_ONLINE = 8.0
#: What each load iteration asks the server: which session and which server incarnation.
PROBE = (
    "SELECT pg_backend_pid(), (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint"
)


# ---------------------------------------------------------------------- fixtures and helpers


@dataclass(frozen=True)
class Flavor:
    """One PostgreSQL driver: the scheme selecting it and its module."""

    name: str
    scheme: str
    module: ModuleType

    @property
    def operational_error(self) -> type[Exception]:
        error: type[Exception] = self.module.OperationalError
        return error

    def connect(self, libpq_url: str) -> Any:
        """A raw connection, opened without the pool (for callable pool targets)."""
        return self.module.connect(libpq_url)


@pytest.fixture(params=["psycopg", "psycopg2"])
def flavor(request: pytest.FixtureRequest) -> Flavor:
    name: str = request.param
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        pytest.skip(f"driver {name} is not installed ({exc})")
    return Flavor(name, f"postgresql+{name}", module)


class Server:
    """The cluster seen from the server side, through short-lived admin connections (they
    must not outlive a restart)."""

    def __init__(self, cluster: ThrowawayCluster) -> None:
        self.cluster = cluster
        self.tags: list[str] = []

    def admin(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(
            self.cluster.url,
            autocommit=True,
            connect_timeout=5,
            application_name="dbpool_outage_admin",
        ) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def new_tag(self) -> str:
        """A unique ``application_name`` for one pool's sessions."""
        tag = f"dbpool_outage_{uuid.uuid4().hex[:10]}"
        self.tags.append(tag)
        return tag

    def url(self, flavor: Flavor, tag: str, dbname: str | None = None) -> str:
        """The pool URL for ``flavor``, its sessions tagged with ``tag``."""
        c = self.cluster
        return (
            f"{flavor.scheme}://postgres@127.0.0.1:{c.port}/{dbname or c.dbname}"
            f"?application_name={tag}&connect_timeout=3"
        )

    def libpq_url(self, tag: str) -> str:
        """The same as a plain libpq URI (what both drivers' ``connect()`` accept)."""
        c = self.cluster
        return (
            f"postgresql://postgres@127.0.0.1:{c.port}/{c.dbname}"
            f"?application_name={tag}&connect_timeout=3"
        )

    def pids(self, tag: str) -> set[int]:
        rows = self.admin("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (tag,))
        return {r[0] for r in rows}

    def start_time(self) -> int:
        rows = self.admin(
            "SELECT (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint"
        )
        return int(rows[0][0])

    def terminate_all(self, tag: str) -> set[int]:
        """Signal every session of ``tag`` at once (one statement); wait until all are gone."""
        rows = self.admin(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (tag,),
        )
        killed = {pid for pid, ok in rows if ok}
        assert killed, f"no session of {tag} to terminate"
        wait_until(
            lambda: not (self.pids(tag) & killed), timeout=10, what="terminated sessions to end"
        )
        return killed

    def cleanup(self) -> None:
        """Terminate whatever a failed test left behind."""
        if self.tags and self.cluster.running:
            with contextlib.suppress(Exception):
                self.admin(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = ANY(%s)",
                    (self.tags,),
                )


@pytest.fixture
def server(throwaway_postgres: ThrowawayCluster) -> Iterator[Server]:
    """The throwaway cluster, running; left running (and clean) whatever the test did."""
    throwaway_postgres.start()
    srv = Server(throwaway_postgres)
    yield srv
    throwaway_postgres.start()
    srv.cleanup()


@pytest.fixture
def pools() -> Iterator[list[Pool]]:
    """Pools to close at teardown (a failing test may leave one open)."""
    made: list[Pool] = []
    yield made
    for pool in made:
        with contextlib.suppress(Exception):
            pool.close(timeout=2)


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def assert_timeout_carries_cause(exc: PoolTimeout, flavor: Flavor, expected_text: str) -> None:
    """``exc`` says why it could not connect, and chains the driver's error."""
    cause = exc.__cause__
    assert isinstance(cause, flavor.operational_error), (
        f"PoolTimeout.__cause__ should be the driver's OperationalError, got {cause!r}"
    )
    assert expected_text in str(cause), f"unexpected connection error: {cause}"
    assert expected_text in str(exc), f"PoolTimeout does not say why: {exc}"
    # The driver's first line, whitespace aside (libpq writes "FATAL:  database ...").
    said, why = " ".join(str(exc).split()), " ".join(first_line(cause).split())
    assert why in said, f"PoolTimeout should carry the last connection error {why!r}: {exc}"


class StatsMonitor:
    """Samples ``pool.stats()`` from its own thread and records every inconsistency."""

    def __init__(self, pool: Pool, max_open: int, period: float = 0.005) -> None:
        self.pool = pool
        self.max_open = max_open
        self.period = period
        self.samples = 0
        self.max_seen_open = 0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outage-monitor", daemon=True)

    def __enter__(self) -> StatsMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        previous: Any = None
        try:
            while not self._stop.is_set():
                s = self.pool.stats()
                self.samples += 1
                self.max_seen_open = max(self.max_seen_open, s.open)
                bad = []
                if not 0 <= s.open <= self.max_open:
                    bad.append(f"open={s.open} outside 0..{self.max_open}")
                if min(s.idle, s.in_use, s.connecting, s.waiting) < 0:
                    bad.append("a negative gauge")
                if s.idle > s.open or s.connecting > s.open:
                    bad.append("idle or connecting above open")
                # ``checking``: idle connections taken aside by maintenance for a check.
                checking = getattr(s, "checking", 0)
                if checking < 0 or s.idle + s.in_use + s.connecting + checking != s.open:
                    bad.append("idle + in_use + connecting + checking != open")
                if previous is not None:
                    for total in ("created", "closed", "connect_errors", "pings_failed"):
                        if getattr(s, total) < getattr(previous, total):
                            bad.append(f"total {total} went down")
                if bad and len(self.problems) < 20:
                    self.problems.append(f"{'; '.join(bad)}: {s}")
                previous = s
                time.sleep(self.period)
        except Exception as exc:  # e.g. a missing stats field: fail the test, not the thread
            self.problems.append(f"stats() failed: {exc!r}")

    def check(self) -> None:
        assert not self.problems, "inconsistent stats():\n" + "\n".join(self.problems)
        assert self.samples > 10, "the monitor hardly ran"


@dataclass(slots=True)
class Attempt:
    """One iteration of a load thread."""

    acq_start: float  # before pool.connection() was called
    got_at: float | None = None  # when the pool had lent a connection
    raw: Any = None  # the driver connection lent (a strong reference: ids stay unique)
    q_start: float | None = None
    end: float = 0.0
    pid: int | None = None
    started: int | None = None  # the server's start time, in microseconds
    error: str | None = None  # "TypeName: first line"
    error_type: type[BaseException] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Load:
    """``THREADS`` threads running :data:`PROBE` in a loop through ``pool.connection()``.

    Errors are expected during an outage: each iteration catches its own and records it.
    """

    def __init__(self, pool: Pool, threads: int = THREADS) -> None:
        self.pool = pool
        self.records: list[list[Attempt]] = [[] for _ in range(threads)]
        self.last_ok = [0.0] * threads  # acq_start of each thread's latest success
        self.crashed: list[str] = []
        self._stop = threading.Event()
        self._go = [threading.Event() for _ in range(threads)]
        self._parked = [False] * threads
        self._one_shot = [False] * threads
        for go in self._go:
            go.set()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"outage-load-{i}", daemon=True)
            for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for go in self._go:
            go.set()
        for t in self._threads:
            t.join(15)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"load threads still running: {alive}"

    def _run(self, i: int) -> None:
        records = self.records[i]
        try:
            while not self._stop.is_set():
                if not self._go[i].is_set():
                    self._parked[i] = True
                    self._go[i].wait()
                    self._parked[i] = False
                    continue
                a = Attempt(time.monotonic())
                try:
                    with self.pool.connection() as conn:
                        a.got_at = time.monotonic()
                        a.raw = conn.driver_connection
                        a.q_start = time.monotonic()
                        a.pid, a.started = query(conn, PROBE)[0]
                except Exception as exc:
                    a.error = f"{type(exc).__name__}: {first_line(exc)}"
                    a.error_type = type(exc)
                a.end = time.monotonic()
                if self._one_shot[i]:
                    self._one_shot[i] = False
                    self._go[i].clear()  # before the record is seen: exactly one iteration
                records.append(a)
                if a.ok:
                    self.last_ok[i] = a.acq_start
                    time.sleep(0.002)
                else:
                    time.sleep(0.02)
        except BaseException as exc:
            self.crashed.append(f"thread {i}: {exc!r}")

    def pause(self) -> None:
        """Park every thread between iterations (nothing is out afterwards)."""
        for go in self._go:
            go.clear()
        wait_until(lambda: all(self._parked), timeout=15, what="the load threads to park")

    def resume_one_attempt(self, i: int) -> Attempt:
        """Let thread ``i`` alone run one iteration; return it (the thread parks again)."""
        n = len(self.records[i])
        self._one_shot[i] = True
        self._go[i].set()
        wait_until(lambda: len(self.records[i]) > n, timeout=15, what=f"thread {i}'s attempt")
        wait_until(lambda: self._parked[i], timeout=15, what=f"thread {i} to park")
        return self.records[i][n]

    def resume(self) -> None:
        for go in self._go:
            go.set()

    @property
    def attempts(self) -> list[Attempt]:
        return [a for records in self.records for a in records]

    def wait_all_succeed_since(self, since: float, timeout: float) -> float:
        """Wait until every thread succeeded with an acquire started at or after ``since``;
        return when that was seen. Fails the test with each laggard's last error."""
        deadline = since + timeout
        while min(self.last_ok) < since:
            if time.monotonic() > deadline:
                lagging = [i for i, t in enumerate(self.last_ok) if t < since]
                last = {
                    i: (self.records[i][-1].error if self.records[i] else None) for i in lagging
                }
                pytest.fail(
                    f"{len(lagging)} of {len(self.last_ok)} threads did not succeed within "
                    f"{timeout} s after the server was back; last errors: {last}; "
                    f"stats: {self.pool.stats()}"
                )
            time.sleep(0.01)
        return time.monotonic()

    def check_recovery(
        self,
        *,
        event_start: float,
        event_end: float,
        stale: Callable[[Attempt], bool],
        recovered_at: float,
        expect_break: bool,
    ) -> float:
        """The assertions shared by the restart and the terminate tests; returns the moment
        from which every lent connection had to be a good one.

        ``stale(attempt)``: the successful ``attempt`` ran on an old session (a session of the
        old server, or a killed one). ``expect_break``: a connection in use must have broken
        (connections were in use when the outage hit).
        """
        assert not self.crashed, self.crashed
        attempts = self.attempts
        assert attempts, "no load at all"

        # Errors are confined to the pool's own PoolTimeout (acquire) and the driver's errors
        # (using a connection that died): anything else is a bug in the pool.
        odd = [
            a.error
            for a in attempts
            if not a.ok
            and not (
                (a.got_at is None and a.error_type is PoolTimeout)
                or (
                    a.got_at is not None
                    and a.error_type is not None
                    and issubclass(a.error_type, (psycopg.Error, *_psycopg2_errors()))
                )
            )
        ]
        assert not odd, f"unexpected errors (acquire must only raise PoolTimeout): {odd[:10]}"

        before = [a for a in attempts if a.end < event_start]
        assert before and all(a.ok for a in before), "the load failed before the outage"

        # The outage was seen: a connection in use broke. The pool saw it when that connection
        # came back, which is before the thread recorded the failure.
        broke = [
            a.end for a in attempts if a.got_at is not None and not a.ok and a.end >= event_start
        ]
        assert broke or not expect_break, "no connection broke during the outage"
        boundary = max(event_end, min(broke, default=event_end))

        # Connections first seen before the outage, or proven old by a query: none is lent
        # to an acquire that started once the pool had seen the outage and it was over.
        first_seen: dict[int, float] = {}
        for a in attempts:
            if a.raw is not None and a.got_at is not None:
                key = id(a.raw)
                first_seen[key] = min(first_seen.get(key, a.got_at), a.got_at)
        old = {key for key, t in first_seen.items() if t < event_start}
        old |= {id(a.raw) for a in attempts if a.ok and stale(a)}
        reused = [a for a in attempts if a.acq_start >= boundary and id(a.raw) in old]
        assert not reused, (
            f"{len(reused)} checkouts after the outage got a connection from before it "
            f"(first at +{reused[0].got_at - boundary if reused[0].got_at else 0:.3f} s): "
            f"{[a.error for a in reused[:5]]}"
        )

        # Every connection lent from then on works (nothing dead is lent).
        dead = [
            a for a in attempts if a.acq_start >= boundary and a.got_at is not None and not a.ok
        ]
        assert not dead, (
            f"{len(dead)} connections lent after the outage failed: {[a.error for a in dead[:5]]}"
        )
        # Once every thread recovered, nothing fails any more (no timeouts either).
        late = [a.error for a in attempts if a.acq_start >= recovered_at and not a.ok]
        assert not late, f"failures after recovery: {late[:5]}"
        return boundary


def _psycopg2_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg2
    except ImportError:
        return ()
    return (psycopg2.Error,)


def assert_settled(pool: Pool, server: Server, tag: str) -> None:
    """Nothing out: the gauges agree, the totals add up, and the server sees exactly the
    sessions the pool counts open (none leaked, none forgotten)."""

    def settled() -> bool:
        s = pool.stats()
        return (
            s.in_use == 0
            and s.connecting == 0
            and getattr(s, "checking", 0) == 0
            and s.waiting == 0
            and s.open == s.idle
        )

    wait_until(settled, timeout=10, what=f"the pool to settle: {pool.stats()}")
    s = pool.stats()
    assert 0 < s.open <= MAX_OPEN, s
    assert s.created - s.closed == s.open, f"created - closed != open: {s}"
    wait_until(
        lambda: len(server.pids(tag)) == pool.stats().open,
        timeout=10,
        what=f"server sessions == pool's open ({pool.stats().open})",
    )


def close_and_check_no_session(pool: Pool, server: Server, tag: str) -> None:
    pool.close(timeout=5)
    assert pool.stats().open == 0, pool.stats()
    wait_until(lambda: not server.pids(tag), timeout=10, what="no server session left")


def new_load_pool(url: str | Callable[[], Any], pools: list[Pool], **options: Any) -> Pool:
    settings: dict[str, Any] = {
        "pool_size": POOL_SIZE,
        "max_overflow": MAX_OVERFLOW,
        "timeout": 5.0,
        "name": "outage",
    }
    settings.update(options)
    pool = Pool(url, **settings)
    pools.append(pool)
    return pool


# ---------------------------------------------------------------------- 1. server restart

#: ``busy``: the 16 threads run through the outage (every session in use breaks at once, and
#: callers wait while the server is down). ``quiet``: they are parked while it happens, so the
#: pool holds idle connections that died unseen; one caller goes first (it may be lent a dead
#: one, which shows the pool the outage), then all 16 at once. Under continuous load the dead
#: connections are flushed by use during the outage, so only ``quiet`` tells whether older
#: idle connections are checked before reuse.
LOAD_MODES = pytest.mark.parametrize("quiet", [False, True], ids=["busy", "quiet"])


def _run_outage(load: Load, quiet: bool, outage: Callable[[], None]) -> tuple[float, float]:
    """Run ``outage()`` under the load; return when it started and when it was over."""
    load.wait_all_succeed_since(0.0, 10)
    time.sleep(1.0)
    if quiet:
        load.pause()
    start = time.monotonic()
    outage()
    end = time.monotonic()
    if quiet:
        load.resume_one_attempt(0)
        load.resume()
    return start, end


@LOAD_MODES
def test_restart_under_load(server: Server, flavor: Flavor, pools: list[Pool], quiet: bool) -> None:
    """The headline: 16 threads through a server restart (stop, 1 s down, start)."""
    tag = server.new_tag()
    pool = new_load_pool(server.url(flavor, tag), pools)
    old_start = server.start_time()
    stopped = 0.0

    def restart() -> None:
        nonlocal stopped
        server.cluster.stop()  # fast: every session is terminated
        stopped = time.monotonic()
        time.sleep(1.0)  # down: connection attempts are refused
        server.cluster.start()  # same port, same data

    with StatsMonitor(pool, MAX_OPEN) as monitor, Load(pool) as load:
        stop_begin, back = _run_outage(load, quiet, restart)
        new_start = server.start_time()
        assert new_start != old_start
        recovered = load.wait_all_succeed_since(back, RECOVERY)
        time.sleep(0.5)  # a stretch of steady state after recovery
    monitor.check()

    attempts = load.attempts
    boundary = load.check_recovery(
        event_start=stop_begin,
        event_end=back,
        stale=lambda a: a.started == old_start,
        recovered_at=recovered,
        expect_break=not quiet,
    )
    if not quiet:
        assert boundary == back, "no session broke before the server was back (no outage seen?)"

    # The incarnations: before the stop all ran on the old server; every query started after
    # the old server was gone ran on the new one.
    assert all(a.started == old_start for a in attempts if a.ok and a.end < stop_begin)
    wrong = [
        a
        for a in attempts
        if a.ok and a.q_start is not None and a.q_start >= stopped and a.started != new_start
    ]
    assert not wrong, f"{len(wrong)} queries after the stop did not run on the new server"
    after = [a for a in attempts if a.ok and a.acq_start >= back]
    assert after and all(a.started == new_start for a in after)

    assert monitor.max_seen_open <= MAX_OPEN
    s = pool.stats()
    if not quiet:  # callers waited while the server was down: the pool tried, and failed
        assert s.connect_errors >= 1, s
    assert s.pings_failed >= 0, s
    assert_settled(pool, server, tag)
    close_and_check_no_session(pool, server, tag)


# ---------------------------------------------------------------------- 2. sessions killed


@LOAD_MODES
def test_all_sessions_terminated_under_load(
    server: Server, flavor: Flavor, pools: list[Pool], quiet: bool
) -> None:
    """16 threads while every session of the pool is terminated (pg_terminate_backend)."""
    tag = server.new_tag()
    pool = new_load_pool(server.url(flavor, tag), pools)
    killed: set[int] = set()

    def terminate() -> None:
        killed.update(server.terminate_all(tag))

    with StatsMonitor(pool, MAX_OPEN) as monitor, Load(pool) as load:
        kill_begin, killed_at = _run_outage(load, quiet, terminate)
        recovered = load.wait_all_succeed_since(killed_at, RECOVERY)
        time.sleep(0.5)
    monitor.check()

    attempts = load.attempts
    boundary = load.check_recovery(
        event_start=kill_begin,
        event_end=killed_at,
        stale=lambda a: a.pid in killed,
        recovered_at=recovered,
        expect_break=not quiet,
    )
    # No query that started after the kill ran on a killed session.
    ghosts = [
        a
        for a in attempts
        if a.ok and a.q_start is not None and a.q_start >= killed_at and a.pid in killed
    ]
    assert not ghosts, f"{len(ghosts)} queries ran on terminated sessions"
    assert any(a.ok and a.acq_start >= boundary for a in attempts)

    s = pool.stats()
    assert s.connect_errors == 0, f"the server never refused a connection: {s}"
    assert_settled(pool, server, tag)
    assert not (server.pids(tag) & killed)
    close_and_check_no_session(pool, server, tag)


# ---------------------------------------------------------------------- disconnect handling


def test_disconnect_checks_older_connections(
    server: Server, flavor: Flavor, pools: list[Pool]
) -> None:
    """Deterministically: c1 raises a disconnect error (discarded); then c2, out on loan and
    returned cleanly, is checked on return, and the idle c3, c4 before reuse. None of the
    four dead connections is ever lent again."""
    tag = server.new_tag()
    # A terminated session's error (57P01) would drain the pool (test_health); as a plain
    # disconnect, the others are checked one by one.
    pool = new_load_pool(
        server.url(flavor, tag),
        pools,
        pool_size=4,
        max_overflow=0,
        classify_error=lambda error, raw: "dead",
    )
    conns = [pool.acquire() for _ in range(4)]
    raws = [c.driver_connection for c in conns]
    pids = {query(c, "SELECT pg_backend_pid()")[0][0] for c in conns}
    assert len(pids) == 4
    for c in conns:
        c.commit()  # idle client-side: a clean return needs a check to tell it is dead
    c1, c2, c3, c4 = conns
    c3.close()
    c4.close()
    assert pool.stats().idle == 2

    killed = server.terminate_all(tag)
    assert killed == pids

    with pytest.raises(flavor.operational_error):
        with c1:
            query(c1, "SELECT 1")
    assert pool.stats().closed >= 1, "c1 raised a disconnect error: discarded on return"
    c2.close()  # returned without an error, but older than the disconnect just seen

    def c2_discarded() -> bool:
        s = pool.stats()  # c3 and c4 may be checked (and closed) in the background too
        return s.closed >= 2 and s.open <= 2

    wait_until(c2_discarded, timeout=3, what=f"c2 to be checked on return: {pool.stats()}")

    again = [pool.acquire(timeout=5) for _ in range(4)]
    try:
        for c in again:
            raw = c.driver_connection
            assert not any(raw is old for old in raws), "a dead connection was lent again"
            (pid,) = query(c, "SELECT pg_backend_pid()")[0]
            assert pid not in killed
    finally:
        for c in again:
            c.close()

    s = pool.stats()
    assert s.pings_failed == 3, f"c2 (on return), c3 and c4 (before reuse) fail a check: {s}"
    assert s.connect_errors == 0, s
    assert s.created == 8 and s.closed == 4, s
    assert_settled(pool, server, tag)
    close_and_check_no_session(pool, server, tag)


# ---------------------------------------------------------------------- 3. server down


class CountingConnect:
    """A callable pool target counting the connection attempts (and failures) it makes."""

    def __init__(self, flavor: Flavor, libpq_url: str) -> None:
        self._flavor = flavor
        self._url = libpq_url
        self._lock = threading.Lock()
        self.calls = 0
        self.failures = 0
        self.times: list[float] = []

    def __call__(self) -> Any:
        with self._lock:
            self.calls += 1
            self.times.append(time.monotonic())
        try:
            return self._flavor.connect(self._url)
        except Exception:
            with self._lock:
                self.failures += 1
            raise

    @property
    def successes(self) -> int:
        return self.calls - self.failures


@dataclass
class Waited:
    """What one caller waiting in acquire() saw."""

    start: float = 0.0
    end: float = 0.0
    error: BaseException | None = None
    got_at: float | None = None
    rows: list[Any] = field(default_factory=list)


def _waiters(
    pool: Pool, n: int, timeout: float, hold: float = 0.0
) -> tuple[list[Waited], list[threading.Thread]]:
    """``n`` threads each calling ``pool.acquire(timeout)`` at once (then querying and
    holding the connection ``hold`` seconds); started before returning."""
    results = [Waited() for _ in range(n)]
    barrier = threading.Barrier(n)

    def run(w: Waited) -> None:
        try:
            barrier.wait(10)
            w.start = time.monotonic()
            conn = pool.acquire(timeout=timeout)
            w.got_at = time.monotonic()
            try:
                w.rows = query(conn, "SELECT 1")
                time.sleep(hold)
            finally:
                conn.close()
        except BaseException as exc:
            w.error = exc
        finally:
            w.end = time.monotonic()

    threads = [
        threading.Thread(target=run, args=(w,), name=f"outage-waiter-{i}", daemon=True)
        for i, w in enumerate(results)
    ]
    for t in threads:
        t.start()
    return results, threads


def _join(threads: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"threads still waiting after {timeout} s: {alive}"


def test_database_down_at_acquire(server: Server, flavor: Flavor, pools: list[Pool]) -> None:
    """Down: PoolTimeout after about the timeout, with the cause; few connection attempts
    whatever the number of waiting callers (back-off); back up: waiters are served."""
    tag = server.new_tag()
    connect = CountingConnect(flavor, server.libpq_url(tag))
    server.cluster.stop()
    pool = new_load_pool(connect, pools)  # lazy: builds without connecting

    start = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.acquire(timeout=1.0)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed <= 3.0, f"acquire(timeout=1.0) failed after {elapsed:.2f} s"
    assert_timeout_carries_cause(info.value, flavor, "Connection refused")
    assert connect.calls >= 1

    # 16 callers wait 2 s: the pool tries again every recovery step (one attempt at a time,
    # one per step), not once per caller per loop.
    before = connect.calls
    results, threads = _waiters(pool, THREADS, timeout=2.0)
    _join(threads, 15)
    attempts = connect.calls - before
    window = max(w.end for w in results) - min(w.start for w in results)
    assert window < 5.0
    most = window / (RECOVERY_STEP * 0.6) + 2
    assert attempts <= most, (
        f"{attempts} connection attempts in {window:.1f} s for {THREADS} waiting callers: "
        f"more than one per recovery step ({most:.0f})"
    )
    for w in results:
        assert isinstance(w.error, PoolTimeout), w.error
        waited = w.end - w.start
        assert 1.8 <= waited <= 4.0, f"acquire(timeout=2.0) failed after {waited:.2f} s"
        assert_timeout_carries_cause(w.error, flavor, "Connection refused")
    s = pool.stats()
    assert s.idle == 0 and s.in_use == 0, s
    assert s.connect_errors >= 1, s

    # Back up while 16 callers wait: all are served within seconds.
    results, threads = _waiters(pool, THREADS, timeout=20.0, hold=0.05)
    time.sleep(0.3)
    server.cluster.start()
    up = time.monotonic()
    _join(threads, 30)
    for w in results:
        assert w.error is None, repr(w.error)
        assert w.rows == [(1,)]
        assert w.got_at is not None
        assert w.got_at - up <= BACK_ONLINE, (
            f"a waiting caller was served {w.got_at - up:.1f} s after the server was back"
        )
    # No connection opened per waiter and thrown away (one probe connection is tolerated).
    assert connect.successes <= MAX_OPEN + 1, f"{connect.successes} connections opened"
    wait_until(
        lambda: pool.stats().connect_errors == connect.failures,
        timeout=5,
        what=f"connect_errors == the {connect.failures} failed attempts",
    )
    assert_settled(pool, server, tag)
    close_and_check_no_session(pool, server, tag)


def test_waiting_callers_are_served_within_moments_of_the_servers_return(
    server: Server, flavor: Flavor, pools: list[Pool]
) -> None:
    """While callers wait through an outage, the pool tries again every recovery step
    (whatever its back-off has grown to), one attempt at a time: once the server accepts
    connections again, the waiting callers are served within moments."""
    tag = server.new_tag()
    connect = CountingConnect(flavor, server.libpq_url(tag))
    server.cluster.stop()
    pool = new_load_pool(connect, pools)  # lazy: builds without connecting
    # Grow the back-off first: 8 failed attempts put it at its 5 s ceiling.
    for _ in range(8):
        with pytest.raises(PoolTimeout):
            pool.acquire(timeout=0.7)
    results, threads = _waiters(pool, 8, timeout=30.0, hold=0.01)
    time.sleep(2.0)
    during = [t for t in connect.times if t >= min(w.start for w in results)]
    server.cluster.start()
    up = time.monotonic()
    _join(threads, 30)
    for w in results:
        assert w.error is None, repr(w.error)
    first = min(w.got_at for w in results if w.got_at is not None)
    # Attempts while the callers waited came at most one per step (not one per caller).
    gaps = [later - earlier for earlier, later in itertools.pairwise(during)]
    assert gaps and min(gaps) >= RECOVERY_STEP * 0.6 - 0.02, gaps
    assert max(gaps) <= RECOVERY_STEP + 0.25, f"the pool waited {max(gaps):.2f} s to retry"
    # pg_ctl start returns once the server accepts connections: a generous bound, the figure
    # is RECOVERY_STEP plus one connect (docs/benchmarks.md has the measured ones).
    assert first - up <= 1.0, f"served {first - up:.2f} s after the server was back"
    assert_settled(pool, server, tag)
    close_and_check_no_session(pool, server, tag)


def test_try_acquire_callers_reconnect_without_waiters(
    server: Server, flavor: Flavor, pools: list[Pool]
) -> None:
    """Callers that never wait (``acquire(timeout=0)``, load shedding) must still bring the
    pool back: once the back-off delay has passed, one of them makes the next attempt."""
    tag = server.new_tag()
    pool = new_load_pool(server.url(flavor, tag), pools)
    server.cluster.stop()
    for _ in range(3):
        with pytest.raises(PoolTimeout) as info:
            pool.acquire(timeout=0)
        assert_timeout_carries_cause(info.value, flavor, "Connection refused")
    server.cluster.start()
    up = time.monotonic()
    while True:
        try:
            with pool.connection(timeout=0) as conn:
                assert query(conn, "SELECT 1") == [(1,)]
            break
        except PoolTimeout:
            assert time.monotonic() - up < BACK_ONLINE, "try-acquire callers never reconnect"
            time.sleep(0.05)
    s = pool.stats()
    assert s.waiting == 0 and s.open == s.idle == 1, s
    close_and_check_no_session(pool, server, tag)


# ---------------------------------------------------------------------- 4. open_timeout


def test_open_timeout_and_wait_ready(server: Server, flavor: Flavor, pools: list[Pool]) -> None:
    tag = server.new_tag()
    url = server.url(flavor, tag)

    # Up: both return at once.
    start = time.monotonic()
    pool = Pool(url, pool_size=2, open_timeout=5)
    pools.append(pool)
    assert time.monotonic() - start < 3.0
    start = time.monotonic()
    pool.wait_ready(timeout=5)
    assert time.monotonic() - start < 1.0
    with pool.connection() as conn:
        assert query(conn, "SELECT 1") == [(1,)]
    pool.close()

    server.cluster.stop()

    # Down: the constructor gives up after open_timeout with the cause.
    start = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pools.append(Pool(url, pool_size=2, open_timeout=1))
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed <= 3.0, f"Pool(open_timeout=1) failed after {elapsed:.2f} s"
    assert_timeout_carries_cause(info.value, flavor, "Connection refused")

    # A lazy pool builds anyway; wait_ready() gives up after its timeout with the cause...
    pool = Pool(url, pool_size=2)
    pools.append(pool)
    start = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.wait_ready(timeout=1)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed <= 3.0, f"wait_ready(timeout=1) failed after {elapsed:.2f} s"
    assert_timeout_carries_cause(info.value, flavor, "Connection refused")

    # ...and returns soon after the server is back.
    done: list[float] = []
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            pool.wait_ready(timeout=20)
            done.append(time.monotonic())
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait, name="outage-wait-ready", daemon=True)
    waiter.start()
    time.sleep(0.3)
    assert not done and not errors, "wait_ready() returned while the server was down"
    server.cluster.start()
    up = time.monotonic()
    _join([waiter], 25)
    assert not errors, repr(errors)
    assert done and done[0] - up <= BACK_ONLINE, "wait_ready() was slow to see the server back"
    with pool.connection() as conn:
        assert query(conn, "SELECT 1") == [(1,)]
    close_and_check_no_session(pool, server, tag)


def test_open_timeout_server_error(server: Server, flavor: Flavor, pools: list[Pool]) -> None:
    """The server answers but refuses the session (the cluster trusts every user, so: a
    database that does not exist): a rejection, not an outage. The driver's own error reaches
    the caller at once (issue 17 item 8), from the constructor with ``open_timeout`` and from
    ``acquire``, instead of a ``PoolTimeout`` after retrying until the timeout."""
    missing = f"no_such_db_{uuid.uuid4().hex[:8]}"
    url = server.url(flavor, server.new_tag(), dbname=missing)
    expected = f'database "{missing}" does not exist'

    start = time.monotonic()
    with pytest.raises(flavor.operational_error, match=expected):
        pools.append(Pool(url, pool_size=2, open_timeout=20))
    assert time.monotonic() - start <= 4.0  # a bound far below open_timeout

    pool = Pool(url, pool_size=2)
    pools.append(pool)
    start = time.monotonic()
    with pytest.raises(flavor.operational_error, match=expected):
        pool.acquire(timeout=20)
    assert time.monotonic() - start <= 4.0


def test_failed_open_leaves_nothing_connecting(server: Server, pools: list[Pool]) -> None:
    """A constructor that raised PoolTimeout does not leave a pool retrying in the background
    (even while the exception, and so the half-built pool, is still referenced)."""
    flavor = Flavor("psycopg", "postgresql+psycopg", psycopg)
    connect = CountingConnect(flavor, server.libpq_url(server.new_tag()))
    server.cluster.stop()
    with pytest.raises(PoolTimeout) as info:
        pools.append(Pool(connect, pool_size=2, open_timeout=1))
    assert connect.calls >= 1
    calls = connect.calls
    time.sleep(1.5)
    assert connect.calls == calls, (
        f"{connect.calls - calls} connection attempts after Pool() raised {info.value!r}"
    )
