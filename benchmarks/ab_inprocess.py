#!/usr/bin/env python3
"""In-process A/B of the hot path between two commits of flask-dbpool.

    .venv/bin/python benchmarks/ab_inprocess.py OLD_REV [NEW_REV] [--url URL] [--rounds N]
        [--sqlalchemy]

Exports ``src/flask_dbpool`` of both commits (``NEW_REV`` defaults to the working tree) into a
temporary directory under the names ``flask_dbpool_a`` and ``flask_dbpool_b``, imports both in
one process, opens one pool of each on the same database and times acquire/release,
``with pool.connection()`` and ``acquire(); close()`` in interleaved rounds (random order
within each round, GC off), so that machine noise hits both alike. Read the per-round ratio
B/A (docs/benchmarks.md). ``--sqlalchemy`` times ``SQLAlchemyPool`` instead: SQLAlchemy's
``pool.connect(); conn.close()`` and ``with engine.connect(): pass`` on an engine of each.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

N = 20000
pc = time.perf_counter


def cycle_release(pool: Any) -> float:
    acquire, release = pool.acquire, pool.release
    start = pc()
    for _ in range(N):
        release(acquire())
    return (pc() - start) / N * 1e6


def cycle_with(pool: Any) -> float:
    connection = pool.connection
    start = pc()
    for _ in range(N):
        with connection():
            pass
    return (pc() - start) / N * 1e6


def cycle_close(pool: Any) -> float:
    acquire = pool.acquire
    start = pc()
    for _ in range(N):
        acquire().close()
    return (pc() - start) / N * 1e6


def cycle_sa_pool(engine: Any) -> float:
    connect = engine.pool.connect
    start = pc()
    for _ in range(N):
        connect().close()
    return (pc() - start) / N * 1e6


def cycle_sa_engine(engine: Any) -> float:
    connect = engine.connect
    start = pc()
    for _ in range(N):
        with connect():
            pass
    return (pc() - start) / N * 1e6


def export(rev: str | None, name: str, into: Path) -> None:
    """``src/flask_dbpool`` of ``rev`` (``None``: the working tree) as package ``name``."""
    target = into / name
    if rev is None:
        shutil.copytree(ROOT / "src" / "flask_dbpool", target)
    else:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "src/flask_dbpool"],
            check=True,
            capture_output=True,
        ).stdout
        scratch = into / f"{name}.tar"
        scratch.write_bytes(archive)
        with tarfile.open(scratch) as tar:
            tar.extractall(into / f"{name}.src", filter="data")
        (into / f"{name}.src" / "src" / "flask_dbpool").rename(target)
    for path in target.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(re.sub(r"\bflask_dbpool\b", name, text), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the commit to compare against (A)")
    parser.add_argument("new", nargs="?", help="the commit measured (B; default: working tree)")
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument(
        "--sqlalchemy", action="store_true", help="time SQLAlchemyPool engines, not Pool"
    )
    args = parser.parse_args()
    into = Path(tempfile.mkdtemp(prefix="dbpool-ab-"))
    export(args.old, "flask_dbpool_a", into)
    export(args.new, "flask_dbpool_b", into)
    sys.path.insert(0, str(into))
    A = importlib.import_module("flask_dbpool_a")
    B = importlib.import_module("flask_dbpool_b")
    print(f"A = {args.old}, B = {args.new or 'working tree'}, {args.url}, {args.rounds} rounds")
    url, rounds = args.url, args.rounds
    pools: dict[str, Any]
    if args.sqlalchemy:
        A_sa = importlib.import_module("flask_dbpool_a.sqlalchemy")
        B_sa = importlib.import_module("flask_dbpool_b.sqlalchemy")
        pools = {
            "a": A_sa.create_engine(url, pool_size=5, max_overflow=10),
            "b": B_sa.create_engine(url, pool_size=5, max_overflow=10),
        }
        kinds = {"pool.connect/close": cycle_sa_pool, "engine.connect": cycle_sa_engine}
    else:
        pools = {
            "a": A.Pool(url, pool_size=5, max_overflow=10),
            "b": B.Pool(url, pool_size=5, max_overflow=10),
        }
        for pool in pools.values():
            pool.warm_up()
        kinds = {"acquire/release": cycle_release, "with": cycle_with, "acquire/close": cycle_close}
    results: dict[tuple[str, str], list[float]] = {(k, s): [] for k in kinds for s in "ab"}
    gc.disable()
    for _ in range(rounds):
        for kind, run in kinds.items():
            order = ["a", "b"]
            random.shuffle(order)
            for side in order:
                results[(kind, side)].append(run(pools[side]))
    gc.enable()
    for kind in kinds:
        a, b = results[(kind, "a")], results[(kind, "b")]
        ratios = sorted(y / x for x, y in zip(a, b, strict=True))
        p25, p75 = ratios[len(ratios) // 4], ratios[3 * len(ratios) // 4]
        print(
            f"{kind:16s} A {statistics.median(a):.3f} µs  B {statistics.median(b):.3f} µs  "
            f"B/A per round: median {statistics.median(ratios):.3f} [p25 {p25:.3f}, p75 {p75:.3f}]"
        )
    for pool in pools.values():
        if args.sqlalchemy:
            pool.dispose()
        else:
            pool.close()
    shutil.rmtree(into)


if __name__ == "__main__":
    main()
