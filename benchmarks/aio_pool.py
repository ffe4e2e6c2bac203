#!/usr/bin/env python3
"""The asyncio checkout+return cycle: AsyncPool against psycopg_pool's AsyncConnectionPool,
SQLAlchemy's AsyncAdaptedQueuePool and an asyncio.Queue floor, in one process and one run.

    .venv/bin/python benchmarks/aio_pool.py [--cycles 20000] [--rounds 7] [--tasks 1]

All on psycopg 3 ``AsyncConnection``s to the shared PostgreSQL (nothing is sent: the cycle
is the pool's own cost). One pool of 4 connections each; ``--tasks`` tasks share it; with ``--hold``
each yields to the loop once while holding (as a query would), so that with more tasks than
connections the others wait and returns are handed over. A round runs every contender once,
in an order that rotates; printed per contender: µs per cycle (median of rounds) and the
ratio to AsyncPool (median of per-round ratios).

- AsyncPool: ``async with pool.connection():`` (commits if a transaction is open);
- psycopg_pool: ``async with pool.connection():`` (the same contract);
- SQLAlchemy: ``async with engine.connect():`` on ``create_async_engine`` (its pool is
  AsyncAdaptedQueuePool; the cycle includes SQLAlchemy's Connection object and the
  greenlet hop, which is how an application meets that pool);
- floor: ``asyncio.Queue`` ``get_nowait``/``put_nowait`` of a connection, wrapped in an
  ``async with`` of our own (no accounting, no reset: what no real pool can beat).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

URL = "postgresql://127.0.0.1:5432/test"
SIZE = 4


async def timed(cycle: Callable[[], Awaitable[None]], cycles: int, tasks: int) -> float:
    per_task = cycles // tasks

    async def loop() -> None:
        for _ in range(per_task):
            await cycle()

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(tasks)))
    return (time.perf_counter() - start) / (per_task * tasks) * 1e6


class _QueueFloor:
    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self.queue = queue
        self.conn: Any = None

    async def __aenter__(self) -> Any:
        self.conn = self.queue.get_nowait() if not self.queue.empty() else await self.queue.get()
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        self.queue.put_nowait(self.conn)


async def main(cycles: int, rounds: int, tasks: int, hold: bool) -> None:
    import psycopg
    from psycopg_pool import AsyncConnectionPool
    from sqlalchemy.ext.asyncio import create_async_engine

    from flask_dbpool import AsyncPool

    ours = AsyncPool(URL, pool_size=SIZE, max_overflow=0)
    await ours.open()
    await ours.warm_up()
    theirs = AsyncConnectionPool(URL, min_size=SIZE, max_size=SIZE, open=False)
    await theirs.open(wait=True)
    engine = create_async_engine(
        URL.replace("postgresql://", "postgresql+psycopg://"), pool_size=SIZE, max_overflow=0
    )
    queue: asyncio.Queue[Any] = asyncio.Queue()
    raws = [await psycopg.AsyncConnection.connect(URL) for _ in range(SIZE)]
    for raw in raws:
        queue.put_nowait(raw)

    async def ours_cycle() -> None:
        async with ours.connection():
            if hold:
                await asyncio.sleep(0)

    async def theirs_cycle() -> None:
        async with theirs.connection():
            if hold:
                await asyncio.sleep(0)

    async def sqlalchemy_cycle() -> None:
        async with engine.connect():
            if hold:
                await asyncio.sleep(0)

    async def floor_cycle() -> None:
        async with _QueueFloor(queue):
            if hold:
                await asyncio.sleep(0)

    contenders: dict[str, Callable[[], Awaitable[None]]] = {
        "flask-dbpool AsyncPool": ours_cycle,
        "psycopg_pool AsyncConnectionPool": theirs_cycle,
        "SQLAlchemy AsyncAdaptedQueuePool": sqlalchemy_cycle,
        "asyncio.Queue floor": floor_cycle,
    }
    for cycle in contenders.values():  # warm up
        await timed(cycle, 2000, tasks)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_no in range(rounds):
        order = names[round_no % len(names) :] + names[: round_no % len(names)]
        for name in order:
            times[name].append(await timed(contenders[name], cycles, tasks))
    base = times[names[0]]
    held = ", each yielding once while holding" if hold else ""
    print(
        f"{cycles} cycles x {rounds} rounds, {tasks} task(s){held}, pool of {SIZE}; "
        f"Python {sys.version.split()[0]}"
    )
    print(f"{'contender':<34} {'µs/cycle':>9} {'÷ AsyncPool':>12}")
    for name in names:
        ratios = [t / b for t, b in zip(times[name], base, strict=True)]
        print(
            f"{name:<34} {statistics.median(times[name]):>9.2f} {statistics.median(ratios):>12.2f}"
        )
    await ours.close()
    await theirs.close()
    await engine.dispose()
    for raw in raws:
        await raw.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument(
        "--hold", action="store_true", help="yield to the loop once while holding (hand-offs)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.cycles, args.rounds, args.tasks, args.hold))
