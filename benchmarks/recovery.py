#!/usr/bin/env python3
"""How soon callers waiting through a PostgreSQL outage are served once it is back.

    .venv/bin/python benchmarks/recovery.py [--rounds 3] [--down 3] [--threads 8]

Starts a throwaway PostgreSQL cluster of its own (tests/pgcluster.py; never the shared
server), then for each pool in turn and each round: ``--threads`` threads loop on checkout,
``SELECT 1``, return (timeout 30 s); the server is stopped (fast: every session terminated),
left down ``--down`` seconds, and started again. A side thread polls the server with a plain
connect every 5 ms to find the moment it accepts connections again. Reported per pool:

* recovery: from that moment to the first query served through the pool (median, max);
* connection attempts the pool made while the server was down, per second of outage;
* failed checkouts (callers that gave up or got an error) per outage.

Pools: flask-dbpool's ``Pool`` (pool_size=4) and psycopg_pool's ``ConnectionPool``
(min_size = max_size = 4, ``check=ConnectionPool.check_connection`` so that it too discards
the dead connections when lending them), both through psycopg 3.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from chaos.harness import accepting_after
from flask_dbpool import Pool
from pgcluster import ThrowawayCluster


class Counter:
    """Connection attempts, with their times."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()

    def add(self) -> None:
        with self.lock:
            self.times.append(time.monotonic())


def dbpool_factory(url: str, counter: Counter) -> tuple[Callable[[], Any], Callable[[], None]]:
    def connect() -> Any:
        counter.add()
        return psycopg.connect(url, connect_timeout=5)

    pool = Pool(connect, pool_size=4, max_overflow=0, timeout=30, name="flask-dbpool")

    def use() -> None:
        with pool.connection() as conn:
            conn.execute("SELECT 1").fetchone()

    return use, pool.close


def psycopg_pool_factory(
    url: str, counter: Counter
) -> tuple[Callable[[], Any], Callable[[], None]]:
    from psycopg_pool import ConnectionPool

    class Counted(psycopg.Connection):  # type: ignore[type-arg]
        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            counter.add()
            return super().connect(*args, **kwargs)

    pool = ConnectionPool(
        url,
        min_size=4,
        max_size=4,
        timeout=30,
        connection_class=Counted,
        check=ConnectionPool.check_connection,
        kwargs={"connect_timeout": 5},
        open=True,
    )
    pool.wait(10)

    def use() -> None:
        with pool.connection() as conn:
            conn.execute("SELECT 1").fetchone()

    return use, pool.close


def one_outage(
    cluster: ThrowawayCluster, factory: Any, threads: int, down: float
) -> tuple[float, float, int]:
    """(recovery s, attempts per second down, failed checkouts) for one outage."""
    counter = Counter()
    use, close = factory(cluster.url, counter)
    stop = threading.Event()
    served: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def loop() -> None:
        while not stop.is_set():
            try:
                use()
            except Exception:
                with lock:
                    failures[0] += 1
                time.sleep(0.01)
                continue
            with lock:
                served.append(time.monotonic())

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.0)
        failures[0] = 0
        cluster.stop()
        stopped = time.monotonic()
        time.sleep(down)
        back = accepting_after(cluster, cluster.start)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                after = [t for t in served if t >= back]
            if after:
                break
            time.sleep(0.005)
        recovery = min(after) - back
        attempts = [t for t in counter.times if stopped <= t < back]
        time.sleep(0.5)
        return recovery, len(attempts) / (back - stopped), failures[0]
    finally:
        stop.set()
        for worker in workers:
            worker.join(35)
        close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--down", type=float, default=3.0, help="seconds the server is down")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    for logger in ("psycopg.pool", "flask_dbpool"):  # each failed attempt logs a warning
        logging.getLogger(logger).setLevel(logging.CRITICAL)
    pools = {"flask-dbpool": dbpool_factory, "psycopg_pool": psycopg_pool_factory}
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in pools}
    with ThrowawayCluster() as cluster:
        cluster.start()
        for round_ in range(args.rounds):
            for name, factory in pools.items():
                result = one_outage(cluster, factory, args.threads, args.down)
                results[name].append(result)
                print(
                    f"round {round_ + 1} {name:13} recovery {result[0] * 1000:7.1f} ms, "
                    f"{result[1]:5.1f} attempts/s down, {result[2]} failed checkouts",
                    flush=True,
                )
    print()
    print(
        f"| pool | recovery ms, median [max] | attempts per second down | failed checkouts "
        f"per outage |  ({args.threads} threads, {args.down:g} s down, {args.rounds} rounds)"
    )
    print("|---|---|---|---|")
    for name, rows in results.items():
        recoveries = [row[0] * 1000 for row in rows]
        print(
            f"| {name} | {statistics.median(recoveries):.0f} [{max(recoveries):.0f}] | "
            f"{statistics.median(row[1] for row in rows):.1f} | "
            f"{max(row[2] for row in rows)} |"
        )


if __name__ == "__main__":
    main()
