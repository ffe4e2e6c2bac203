#!/usr/bin/env python3
"""Overflow churn: how many checkouts open a new connection when demand swings around
``pool_size``, with overflow connections closed on return (``overflow_idle_timeout=0``)
against kept idle for a grace period (the default).

    .venv/bin/python benchmarks/overflow_churn.py [--url URL] [--threads T] [--seconds S]

T threads share a pool of 4 + 4 overflow; each loops: checkout, ``SELECT 1``, hold 1 ms,
return, think 0-4 ms (random), so that demand keeps crossing ``pool_size``. Reported per
setting: checkouts done, connections opened, their share of checkouts, and why connections
were closed.
"""

from __future__ import annotations

import argparse
import random
import threading
import time

from flask_dbpool import Pool


def run(url: str, grace: float, threads: int, seconds: float) -> str:
    pool = Pool(url, pool_size=4, max_overflow=4, overflow_idle_timeout=grace, timeout=30)
    stop = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < stop:
            with pool.connection() as conn:
                conn.cursor().execute("SELECT 1")
                time.sleep(0.001)
            time.sleep(random.uniform(0, 0.004))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    s = pool.stats()
    pool.close()
    share = 100 * s.created / max(s.acquired, 1)
    return (
        f"overflow_idle_timeout={grace:g}: {s.acquired} checkouts, {s.created} connections "
        f"opened ({share:.2f} % of checkouts), closed {s.closed_by_reason}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    print(f"{args.threads} threads, pool 4 + 4, {args.seconds:g} s each")
    for grace in (0.0, 5.0):
        print(run(args.url, grace, args.threads, args.seconds))


if __name__ == "__main__":
    main()
