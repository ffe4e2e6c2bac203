#!/usr/bin/env python3
"""What ``reset_on_return="discard"`` costs per checkout, per backend and driver.

    .venv/bin/python benchmarks/session_reset.py [--cycles 2000] [--rounds 5]

One pool of one connection per (driver, mode); a cycle is checkout, ``SELECT 1``, return.
The two modes of a driver run in alternating rounds in one process; printed per driver: µs
per cycle under the default (rollback only) and under "discard" (median of the rounds), and
their ratio (median of the per-round ratios). The servers are this machine's shared
PostgreSQL and MariaDB (read-only use: nothing is written).
"""

from __future__ import annotations

import argparse
import statistics
import time

from flask_dbpool import Pool

TARGETS = {
    "psycopg 3": "postgresql://127.0.0.1:5432/test",
    "psycopg2": "postgresql+psycopg2://127.0.0.1:5432/test",
    "PyMySQL": "mysql://root@127.0.0.1:3306/test",
    "mysqlclient": "mysql+mysqldb://root@127.0.0.1:3306/test",
}


def cycle_us(pool: Pool, cycles: int) -> float:
    start = time.perf_counter()
    for _ in range(cycles):
        with pool.connection() as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.fetchall()
            cur.close()
    return (time.perf_counter() - start) / cycles * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{'driver':<12} {'rollback µs':>12} {'discard µs':>11} {'discard/rollback':>17}")
    for driver, url in TARGETS.items():
        pools = {
            mode: Pool(url, pool_size=1, max_overflow=0, reset_on_return=mode)
            for mode in ("rollback", "discard")
        }
        times: dict[str, list[float]] = {mode: [] for mode in pools}
        try:
            for pool in pools.values():
                cycle_us(pool, 50)  # warm up: connect, first statements
            for _ in range(args.rounds):
                for mode, pool in pools.items():
                    times[mode].append(cycle_us(pool, args.cycles))
        finally:
            for pool in pools.values():
                pool.close()
        ratios = [d / r for r, d in zip(times["rollback"], times["discard"], strict=True)]
        print(
            f"{driver:<12} {statistics.median(times['rollback']):>12.1f} "
            f"{statistics.median(times['discard']):>11.1f} {statistics.median(ratios):>17.2f}"
        )


if __name__ == "__main__":
    main()
