#!/usr/bin/env python3
"""SQLAlchemyPool against SQLAlchemy's QueuePool, through ``engine.connect()``.

    .venv/bin/python benchmarks/sqlalchemy_pool.py [--url URL] [--rounds 7] [--seconds 5]

1. The checkout cycle, single thread: ``with engine.connect(): pass`` (checkout, reset on
   return, checkin), interleaved rounds, median µs per cycle and the per-round ratio.
2. Fairness under contention: 64 threads on 2 connections (``pool_timeout`` = the run's
   length) for ``--seconds``, each thread checking out, running ``SELECT 1`` and returning:
   checkouts per thread (least and most served), threads served at most once, the longest
   wait and the timeouts.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import sqlalchemy
from sqlalchemy import exc, text

from flask_dbpool.sqlalchemy import SQLAlchemyPool, engine_url

CYCLES = 5000


def cycle(engine: Any) -> float:
    connect = engine.connect
    start = time.perf_counter()
    for _ in range(CYCLES):
        with connect():
            pass
    return (time.perf_counter() - start) / CYCLES


def fairness(engine: Any, seconds: float, threads: int = 64) -> dict[str, Any]:
    counts = [0] * threads
    longest = [0.0] * threads
    timeouts = [0]
    stop = threading.Event()

    def work(index: int) -> None:
        while not stop.is_set():
            began = time.perf_counter()
            try:
                conn = engine.connect()
            except exc.TimeoutError:
                timeouts[0] += 1
                continue
            longest[index] = max(longest[index], time.perf_counter() - began)
            try:
                conn.execute(text("SELECT 1"))
            finally:
                conn.close()
            counts[index] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return {
        "least": min(counts),
        "most": max(counts),
        "starved": sum(1 for c in counts if c <= 1),
        "longest_wait": max(longest),
        "timeouts": timeouts[0],
        "total": sum(counts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    url = engine_url(args.url)
    engines = {
        "SQLAlchemyPool": sqlalchemy.create_engine(
            url, poolclass=SQLAlchemyPool, pool_size=2, max_overflow=0, pool_timeout=args.seconds
        ),
        "QueuePool": sqlalchemy.create_engine(
            url,
            poolclass=sqlalchemy.pool.QueuePool,
            pool_size=2,
            max_overflow=0,
            pool_timeout=args.seconds,
        ),
    }
    try:
        times: dict[str, list[float]] = {name: [] for name in engines}
        ratios = []
        for _ in range(args.rounds):
            for name, engine in engines.items():
                times[name].append(cycle(engine))
            ratios.append(times["SQLAlchemyPool"][-1] / times["QueuePool"][-1])
        print(
            f"{url.render_as_string()}: checkout cycle (with engine.connect(): pass), "
            f"{args.rounds} rounds of {CYCLES}, median:"
        )
        for name, values in times.items():
            print(f"  {name:15} {statistics.median(values) * 1e6:7.2f} µs")
        print(
            f"  SQLAlchemyPool / QueuePool per round: median {statistics.median(ratios):.3f} "
            f"[{min(ratios):.3f}-{max(ratios):.3f}]"
        )
        print(f"fairness: 64 threads on 2 connections for {args.seconds:g} s")
        for name, engine in engines.items():
            r = fairness(engine, args.seconds)
            print(
                f"  {name:15} checkouts {r['total']:6}  per thread least {r['least']:4} "
                f"most {r['most']:5}  served <= once: {r['starved']:2}  longest wait "
                f"{r['longest_wait']:.2f} s  timeouts {r['timeouts']}"
            )
    finally:
        for engine in engines.values():
            engine.dispose()


if __name__ == "__main__":
    main()
