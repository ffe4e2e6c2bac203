#!/usr/bin/env python3
"""What ``leak_threshold`` costs per checkout: the checkout site is recorded on every
``acquire`` while it is set.

    .venv/bin/python benchmarks/leak_tracking.py [--url URL] [--depth 30] [--rounds 7]

Times ``acquire(); release()`` cycles from a call stack ``--depth`` frames deep (a Flask view
under gunicorn sits 30-40 frames down) on two pools of the same database, one with
``leak_threshold`` and one without, in interleaved rounds; prints the median per-cycle time
of each and the difference (the cost of recording the site).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flask_dbpool import Pool

CYCLES = 5000


def at_depth(depth: int, work: Callable[[], float]) -> float:
    """Run ``work`` ``depth`` frames down the stack."""
    if depth <= 0:
        return work()
    return at_depth(depth - 1, work)


def cycles(pool: Pool) -> float:
    acquire, release = pool.acquire, pool.release
    start = time.perf_counter()
    for _ in range(CYCLES):
        release(acquire())
    return (time.perf_counter() - start) / CYCLES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--depth", type=int, default=30, help="stack depth of the caller")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        plain = Pool(url, pool_size=1, max_overflow=0, name="plain")
        tracked = Pool(url, pool_size=1, max_overflow=0, name="tracked", leak_threshold=60)
        times: dict[str, list[float]] = {"plain": [], "tracked": []}
        try:
            for _ in range(args.rounds):
                for name, pool in (("plain", plain), ("tracked", tracked)):
                    times[name].append(at_depth(args.depth, lambda p=pool: cycles(p)))
        finally:
            plain.close()
            tracked.close()
    plain_us = statistics.median(times["plain"]) * 1e6
    tracked_us = statistics.median(times["tracked"]) * 1e6
    print(
        f"{url.split(':')[0]}, caller {args.depth} frames deep, {args.rounds} rounds "
        f"of {CYCLES} cycles, median per acquire+release:"
    )
    print(f"  without leak_threshold  {plain_us:7.2f} µs")
    print(f"  with leak_threshold     {tracked_us:7.2f} µs  (+{tracked_us - plain_us:.2f} µs)")


if __name__ == "__main__":
    main()
