#!/usr/bin/env python3
"""Where flask-dbpool's single-thread checkout cycle spends its time.

Run with ``.venv/bin/python benchmarks/breakdown.py [--url URL] [--quick]``. It times, with
the same method as ``checkout.py`` part (a) (median of ``--reps`` loops, gc off), the pieces
of ``Pool.acquire`` + ``Pool.release``: the lock, the handle (``PooledConnection``) creation,
the driver's transaction-state read, the ownership check, and a copy of both fast paths
inlined into the loop (no method calls), then the same copy with one piece removed at a
time. It also counts the Python-level function calls one cycle makes.

This script reads flask-dbpool internals (``Pool._lock``, ``proxy.set_entry`` ...): it
measures the code as it is today and may need updating when the pool changes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from checkout import DEFAULT_URL, Case, floor_loop, markdown_table, time_cases
from flask_dbpool import Pool, PooledConnection
from flask_dbpool.drivers import BROKEN, IDLE, IN_TRANSACTION
from flask_dbpool.proxy import set_entry

perf_counter = time.perf_counter
new_proxy = object.__new__


def loops_for(pool: Any) -> list[tuple[str, Callable[[int], float]]]:
    entry = pool._state.idle[-1]
    raw = entry.raw

    def empty(n: int) -> float:
        t0 = perf_counter()
        for _ in range(n):
            pass
        return perf_counter() - t0

    def lock_with_twice(n: int) -> float:
        lock = threading.Lock()
        t0 = perf_counter()
        for _ in range(n):
            with lock:
                pass
            with lock:
                pass
        return perf_counter() - t0

    def lock_calls_twice(n: int) -> float:
        lock = threading.Lock()
        t0 = perf_counter()
        for _ in range(n):
            lock.acquire()
            try:
                pass
            finally:
                lock.release()
            lock.acquire()
            try:
                pass
            finally:
                lock.release()
        return perf_counter() - t0

    def deque_only(n: int) -> float:
        dq = deque([1, 2, 3, 4, 5])
        t0 = perf_counter()
        for _ in range(n):
            c = dq.pop()
            dq.append(c)
        return perf_counter() - t0

    def make_handle(n: int) -> float:
        e = entry
        t0 = perf_counter()
        for _ in range(n):
            c = new_proxy(PooledConnection)
            set_entry(c, e)
        return perf_counter() - t0

    def state_via_entry(n: int) -> float:
        e = entry
        t0 = perf_counter()
        for _ in range(n):
            e.tx_state(e.raw) == IDLE  # noqa: B015
        return perf_counter() - t0

    # A candidate: one call, libpq status (IDLE, ACTIVE, INTRANS, INERROR, UNKNOWN) by index.
    states = (IDLE, BROKEN, IN_TRANSACTION, IN_TRANSACTION, BROKEN)

    def one_call_state(raw: Any) -> int:
        return states[raw.pgconn.transaction_status]

    def state_one_call(n: int) -> float:
        e, read = entry, one_call_state
        t0 = perf_counter()
        for _ in range(n):
            read(e.raw) == IDLE  # noqa: B015
        return perf_counter() - t0

    def state_direct(n: int) -> float:
        r = raw
        t0 = perf_counter()
        for _ in range(n):
            r.pgconn.transaction_status == 0  # noqa: B015
        return perf_counter() - t0

    handle = new_proxy(PooledConnection)
    set_entry(handle, entry)

    def ownership_check(n: int) -> float:
        p, c = pool, handle
        t0 = perf_counter()
        for _ in range(n):
            if c.__class__ is not PooledConnection:
                raise AssertionError
            e = c._entry
            if e is None or e.pool is not p:
                raise AssertionError
        return perf_counter() - t0

    def holder_stamps(n: int) -> float:
        e, now, ident = entry, time.monotonic, threading.get_ident
        t0 = perf_counter()
        for _ in range(n):
            e.lent_at = now()
            e.holder = ident()
        return perf_counter() - t0

    def inlined(
        *,
        handle_per_cycle: bool = True,
        state_call: bool = True,
        counter: bool = True,
        stamps: bool = True,
    ) -> Callable[[int], float]:
        # Pool.acquire + Pool.release fast paths (as of this commit) copied into the loop.
        shared = new_proxy(PooledConnection)  # its own: release empties it

        def loop(n: int) -> float:
            p, now, ident = pool, time.monotonic, threading.get_ident
            t0 = perf_counter()
            for _ in range(n):
                # acquire(timeout=None)
                if p._check_on_acquire:  # pre-ping, hooks, leak tracking: not here
                    raise AssertionError
                lock = p._lock
                lock.acquire()
                try:
                    if p._idle:
                        e = p._take_idle()
                        if counter:
                            p._acquired += 1
                        conn = new_proxy(PooledConnection) if handle_per_cycle else shared
                        set_entry(conn, e)
                        if stamps:  # who holds it since when (PoolTimeout, leaks)
                            e.lent_at = now()
                            e.holder = ident()
                finally:
                    lock.release()
                # release(conn)
                if conn.__class__ is not PooledConnection:
                    raise AssertionError
                e = conn._entry
                if state_call:
                    idle = e.tx_state(e.raw) == IDLE
                else:
                    idle = e.raw.pgconn.transaction_status == 0
                if e is not None and e.pool is p and idle:
                    lock = p._lock
                    lock.acquire()
                    try:
                        if conn._entry is e:
                            set_entry(conn, None)
                            if p._track_use:  # use-time histogram: off here
                                raise AssertionError
                            if p._waiters:
                                raise AssertionError
                            if len(p._idle) < p._keep:
                                p._idle.append(e)
                    finally:
                        lock.release()
            return perf_counter() - t0

        return loop

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
            with p.connection() as c:  # noqa: F841
                pass
        return perf_counter() - t0

    def acquire_close(n: int) -> float:
        p = pool
        t0 = perf_counter()
        for _ in range(n):
            c = p.acquire()
            c.close()
        return perf_counter() - t0

    return [
        ("empty loop (`for _ in range(n): pass`)", empty),
        ("floor: lock + deque (as in checkout.py)", floor_loop),
        ("`with lock: pass` twice", lock_with_twice),
        ("`lock.acquire(); try: pass; finally: lock.release()` twice", lock_calls_twice),
        ("deque pop + append", deque_only),
        ("new handle: `object.__new__(PooledConnection)` + slot set", make_handle),
        ("`entry.tx_state(entry.raw) == IDLE` (driver staticmethod)", state_via_entry),
        ("candidate: one-call reader `states[raw.pgconn.transaction_status]`", state_one_call),
        ("`raw.pgconn.transaction_status == 0` (direct)", state_direct),
        ("release checks (`__class__`, `_entry`, `entry.pool`)", ownership_check),
        ("holder stamps: `entry.lent_at = monotonic(); entry.holder = get_ident()`", holder_stamps),
        ("inlined acquire+release fast paths (no calls)", inlined()),
        ("  inlined, without the holder stamps", inlined(stamps=False)),
        ("  inlined, state read directly (no driver call)", inlined(state_call=False)),
        ("  inlined, handle reused (no new object)", inlined(handle_per_cycle=False)),
        ("  inlined, no `_acquired` counter", inlined(counter=False)),
        (
            "  inlined, all four removed",
            inlined(handle_per_cycle=False, state_call=False, counter=False, stamps=False),
        ),
        ("`c = pool.acquire(); pool.release(c)`", acquire_release),
        ("`with pool.connection() as c: pass`", with_connection),
        ("`c = pool.acquire(); c.close()`", acquire_close),
    ]


def count_calls(body: Callable[[], None], cycles: int = 1000) -> dict[str, float]:
    """Python-level calls (and C calls) per cycle of ``body``, by function name."""
    counts: dict[str, int] = {}

    def profiler(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            key = f"{code.co_name} ({code.co_filename.rsplit('/', 1)[-1]})"
        elif event == "c_call":
            key = f"[C] {getattr(arg, '__qualname__', arg)}"
        else:
            return
        counts[key] = counts.get(key, 0) + 1

    sys.setprofile(profiler)
    try:
        for _ in range(cycles):
            body()
    finally:
        sys.setprofile(None)
    for key in [k for k in counts if "(breakdown.py)" in k or "setprofile" in k]:
        del counts[key]
    return {k: v / cycles for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    seconds = 0.02 if args.quick else 0.1

    with Pool(args.url, pool_size=5, max_overflow=10, name="breakdown") as pool:
        pool.warm_up()
        with pool.connection() as probe:
            is_psycopg3 = hasattr(probe.driver_connection, "pgconn")
        if not is_psycopg3:
            print("breakdown.py needs a psycopg 3 (postgresql://) URL", file=sys.stderr)
            return 2

        cases = [Case("", name, loop) for name, loop in loops_for(pool)]
        time_cases(cases, args.reps, seconds)
        floor = statistics.median(cases[1].samples)
        rows = [
            [
                c.cycle,
                f"{statistics.median(c.samples) * 1e6:.3f}",
                f"{statistics.median(c.samples) / floor:.2f}x",
            ]
            for c in cases
        ]
        print(f"## flask-dbpool cycle breakdown (median of {args.reps}, gc off)\n")
        print(markdown_table(["piece (per cycle)", "µs", "x floor"], rows, "lrr"))

        def acquire_release() -> None:
            c = pool.acquire()
            pool.release(c)

        def with_connection() -> None:
            with pool.connection():
                pass

        for title, body in (
            ("acquire/release", acquire_release),
            ("with connection()", with_connection),
        ):
            calls = count_calls(body)
            py = sum(v for k, v in calls.items() if not k.startswith("[C]"))
            print(f"\ncalls per `{title}` cycle ({py:g} Python-level):")
            for name, per in calls.items():
                print(f"- {per:g} x {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
