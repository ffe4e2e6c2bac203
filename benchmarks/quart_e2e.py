#!/usr/bin/env python3
"""Quart end to end under hypercorn and wrk: QuartDBPool (on psycopg 3, and on asyncpg)
against quart-db (asyncpg), 4 connections each.

    .venv/bin/python benchmarks/quart_e2e.py [--rounds 5] [--seconds 8] [--connections 16]

Creates a table of 1,000 rows in the shared PostgreSQL (dropped at the end); each round
starts hypercorn (one worker) on each variant in turn (order alternating), waits for
``/ping``, runs ``wrk --latency`` against ``/item/<random id>`` and stops the server.
Printed per variant: requests per second and p99 latency (median of the rounds), and the
per-round ratios to quart-db (median). QuartDBPool on asyncpg against quart-db compares the
pools and extensions on one driver; on psycopg 3, what a user of that driver gets.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
URL = os.environ.get("QUART_BENCH_URL", "postgresql://127.0.0.1:5432/test")
TABLE = "dbpool_quart_bench"
VARIANTS = {
    "dbpool": "QuartDBPool (psycopg 3)",
    "dbpool_asyncpg": "QuartDBPool (asyncpg)",
    "quart_db": "quart-db (asyncpg)",
}
WRK_SCRIPT = """
math.randomseed(42)
request = function()
  return wrk.format("GET", "/item/" .. math.random(1, 1000))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_round(variant: str, seconds: int, connections: int, script: str) -> tuple[float, float]:
    port = free_port()
    env = {**os.environ, "QUART_BENCH_URL": URL, "QUART_BENCH_VARIANT": variant}
    env["PYTHONPATH"] = str(HERE)
    server = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "quart_e2e_app:app"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base + "/ping", timeout=2).read()
                urllib.request.urlopen(base + "/item/1", timeout=5).read()  # warm
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"{variant}: the server did not start") from None
                time.sleep(0.1)
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, base],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  {variant}: errors in this round:\n{out}")
    return rps, float(p99.group(1)) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    with psycopg.connect(URL, autocommit=True) as admin:
        admin.execute(f"DROP TABLE IF EXISTS {TABLE}")
        admin.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, v text)")
        admin.execute(f"INSERT INTO {TABLE} SELECT i, md5(i::text) FROM generate_series(1, 1000) i")
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    try:
        for round_no in range(args.rounds):
            order = list(VARIANTS) if round_no % 2 == 0 else list(reversed(VARIANTS))
            for variant in order:
                rps, p99 = one_round(variant, args.seconds, args.connections, script.name)
                results[variant].append((rps, p99))
                label = VARIANTS[variant]
                print(f"round {round_no + 1} {label:<24} {rps:9.1f} req/s p99 {p99:6.1f} ms")
    finally:
        os.unlink(script.name)
        with psycopg.connect(URL, autocommit=True) as admin:
            admin.execute(f"DROP TABLE IF EXISTS {TABLE}")
    print(
        f"\n{args.rounds} rounds x {args.seconds} s, wrk -c{args.connections}, hypercorn 1 worker"
    )
    for variant, label in VARIANTS.items():
        rps = statistics.median(r for r, _ in results[variant])
        p99 = statistics.median(p for _, p in results[variant])
        print(f"{label:<24} {rps:9.1f} req/s   p99 {p99:6.1f} ms")
    for ours in ("dbpool", "dbpool_asyncpg"):
        ratios = [a[0] / b[0] for a, b in zip(results[ours], results["quart_db"], strict=True)]
        print(
            f"{VARIANTS[ours]} / quart-db req/s, per round: median "
            f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"
        )


if __name__ == "__main__":
    main()
