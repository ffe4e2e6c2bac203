#!/usr/bin/env python3
"""What the whole-server dashboard costs a worker (issue 16): the publishing thread's write,
once a second, and a /data read, which reads the other workers' files and combines them.

    .venv/bin/python benchmarks/fleet_cost.py [--workers 3] [--checkouts 8] [--rounds 2000]

In one process: a Flask app with DBPool and the dashboard on SQLite, ``--checkouts``
connections held (so that reports carry checkouts), the publisher pointed at a temporary
directory where ``--workers - 1`` other workers' files are written (from live pids, so that
they count as alive). Prints µs per publish and per /data request (the whole Flask request
through the test client, and the fleet part alone: reading and combining).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from flask import Flask

from flask_dbpool import DBPool
from flask_dbpool.fleet import Publisher, combine
from flask_dbpool.report import pool_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--checkouts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app = Flask("fleet-cost")
        app.config.update(
            DBPOOL_URL=f"sqlite:///{tmp}/cost.db", DBPOOL_DASHBOARD=True, DBPOOL_POOL_SIZE=16
        )
        db = DBPool(app)
        pool = db.get_pool(app)
        held = [pool.acquire() for _ in range(args.checkouts)]
        client = app.test_client()
        client.get("/_dbpool/data")
        report = client.get("/_dbpool/data").get_json()
        directory = Path(tmp) / "fleet"
        directory.mkdir()
        live = [os.getppid(), 1][: args.workers - 1]  # live pids: the others count as alive
        for pid in live:
            body = {"pid": pid, "time": time.time(), "pools": {pool.name: report}}
            (directory / f"{pid}.json").write_text(json.dumps(body))
        publisher = Publisher(lambda: {pool.name: pool_report(pool)})
        publisher.directory = directory

        def timed(work, rounds: int) -> float:
            samples = []
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(rounds):
                    work()
                samples.append((time.perf_counter() - start) / rounds * 1e6)
            return statistics.median(samples)

        def refresh_files() -> None:
            for pid in live:
                path = directory / f"{pid}.json"
                data = json.loads(path.read_text())
                data["time"] = time.time()
                path.write_text(json.dumps(data))

        publish = timed(publisher.write, args.rounds)
        refresh_files()
        fleet_part = timed(
            lambda: combine([(os.getpid(), report), *publisher.others(pool.name)]),
            args.rounds // 4,
        )
        whole = timed(lambda: client.get("/_dbpool/data"), args.rounds // 4)
        size = (directory / f"{os.getpid()}.json").stat().st_size
        print(
            f"{args.workers} workers, {args.checkouts} checkouts per report "
            f"({size} bytes per worker file); µs, median of 5 runs:"
        )
        print(f"  publish (report, JSON, atomic write), once a second: {publish:8.1f}")
        print(f"  /data, fleet part (read {len(live)} files, combine):   {fleet_part:8.1f}")
        print(f"  /data, whole request (test client, one process):    {whole:8.1f}")
        print(f"  so /data on a {args.workers}-worker server is about {whole + fleet_part:.0f} µs")
        for conn in held:
            pool.release(conn)
        pool.close()


if __name__ == "__main__":
    main()
