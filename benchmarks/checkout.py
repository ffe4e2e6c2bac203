#!/usr/bin/env python3
"""Checkout benchmarks: flask-dbpool against SQLAlchemy, psycopg_pool and DBUtils.

Run with ``.venv/bin/python benchmarks/checkout.py`` (``make bench``); ``--help`` lists the
options and docs/benchmarks.md explains every number.

Part (a), single thread: the cost of one checkout + checkin cycle of an idle connection, in
microseconds, next to a floor measured in the same run (a bare ``threading.Lock`` plus a
``collections.deque``). No I/O happens in the cycle of a well-built pool, so this is pure
Python overhead. Each number is the median of ``--reps`` timed loops, run round-robin across
the pools (so drift in CPU speed hits every pool alike), with the garbage collector off.

Part (b), contention: 16 and 64 threads share a pool of 4 connections, each looping
checkout, ``SELECT 1`` (execute + fetch), optionally a 1 ms hold, checkin, for ``--duration``
seconds. Reported: cycles per second, the time spent inside the checkout call (p50, p99,
max), and how evenly the connections were shared (threads that completed no cycle at all,
the fewest and most cycles done by one thread).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shlex
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

from flask_dbpool import Pool
from flask_dbpool.url import redact

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"

#: Part (a): every pool holds this many idle connections (overflow 10 where it exists).
SINGLE_POOL_SIZE = 5
SINGLE_MAX_OVERFLOW = 10
#: Part (b): connections shared by the threads, no overflow anywhere.
CONTENTION_POOL_SIZE = 4
CONTENTION_THREADS = (16, 64)
CONTENTION_HOLDS = (0.0, 0.001)
#: Checkout timeout for part (b): large, so that nobody gives up (errors are still counted).
CONTENTION_TIMEOUT = 60.0

#: flask-dbpool's goals for part (a), as a multiple of the floor.
TARGETS = (
    ("flask-dbpool acquire/release", "acquire/release", 3.0),
    ("flask-dbpool with-connection", "with connection()", 4.0),
)

perf_counter = time.perf_counter

Creator = Callable[[], Any]
Loop = Callable[[int], float]  # runs n cycles, returns the elapsed seconds


# --------------------------------------------------------------------------- the database


@dataclass
class Target:
    """How every pool in this run connects to the same database."""

    url: str
    shown: str  # the URL without its password
    dialect: str
    module: ModuleType
    connect: Creator  # a plain connection, as the driver makes it
    connect_autocommit: Creator  # for part (b): SELECT 1 opens no transaction
    conninfo: str | None  # psycopg 3 conninfo for psycopg_pool; None if not psycopg 3


def _with_dbapi(fn: Creator, module: ModuleType) -> Creator:
    # DBUtils finds the DB-API module (threadsafety, exception classes) through `dbapi`.
    fn.dbapi = module  # type: ignore[attr-defined]
    return fn


def make_target(url: str) -> Target:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise SystemExit(f"--url {redact(url)!r}: expected scheme://...")
    dialect, _, driver = scheme.lower().partition("+")
    shown = redact(url)
    if dialect in ("postgresql", "postgres") and driver in ("", "psycopg"):
        import psycopg

        conninfo = "postgresql://" + rest

        def pg_connect() -> Any:
            return psycopg.connect(conninfo)

        def pg_connect_autocommit() -> Any:
            return psycopg.connect(conninfo, autocommit=True)

        return Target(
            url,
            shown,
            "postgresql",
            psycopg,
            _with_dbapi(pg_connect, psycopg),
            _with_dbapi(pg_connect_autocommit, psycopg),
            conninfo,
        )
    if dialect in ("postgresql", "postgres") and driver == "psycopg2":
        import psycopg2

        dsn = "postgresql://" + rest

        def pg2_connect() -> Any:
            return psycopg2.connect(dsn)

        def pg2_connect_autocommit() -> Any:
            raw = psycopg2.connect(dsn)
            raw.autocommit = True
            return raw

        return Target(
            url,
            shown,
            "postgresql",
            psycopg2,
            _with_dbapi(pg2_connect, psycopg2),
            _with_dbapi(pg2_connect_autocommit, psycopg2),
            None,
        )
    if dialect == "sqlite":
        path = rest.partition("?")[0]
        path = path[1:] if path.startswith("/") else path
        path = path or ":memory:"  # each connection then has its own empty database

        def sqlite_connect() -> Any:
            return sqlite3.connect(path, check_same_thread=False)

        def sqlite_connect_autocommit() -> Any:
            return sqlite3.connect(path, check_same_thread=False, isolation_level=None)

        return Target(
            url,
            shown,
            "sqlite",
            sqlite3,
            _with_dbapi(sqlite_connect, sqlite3),
            _with_dbapi(sqlite_connect_autocommit, sqlite3),
            None,
        )
    raise SystemExit(
        f"--url {shown!r}: this benchmark knows postgresql[+psycopg|+psycopg2]:// and sqlite://"
    )


def server_version(target: Target) -> str:
    raw = target.connect()
    try:
        cur = raw.cursor()
        if target.dialect == "sqlite":
            cur.execute("SELECT sqlite_version()")
            return f"SQLite {cur.fetchone()[0]}"
        cur.execute("SHOW server_version")
        return f"PostgreSQL {cur.fetchone()[0]}"
    finally:
        raw.close()


# --------------------------------------------------------------------------- the pools


@dataclass
class PoolKind:
    """One pool implementation, as parts (a) and (b) drive it."""

    name: str
    available: Callable[[Target], str | None]  # None if usable, else why it is skipped
    # (target, pool_size, max_overflow, timeout, autocommit) -> (pool, checkout, checkin, close)
    build: Callable[[Target, int, int, float, bool], tuple[Any, Creator, Any, Callable[[], None]]]


def _importable(module: str) -> str | None:
    try:
        __import__(module)
    except ImportError as exc:
        return f"not installed ({exc})"
    return None


def build_dbpool(target: Target, size: int, overflow: int, timeout: float, autocommit: bool):
    # Part (a) uses the URL, as an application would; part (b) needs autocommit connections,
    # so it passes the same factory as the other pools (the driver is detected once per
    # connection, at connect time: the cycle is the same).
    source: Any = target.connect_autocommit if autocommit else target.url
    pool = Pool(source, pool_size=size, max_overflow=overflow, timeout=timeout, name="bench")
    pool.warm_up()
    return pool, pool.acquire, pool.release, pool.close


def build_sqlalchemy(target: Target, size: int, overflow: int, timeout: float, autocommit: bool):
    from sqlalchemy.pool import QueuePool

    creator = target.connect_autocommit if autocommit else target.connect
    # reset_on_return='rollback' is SQLAlchemy's default: checkin calls the driver's rollback().
    pool = QueuePool(creator, pool_size=size, max_overflow=overflow, timeout=timeout)
    _prefill(pool.connect, lambda c: c.close(), size)
    return pool, pool.connect, _close_conn, pool.dispose


def build_sqlalchemy_noreset(
    target: Target, size: int, overflow: int, timeout: float, autocommit: bool
):
    from sqlalchemy.pool import QueuePool

    creator = target.connect_autocommit if autocommit else target.connect
    pool = QueuePool(
        creator, pool_size=size, max_overflow=overflow, timeout=timeout, reset_on_return=None
    )
    _prefill(pool.connect, lambda c: c.close(), size)
    return pool, pool.connect, _close_conn, pool.dispose


def build_psycopg_pool(target: Target, size: int, overflow: int, timeout: float, autocommit: bool):
    from psycopg_pool import ConnectionPool

    kwargs = {"autocommit": True} if autocommit else None
    # check=None (no check on checkout) is psycopg_pool's default; workers are threads.
    pool = ConnectionPool(
        target.conninfo or "",
        kwargs=kwargs,
        min_size=size,
        max_size=size + overflow,
        timeout=timeout,
        open=True,
        name="bench",
    )
    pool.wait(timeout=30.0)

    def close() -> None:
        pool.close(timeout=10.0)

    return pool, pool.getconn, pool.putconn, close


def build_dbutils(target: Target, size: int, overflow: int, timeout: float, autocommit: bool):
    from dbutils.pooled_db import PooledDB

    creator = target.connect_autocommit if autocommit else target.connect
    # reset=True (default): rollback() on every checkin. ping=0: no liveness check on
    # checkout (psycopg and sqlite3 have no ping(), so the default ping=1 does nothing).
    # blocking=True: wait at maxconnections instead of raising. No checkout timeout exists.
    pool = PooledDB(
        creator,
        mincached=size,
        maxcached=size,
        maxconnections=size + overflow,
        blocking=True,
        ping=0,
    )
    return pool, pool.connection, _close_conn, pool.close


def _close_conn(conn: Any) -> None:
    conn.close()


def _prefill(checkout: Creator, checkin: Callable[[Any], None], n: int) -> None:
    conns = [checkout() for _ in range(n)]
    for conn in conns:
        checkin(conn)


def _postgres_psycopg3(target: Target) -> str | None:
    if target.conninfo is None:
        return "needs a postgresql:// URL with psycopg 3"
    return _importable("psycopg_pool")


POOLS = (
    PoolKind("flask-dbpool Pool", lambda t: None, build_dbpool),
    PoolKind("SQLAlchemy QueuePool", lambda t: _importable("sqlalchemy"), build_sqlalchemy),
    PoolKind("psycopg_pool ConnectionPool", _postgres_psycopg3, build_psycopg_pool),
    PoolKind("DBUtils PooledDB", lambda t: _importable("dbutils"), build_dbutils),
)


# --------------------------------------------------------------------------- part (a)


def floor_loop(n: int) -> float:
    lock = threading.Lock()
    dq = deque(object() for _ in range(SINGLE_POOL_SIZE))
    t0 = perf_counter()
    for _ in range(n):
        with lock:
            c = dq.pop()
        with lock:
            dq.append(c)
    return perf_counter() - t0


def floor_explicit_loop(n: int) -> float:
    """The floor with ``lock.acquire()``/``release()`` calls instead of ``with``."""
    lock = threading.Lock()
    dq = deque(object() for _ in range(SINGLE_POOL_SIZE))
    acquire, release = lock.acquire, lock.release
    t0 = perf_counter()
    for _ in range(n):
        acquire()
        try:
            c = dq.pop()
        finally:
            release()
        acquire()
        try:
            dq.append(c)
        finally:
            release()
    return perf_counter() - t0


def checkout_close_loop(checkout: Creator) -> Loop:
    """``c = checkout(); c.close()`` (SQLAlchemy, DBUtils, flask-dbpool's close())."""

    def loop(n: int) -> float:
        get = checkout
        t0 = perf_counter()
        for _ in range(n):
            c = get()
            c.close()
        return perf_counter() - t0

    return loop


def dbpool_loops(pool: Any) -> dict[str, Loop]:
    def acquire_release(n: int) -> float:
        p = pool
        t0 = perf_counter()
        for _ in range(n):
            c = p.acquire()
            p.release(c)
        return perf_counter() - t0

    def with_connection(n: int) -> float:
        p = pool
        t0 = perf_counter()
        for _ in range(n):
            with p.connection() as c:  # noqa: F841 -- the form applications write
                pass
        return perf_counter() - t0

    def acquire_close(n: int) -> float:
        p = pool
        t0 = perf_counter()
        for _ in range(n):
            c = p.acquire()
            c.close()
        return perf_counter() - t0

    return {
        "c = pool.acquire(); pool.release(c)": acquire_release,
        "with pool.connection() as c: pass": with_connection,
        "c = pool.acquire(); c.close()": acquire_close,
    }


def psycopg_pool_loops(pool: Any) -> dict[str, Loop]:
    def get_put(n: int) -> float:
        p = pool
        t0 = perf_counter()
        for _ in range(n):
            c = p.getconn()
            p.putconn(c)
        return perf_counter() - t0

    def with_connection(n: int) -> float:
        p = pool
        t0 = perf_counter()
        for _ in range(n):
            with p.connection() as c:  # noqa: F841
                pass
        return perf_counter() - t0

    return {
        "c = p.getconn(); p.putconn(c)": get_put,
        "with p.connection() as c: pass": with_connection,
    }


@dataclass
class Case:
    pool: str
    cycle: str
    loop: Loop
    key: str = ""  # names the rows the targets refer to
    n: int = 0
    samples: list[float] = field(default_factory=list)  # seconds per cycle, one per rep


def calibrate(loop: Loop, seconds: float) -> int:
    """Cycles per timed loop so that one loop takes about ``seconds`` (after a warm-up)."""
    loop(2000)  # warm-up: specialise the bytecode, fill caches
    n = 2000
    while True:
        elapsed = loop(n)
        if elapsed >= seconds / 4 or n >= 50_000_000:
            return max(1000, int(n * seconds / max(elapsed, 1e-9)))
        n *= 4


def time_cases(cases: list[Case], reps: int, seconds: float) -> None:
    for case in cases:
        case.n = calibrate(case.loop, seconds)
    for _ in range(reps):
        for case in cases:  # round-robin: drift affects every case alike
            gc.collect()
            gc.disable()
            try:
                elapsed = case.loop(case.n)
            finally:
                gc.enable()
            case.samples.append(elapsed / case.n)


def single_thread(target: Target, args: argparse.Namespace, stack: ExitStack) -> None:
    print("## (a) Single thread: one checkout + checkin of an idle connection\n")
    size, overflow = SINGLE_POOL_SIZE, SINGLE_MAX_OVERFLOW
    cases = [
        Case("floor: threading.Lock + deque", "with lock: pop / with lock: append", floor_loop),
        Case(
            "(info) floor with explicit lock calls",
            "acquire(); try: pop finally: release() (x2)",
            floor_explicit_loop,
        ),
    ]
    skipped: list[str] = []

    pool, *_rest, close = build_dbpool(target, size, overflow, 30.0, False)
    stack.callback(close)
    loops = dbpool_loops(pool)
    keys = ("acquire/release", "with connection()", "")
    for (cycle, loop), key in zip(loops.items(), keys, strict=True):
        cases.append(Case("flask-dbpool Pool", cycle, loop, key))
    # The same pool type with metrics on (what the Prometheus/OTel exporters turn on).
    tracked, *_rest, close = build_dbpool(target, size, overflow, 30.0, False)
    stack.callback(close)
    tracked.track_use_time()
    cycle, loop = next(iter(dbpool_loops(tracked).items()))
    cases.append(Case("flask-dbpool Pool, use time tracked (metrics on)", cycle, loop, "metrics"))

    if (why := _importable("sqlalchemy")) is None:
        pool, checkout, _checkin, close = build_sqlalchemy(target, size, overflow, 30.0, False)
        stack.callback(close)
        cases.append(
            Case(
                "SQLAlchemy QueuePool (reset_on_return='rollback', default)",
                "c = p.connect(); c.close()",
                checkout_close_loop(checkout),
            )
        )
        pool, checkout, _checkin, close = build_sqlalchemy_noreset(
            target, size, overflow, 30.0, False
        )
        stack.callback(close)
        cases.append(
            Case(
                "SQLAlchemy QueuePool (reset_on_return=None)",
                "c = p.connect(); c.close()",
                checkout_close_loop(checkout),
            )
        )
    else:
        skipped.append(f"SQLAlchemy: {why}")

    if (why := _postgres_psycopg3(target)) is None:
        pool, *_rest, close = build_psycopg_pool(target, size, overflow, 30.0, False)
        stack.callback(close)
        for cycle, loop in psycopg_pool_loops(pool).items():
            cases.append(Case("psycopg_pool ConnectionPool", cycle, loop))
    else:
        skipped.append(f"psycopg_pool: {why}")

    if (why := _importable("dbutils")) is None:
        pool, checkout, _checkin, close = build_dbutils(target, size, overflow, 30.0, False)
        stack.callback(close)
        cases.append(
            Case("DBUtils PooledDB", "c = p.connection(); c.close()", checkout_close_loop(checkout))
        )
    else:
        skipped.append(f"DBUtils: {why}")

    time_cases(cases, args.reps, args.loop_seconds)

    floor = statistics.median(cases[0].samples)
    rows = []
    for case in cases:
        med = statistics.median(case.samples)
        rows.append(
            [
                case.pool,
                f"`{case.cycle}`",
                f"{med * 1e6:.3f}",
                f"{min(case.samples) * 1e6:.3f}-{max(case.samples) * 1e6:.3f}",
                f"{med / floor:.1f}x",
            ]
        )
    print(
        markdown_table(
            ["pool", "cycle", "µs/cycle (median)", "min-max", "x floor"],
            rows,
            "llrrr",
        )
    )
    n_info = ", ".join(f"{c.n:,}" for c in cases)
    print(
        f"\nmedian of {args.reps} timed loops per row, gc disabled while timing; "
        f"cycles per loop: {n_info}"
    )
    for why in skipped:
        print(f"skipped {why}")

    print("\nflask-dbpool targets (reported, not asserted):")
    for label, key, limit in TARGETS:
        case = next(c for c in cases if c.key == key)
        ratio = statistics.median(case.samples) / floor
        verdict = "met" if ratio <= limit else "NOT met"
        print(f"- {label}: {ratio:.1f}x floor (target ≤ {limit:g}x): {verdict}")
    plain = statistics.median(next(c for c in cases if c.key == "acquire/release").samples)
    metered = statistics.median(next(c for c in cases if c.key == "metrics").samples)
    extra = metered / plain - 1
    verdict = "met" if extra < 0.15 else "NOT met"
    print(
        f"- metrics cost (use time tracked vs plain acquire/release): +{extra:.0%} "
        f"(+{(metered - plain) * 1e6:.3f} µs; target < 15%): {verdict}"
    )
    print()


# --------------------------------------------------------------------------- part (b)


@dataclass
class ThreadResult:
    cycles: int = 0  # cycles whose checkin finished before the deadline
    errors: int = 0
    waits: list[float] = field(default_factory=list)  # seconds inside each checkout call


@dataclass
class Clock:
    start: float = 0.0
    deadline: float = float("inf")


def _worker(
    checkout: Creator,
    checkin: Callable[[Any], None],
    hold: float,
    barrier: threading.Barrier,
    clock: Clock,
    result: ThreadResult,
) -> None:
    now = perf_counter
    sleep = time.sleep
    record = result.waits.append  # per-thread list: measuring takes no shared lock
    cycles = errors = 0
    try:
        barrier.wait(timeout=60.0)
        deadline = clock.deadline
        while True:
            t0 = now()
            if t0 >= deadline:
                break
            try:
                conn = checkout()
            except Exception:
                errors += 1
                continue
            record(now() - t0)
            try:
                cur = conn.cursor()
                cur.execute("SELECT 1")
                cur.fetchall()
                cur.close()
                if hold:
                    sleep(hold)
            except Exception:
                errors += 1
            finally:
                checkin(conn)
            if now() <= deadline:
                cycles += 1
    finally:
        result.cycles = cycles
        result.errors = errors


@dataclass
class CellResult:
    cycles_per_s: float
    p50: float
    p99: float
    max: float
    starved: int
    min_cycles: int
    max_cycles: int
    errors: int
    hung: int


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (``q`` in 0..1)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def run_cell(kind: PoolKind, target: Target, threads: int, hold: float, duration: float):
    _pool, checkout, checkin, close = kind.build(
        target, CONTENTION_POOL_SIZE, 0, CONTENTION_TIMEOUT, True
    )
    clock = Clock()

    def start_clock() -> None:  # run by the last thread to reach the barrier
        clock.start = perf_counter()
        clock.deadline = clock.start + duration

    barrier = threading.Barrier(threads, action=start_clock)
    results = [ThreadResult() for _ in range(threads)]
    workers = [
        threading.Thread(
            target=_worker,
            args=(checkout, checkin, hold, barrier, clock, results[i]),
            name=f"bench-{i}",
            daemon=True,  # a hung pool must not keep the process alive
        )
        for i in range(threads)
    ]
    try:
        for t in workers:
            t.start()
        give_up = time.monotonic() + duration + 30.0
        for t in workers:
            t.join(max(0.0, give_up - time.monotonic()))
    finally:
        hung = sum(t.is_alive() for t in workers)
        if not hung:
            close()
    waits = sorted(w for r in results for w in r.waits)
    cycles = [r.cycles for r in results]
    return CellResult(
        cycles_per_s=sum(cycles) / duration,
        p50=percentile(waits, 0.50),
        p99=percentile(waits, 0.99),
        max=waits[-1] if waits else float("nan"),
        starved=sum(c == 0 for c in cycles),
        min_cycles=min(cycles),
        max_cycles=max(cycles),
        errors=sum(r.errors for r in results),
        hung=hung,
    )


def contention(target: Target, args: argparse.Namespace) -> None:
    print(
        f"## (b) Contention: pool of {CONTENTION_POOL_SIZE} connections, no overflow; each "
        "thread loops checkout, SELECT 1, [hold], checkin\n"
    )
    kinds = []
    for kind in POOLS:
        why = kind.available(target)
        if why is None:
            kinds.append(kind)
        else:
            print(f"skipped {kind.name}: {why}")
    rows = []
    any_hung = False
    for hold in CONTENTION_HOLDS:
        for threads in CONTENTION_THREADS:
            for kind in kinds:
                reps = [
                    run_cell(kind, target, threads, hold, args.duration)
                    for _ in range(args.repeats)
                ]

                def med(attr: str, reps: list[CellResult] = reps) -> float:
                    return statistics.median(getattr(r, attr) for r in reps)

                hung = max(r.hung for r in reps)
                any_hung = any_hung or bool(hung)
                rows.append(
                    [
                        kind.name,
                        str(threads),
                        f"{hold * 1000:g} ms",
                        f"{med('cycles_per_s'):,.0f}",
                        f"{med('p50') * 1000:.3f}",
                        f"{med('p99') * 1000:.2f}",
                        f"{med('max') * 1000:.1f}",
                        f"{med('starved'):g}",
                        f"{med('min_cycles'):g}",
                        f"{med('max_cycles'):g}",
                        f"{med('errors'):g}" + (f" ({hung} hung)" if hung else ""),
                    ]
                )
                print(
                    f"  done: {kind.name}, {threads} threads, hold {hold * 1000:g} ms",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        markdown_table(
            [
                "pool",
                "threads",
                "hold",
                "cycles/s",
                "wait p50 ms",
                "wait p99 ms",
                "wait max ms",
                "starved",
                "min cycles/thr",
                "max cycles/thr",
                "errors",
            ],
            rows,
            "lrrrrrrrrrr",
        )
    )
    what = "one run" if args.repeats == 1 else f"median of {args.repeats} runs"
    print(
        f"\n{args.duration:g} s per cell, {what}; connections in autocommit mode (SELECT 1 "
        f"opens no transaction, checkin needs no rollback); checkout timeout "
        f"{CONTENTION_TIMEOUT:g} s (DBUtils: none). wait = time inside the checkout call, over "
        "all checkouts of all threads; starved = threads that completed no cycle."
    )
    if any_hung:
        print("WARNING: some threads did not finish within duration + 30 s (pool not closed)")
    print()


# --------------------------------------------------------------------------- output


def markdown_table(headers: list[str], rows: list[list[str]], align: str) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for cell, width, a in zip(cells, widths, align, strict=True):
            out.append(cell.ljust(width) if a == "l" else cell.rjust(width))
        return "| " + " | ".join(out) + " |"

    rule = [
        "-" * (w - 1) + ":" if a == "r" else "-" * w for w, a in zip(widths, align, strict=True)
    ]
    return "\n".join([line(headers), "| " + " | ".join(rule) + " |", *map(line, rows)])


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def source_revision() -> str:
    """The git commit of the flask-dbpool being measured, ``+changes`` if src/ differs."""
    import flask_dbpool

    src = os.path.dirname(os.path.abspath(flask_dbpool.__file__))
    try:
        commit = subprocess.run(
            ["git", "-C", src, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", src, "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return src
    return f"{src} at git {commit}" + (" + uncommitted changes" if dirty else "")


def header(target: Target, args: argparse.Namespace) -> None:
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    packages = ", ".join(
        f"{name} {version_of(dist)}"
        for name, dist in (
            ("flask-dbpool", "flask-dbpool"),
            ("SQLAlchemy", "SQLAlchemy"),
            ("psycopg", "psycopg"),
            ("psycopg-pool", "psycopg-pool"),
            ("DBUtils", "DBUtils"),
        )
    )
    print("# flask-dbpool checkout benchmark\n")
    print(f"- command: `{command}`")
    print(f"- date: {now.isoformat()}")
    print(
        f"- python: {platform.python_version()} ({platform.python_implementation()}), "
        f"switch interval {sys.getswitchinterval() * 1000:g} ms"
    )
    print(f"- platform: {platform.platform()}, {os.cpu_count()} CPUs")
    print(f"- packages: {packages}")
    print(f"- flask-dbpool source: {source_revision()}")
    print(f"- database: {target.shown} ({server_version(target)}, driver {target.module.__name__})")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time checkout/checkin of flask-dbpool against other pools.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="database URL (postgresql or sqlite)")
    parser.add_argument("--quick", action="store_true", help="short run (about 20 s)")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per contention cell (3; quick 1)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per contention cell")
    parser.add_argument("--reps", type=int, default=7, help="timed loops per single-thread row")
    parser.add_argument(
        "--loop-seconds",
        type=float,
        default=None,
        help="target length of one single-thread timed loop (0.1; quick 0.02)",
    )
    parser.add_argument("--skip-contention", action="store_true", help="only part (a)")
    parser.add_argument("--skip-single-thread", action="store_true", help="only part (b)")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 1.0 if args.quick else 3.0
    if args.loop_seconds is None:
        args.loop_seconds = 0.02 if args.quick else 0.1
    if args.duration <= 0 or args.repeats < 1 or args.reps < 1 or args.loop_seconds <= 0:
        parser.error("--duration and --loop-seconds must be > 0, --repeats and --reps >= 1")

    target = make_target(args.url)
    try:
        header(target, args)
    except Exception as exc:
        print(f"cannot connect to {target.shown}: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    if not args.skip_single_thread:
        with ExitStack() as stack:  # closes every pool of part (a), even on error
            single_thread(target, args, stack)
    if not args.skip_contention:
        contention(target, args)
    print(f"total run time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
