#!/usr/bin/env python3
"""End to end under gunicorn and wrk: flask-dbpool next to the usual alternatives (issue 11).

    .venv/bin/python benchmarks/e2e/run.py [--rounds 5] [--seconds 10] [--pin]
        [--worker-class sync|gthread|gevent] [--workers 1] [--threads 8] [--variants ...]

For each round, for each variant of ``benchmarks/e2e/app.py`` in random order: start gunicorn
on it (optionally pinned to CPU 0 with ``taskset``, wrk then on CPU 1), wait for ``/ping``, run
``wrk --latency`` against ``/item/<random id>`` and stop gunicorn. Read from PostgreSQL:

- work: ``xact_commit + xact_rollback`` and ``sessions`` of the benchmark database in
  ``pg_stat_database`` before the run and after gunicorn has stopped (its backends flush their
  counters on exit). Every new session counts one transaction of its own (backend startup), so
  the work per request is ``(transactions - sessions) / requests``; the app does one
  transaction per request, and a variant more than ``--tolerance`` away from 1 is flagged.
  The harness reads from the ``postgres`` database so that its own queries are not counted.
- peak backends: ``pg_stat_activity`` rows with the variant's ``application_name`` (libpq's
  ``PGAPPNAME``), sampled every 100 ms during the run;
- CPU: user + system seconds of the gunicorn master and workers over the wrk run, per request.

The table gives req/s median [min-max] over rounds, p50/p99/p99.9 medians, sessions opened and
peak backends (medians), CPU µs/request, and flask-dbpool's req/s over each other variant's in
the same round (median of the per-round ratios). Errors (non-2xx, socket errors) are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

HERE = Path(__file__).resolve().parent
VARIANTS = ("dbpool", "psycopg_pool", "flask_sqlalchemy", "fsa_dbpool", "connect")
LABELS = {
    "dbpool": "flask-dbpool",
    "psycopg_pool": "psycopg_pool",
    "flask_sqlalchemy": "Flask-SQLAlchemy",
    "fsa_dbpool": "Flask-SQLAlchemy on flask-dbpool",
    "connect": "connect per request",
}

WRK_SCRIPT = """
local rows = %(rows)d
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter * 7919 + %(seed)d)
end
function init(args)
  math.randomseed(seed)
end
function request()
  return wrk.format("GET", "/item/" .. math.random(1, rows))
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "E2E requests=%%d duration_us=%%d connect=%%d read=%%d write=%%d status=%%d timeout=%%d ",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
  io.write(string.format("p50=%%d p90=%%d p99=%%d p999=%%d max=%%d\\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""


@dataclass
class Run:
    variant: str
    round: int
    rps: float = 0.0
    requests: int = 0
    p50_us: float = 0.0
    p90_us: float = 0.0
    p99_us: float = 0.0
    p999_us: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    non2xx: int = 0
    xacts: int = 0
    sessions: int = 0
    peak_backends: int = 0
    cpu_s: float = 0.0

    @property
    def work_per_request(self) -> float:
        return (self.xacts - self.sessions) / self.requests if self.requests else float("nan")

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")


def admin_url(url: str) -> str:
    """``url`` on the ``postgres`` database: the harness's reads are not counted."""
    params = conninfo_to_dict(url)
    params["dbname"] = "postgres"
    return make_conninfo(**params)


def prepare(url: str, rows: int) -> str:
    """Create the benchmark database and table if missing; return the database name."""
    dbname = str(conninfo_to_dict(url).get("dbname") or "postgres")
    with psycopg.connect(admin_url(url), autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            admin.execute(f'CREATE DATABASE "{dbname}"')
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS e2e_items"
            " (id int PRIMARY KEY, name text NOT NULL, value int NOT NULL)"
        )
        have = conn.execute("SELECT count(*) FROM e2e_items").fetchone()
        if not have or have[0] != rows:
            conn.execute("TRUNCATE e2e_items")
            conn.execute(
                "INSERT INTO e2e_items SELECT i, 'item ' || i, i * 7 %% 1000"
                " FROM generate_series(1, %s) i",
                (rows,),
            )
            conn.execute("VACUUM ANALYZE e2e_items")
    return dbname


def db_counters(stats: psycopg.Connection[Any], dbname: str) -> tuple[int, int]:
    row = stats.execute(
        "SELECT xact_commit + xact_rollback, sessions FROM pg_stat_database WHERE datname = %s",
        (dbname,),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def backends(stats: psycopg.Connection[Any], app_name: str) -> int:
    row = stats.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,)
    ).fetchone()
    return int(row[0]) if row else 0


class Sampler(threading.Thread):
    """Peak count of the variant's backends, every 100 ms, on its own connection."""

    def __init__(self, url: str, app_name: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(admin_url(url), autocommit=True)
        self.app_name = app_name
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.peak = max(self.peak, backends(self.conn, self.app_name))

    def finish(self) -> int:
        self.stop.set()
        self.join()
        self.conn.close()
        return self.peak


def cpu_seconds(master: psutil.Process) -> float:
    total = 0.0
    for proc in [master, *master.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not answer /ping in time")


def parse_wrk(text: str, run: Run) -> None:
    match = re.search(r"^E2E (.*)$", text, re.M)
    if not match:
        raise RuntimeError(f"no E2E line in wrk output:\n{text}")
    values = {k: int(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    run.requests = values["requests"]
    run.rps = values["requests"] / (values["duration_us"] / 1e6)
    run.p50_us, run.p90_us = values["p50"], values["p90"]
    run.p99_us, run.p999_us = values["p99"], values["p999"]
    run.errors = {k: values[k] for k in ("connect", "read", "write", "timeout") if values[k]}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    run.non2xx = int(non2xx.group(1)) if non2xx else 0
    if values["status"] and not run.non2xx:
        run.non2xx = values["status"]


def one_run(args: argparse.Namespace, dbname: str, variant: str, rnd: int, script: str) -> Run:
    run = Run(variant, rnd)
    app_name = f"e2e_{variant}"
    env = {
        **os.environ,
        "E2E_VARIANT": variant,
        "E2E_URL": args.url,
        "E2E_POOL_SIZE": str(args.pool_size),
        "PGAPPNAME": app_name,
    }
    server = [
        sys.executable, "-m", "gunicorn",
        "-k", args.worker_class, "-w", str(args.workers), "--threads", str(args.threads),
        "-b", f"127.0.0.1:{args.port}", "--chdir", str(HERE),
        "--log-level", "warning", "--graceful-timeout", "5",
        "app:create_app()",
    ]  # fmt: skip
    client = [
        args.wrk, f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{args.seconds}s",
        "--latency", "-s", script, f"http://127.0.0.1:{args.port}",
    ]  # fmt: skip
    if args.pin:
        server = ["taskset", "-c", "0", *server]
        client = ["taskset", "-c", "1", *client]
    with psycopg.connect(admin_url(args.url), autocommit=True) as stats:
        if backends(stats, app_name):
            raise RuntimeError(f"backends named {app_name} are already connected")
        proc = subprocess.Popen(server, env=env)
        try:
            wait_ready(args.port, proc)
            master = psutil.Process(proc.pid)
            xacts0, sessions0 = db_counters(stats, dbname)
            sampler = Sampler(args.url, app_name)
            sampler.start()
            cpu0 = cpu_seconds(master)
            out = subprocess.run(client, capture_output=True, text=True, check=True).stdout
            run.cpu_s = cpu_seconds(master) - cpu0
            run.peak_backends = sampler.finish()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The backends flush their counters when they exit: wait for them to be gone.
        deadline = time.monotonic() + 10
        while backends(stats, app_name) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        xacts1, sessions1 = db_counters(stats, dbname)
    parse_wrk(out, run)
    run.xacts, run.sessions = xacts1 - xacts0, sessions1 - sessions0
    if args.verbose:
        print(out, file=sys.stderr)
    return run


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(runs: list[Run], variants: list[str], tolerance: float) -> str:
    lines = [
        "| variant | req/s median [min-max] | p50 ms | p99 ms | p99.9 ms | sessions opened "
        "| peak backends | CPU µs/req | txn/req | flask-dbpool ÷ this (per round, median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    flags: list[str] = []
    base = {r.round: r.rps for r in runs if r.variant == "dbpool"}
    for variant in variants:
        mine = [r for r in runs if r.variant == variant]
        if not mine:
            continue
        rps = [r.rps for r in mine]
        ratios = [base[r.round] / r.rps for r in mine if r.round in base and r.rps]
        ratio = (
            "—"
            if variant == "dbpool" or not ratios
            else (f"{med(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]")
        )
        work = [r.work_per_request for r in mine]
        lines.append(
            f"| {LABELS[variant]} | {med(rps):,.0f} [{min(rps):,.0f}-{max(rps):,.0f}] "
            f"| {med([r.p50_us for r in mine]) / 1e3:.2f} "
            f"| {med([r.p99_us for r in mine]) / 1e3:.2f} "
            f"| {med([r.p999_us for r in mine]) / 1e3:.2f} "
            f"| {med([r.sessions for r in mine]):,.0f} "
            f"| {med([r.peak_backends for r in mine]):.0f} "
            f"| {med([r.cpu_us_per_request for r in mine]):,.0f} "
            f"| {med(work):.3f} | {ratio} |"
        )
        for r in mine:
            if abs(r.work_per_request - 1.0) > tolerance:
                flags.append(
                    f"NOT THE SAME WORK: {LABELS[variant]} round {r.round}: "
                    f"{r.work_per_request:.3f} transactions per request (expected 1 ± {tolerance})"
                )
            if r.errors or r.non2xx:
                flags.append(
                    f"ERRORS: {LABELS[variant]} round {r.round}: non-2xx {r.non2xx}, "
                    f"socket {r.errors or 0} of {r.requests:,} requests"
                )
    lines.append("")
    lines.extend(flags or ["Same work check: every run did 1 transaction per request "
                           f"(± {tolerance}); no errors."])  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/bench_e2e",
                        help="benchmark database (created with its table if missing)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per run")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--worker-class", choices=("sync", "gthread", "gevent"), default="gthread")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=8, help="gunicorn --threads (gthread)")
    parser.add_argument("--pool-size", type=int, default=4, help="per worker, no overflow")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk -t")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--pin", action="store_true",
                        help="taskset: gunicorn on CPU 0, wrk on CPU 1")  # fmt: skip
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="allowed distance of transactions per request from 1")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every run to this file")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--verbose", action="store_true", help="print wrk's output")
    args = parser.parse_args()

    args.wrk = shutil.which("wrk")
    if not args.wrk:
        sys.exit("wrk not found: apt-get install wrk (or build it from github.com/wg/wrk)")
    rng = random.Random(args.seed)
    dbname = prepare(args.url, args.rows)
    print(
        f"gunicorn -k {args.worker_class} -w {args.workers} --threads {args.threads}; "
        f"pool size {args.pool_size}; wrk -t{args.wrk_threads} -c{args.connections} "
        f"-d{args.seconds}s; pinned: {args.pin}; CPUs: {os.cpu_count()}",
        flush=True,
    )
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        script = str(Path(tmp, "items.lua"))
        for rnd in range(1, args.rounds + 1):
            order = list(args.variants)
            rng.shuffle(order)
            for variant in order:
                text = WRK_SCRIPT % {"rows": args.rows, "seed": rng.randrange(1 << 20)}
                Path(script).write_text(text)
                run = one_run(args, dbname, variant, rnd, script)
                runs.append(run)
                print(
                    f"round {rnd} {LABELS[variant]:>20}: {run.rps:8,.0f} req/s "
                    f"p99 {run.p99_us / 1e3:6.2f} ms, txn/req {run.work_per_request:.3f}, "
                    f"sessions {run.sessions}, peak backends {run.peak_backends}, "
                    f"CPU {run.cpu_us_per_request:,.0f} µs/req"
                    + (
                        f", ERRORS non-2xx {run.non2xx} socket {run.errors}"
                        if run.errors or run.non2xx
                        else ""
                    ),
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps([vars(r) for r in runs], indent=1))
    print()
    print(report(runs, list(args.variants), args.tolerance))


if __name__ == "__main__":
    main()
