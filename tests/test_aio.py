"""AsyncPool against real servers: the basics per backend, FIFO, timeouts, loop misuse,
cancellation storms with the sync pool's invariants, shielded returns, close(timeout),
session resets, pre-ping, fork."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from flask_dbpool import AsyncPool, ConfigError, PoolClosed, PoolError, PoolTimeout

pytest.importorskip("psycopg")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def async_urls(postgres_url: str, mysql_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "postgres": postgres_url,
        "mysql": mysql_url,
        "sqlite": f"sqlite:///{tmp_path / 'aio.db'}",
    }


async def scalar(conn: Any, sql: str) -> Any:
    """The first column of the first row, whichever driver."""
    if _is_aiomysql(conn):
        cur = await conn.cursor()
        await cur.execute(sql)
    else:
        cur = await conn.execute(sql)
    row = await cur.fetchone() if cur.description is not None else None
    await cur.close()
    return None if row is None else row[0]


def _is_aiomysql(conn: Any) -> bool:
    return type(conn.driver_connection).__module__.startswith("aiomysql")


@pytest.mark.parametrize("backend_name", ["postgres", "mysql", "sqlite"])
def test_checkout_commit_rollback_and_stats(async_urls: dict[str, str], backend_name: str) -> None:
    if backend_name == "mysql":
        pytest.importorskip("aiomysql", reason="aiomysql is not installed (extra: async)")
    if backend_name == "sqlite":
        pytest.importorskip("aiosqlite", reason="aiosqlite is not installed (extra: async)")
    table = f"dbpool_aio_{os.getpid()}_{random.randrange(10**6)}"

    async def main() -> None:
        async with AsyncPool(async_urls[backend_name], pool_size=2, max_overflow=0) as pool:
            async with pool.connection() as conn:
                await scalar(conn, f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")
            try:
                async with pool.connection() as conn:
                    await scalar(conn, f"INSERT INTO {table} VALUES (1)")
                with pytest.raises(RuntimeError):
                    async with pool.connection() as conn:
                        await scalar(conn, f"INSERT INTO {table} VALUES (2)")
                        raise RuntimeError("rolled back")
                conn = await pool.acquire()
                assert await scalar(conn, f"SELECT COUNT(*) FROM {table}") == 1
                await pool.release(conn)
                with pytest.raises(PoolError, match="already returned"):
                    await pool.release(conn)
                assert conn.returned
                stats = pool.stats()
                assert (stats.in_use, stats.waiting, stats.acquired) == (0, 0, 4)
                assert "AsyncPool 'default'" in repr(pool)
            finally:
                async with pool.connection() as conn:
                    await scalar(conn, f"DROP TABLE {table}")

    run(main())


def test_asyncpg_connections(postgres_url: str) -> None:
    """asyncpg's own API through the handle; a block commits a SQL BEGIN's transaction, an
    error rolls it back, and "discard" resets the session keeping asyncpg's statements."""
    pytest.importorskip("asyncpg", reason="asyncpg is not installed (extra: asyncpg)")
    url = "postgresql+asyncpg://" + postgres_url.partition("://")[2]
    table = f"dbpool_asyncpg_{os.getpid()}"

    async def main() -> None:
        async with AsyncPool(url, pool_size=1, max_overflow=0, reset_on_return="discard") as pool:
            async with pool.connection() as conn:
                await conn.execute(f"CREATE TABLE {table} (v int)")
            try:
                async with pool.connection() as conn:
                    await conn.execute("BEGIN")
                    await conn.execute(f"INSERT INTO {table} VALUES (1)")
                    await conn.execute("SET statement_timeout = '4321ms'")
                with pytest.raises(RuntimeError):
                    async with pool.connection() as conn:
                        await conn.execute("BEGIN")
                        await conn.execute(f"INSERT INTO {table} VALUES (2)")
                        raise RuntimeError("rolled back")
                async with pool.connection() as conn:
                    for _ in range(3):  # asyncpg's prepared statements survive the resets
                        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 1
                    assert await conn.fetchval("SHOW statement_timeout") == "0"
                assert pool.stats().created == 1
            finally:
                async with pool.connection() as conn:
                    await conn.execute(f"DROP TABLE {table}")

    run(main())


def test_a_thousand_tasks_on_four_connections_are_served_in_order(postgres_url: str) -> None:
    async def main() -> list[int]:
        served: list[int] = []
        async with AsyncPool(postgres_url, pool_size=4, max_overflow=0, timeout=60) as pool:
            await pool.warm_up()

            async def one(i: int) -> None:
                async with pool.connection() as conn:
                    served.append(i)
                    if i % 50 == 0:
                        await scalar(conn, "SELECT 1")
                    await asyncio.sleep(0)

            tasks = []
            for i in range(1000):
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(0)  # each one queues before the next is created
            await asyncio.gather(*tasks)
            assert pool.stats().open == 4
        return served

    served = run(main())
    assert served == list(range(1000))


def test_timeout_when_exhausted_names_the_holder(postgres_url: str) -> None:
    async def main() -> None:
        async with AsyncPool(postgres_url, pool_size=1, max_overflow=0, timeout=0.2) as pool:
            held = await pool.acquire()
            started = time.monotonic()
            with pytest.raises(PoolTimeout, match=r"timed out after 0\.2") as info:
                await pool.acquire()
            assert time.monotonic() - started >= 0.2
            assert "held" in str(info.value)
            assert pool.stats().timeouts == 1
            with pytest.raises(PoolTimeout):
                await pool.acquire(timeout=0)
            await pool.release(held)
            async with pool.connection():
                pass

    run(main())


def test_used_from_another_loop_or_before_open(postgres_url: str) -> None:
    pool = AsyncPool(postgres_url, pool_size=1)

    async def use() -> None:
        async with pool.connection():
            pass

    with pytest.raises(PoolError, match="is not open"):
        run(use())
    run(pool.open())  # opened, bound to a loop that then ends
    with pytest.raises(PoolError, match="belongs to the event loop it was opened in"):
        run(use())
    with pytest.raises(PoolError, match="belongs to the event loop"):
        run(pool.open())

    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            run(use())
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(10)
    assert len(errors) == 1 and "another one" in str(errors[0])


def test_bad_input_is_a_config_error_before_any_io(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pool_size"):
        AsyncPool("postgresql://127.0.0.1/test", pool_size=0)
    with pytest.raises(ConfigError, match="unsupported database URL scheme"):
        AsyncPool("oracle://x/y")
    with pytest.raises(ConfigError, match="needs a database file"):
        AsyncPool("sqlite:///:memory:")
    with pytest.raises(ConfigError, match="not supported by the aiosqlite driver"):
        AsyncPool(f"sqlite:///{tmp_path / 'x.db'}", reset_on_return="discard")


def test_callable_target_and_a_non_awaitable_one(postgres_url: str) -> None:
    import psycopg

    async def connect() -> Any:
        return await psycopg.AsyncConnection.connect(postgres_url)

    async def main() -> None:
        async with AsyncPool(connect, pool_size=1) as pool:
            async with pool.connection() as conn:
                assert await scalar(conn, "SELECT 41 + 1") == 42
        async with AsyncPool(lambda: psycopg.connect(postgres_url), pool_size=1) as bad:
            with pytest.raises(ConfigError, match="awaitable"):
                await bad.acquire()

    run(main())


def test_release_is_shielded_from_the_callers_cancellation(postgres_url: str) -> None:
    """A caller cancelled while its connection is being reset still returns it."""

    async def main() -> None:
        async with AsyncPool(postgres_url, pool_size=1, max_overflow=0) as pool:
            conn = await pool.acquire()
            await scalar(conn, "SELECT 1")  # a transaction is open: the return rolls back
            task = asyncio.create_task(pool.release(conn, RuntimeError("the request failed")))
            await asyncio.sleep(0)  # the reset has started
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with pool.connection(timeout=5) as again:  # the same one, reset
                assert await scalar(again, "SELECT 1") == 1
            stats = pool.stats()
            assert (stats.open, stats.in_use, stats.created) == (1, 0, 1)

    run(main())


def test_a_waiter_cancelled_after_the_hand_over_gives_the_connection_back(
    postgres_url: str,
) -> None:
    """The connection is handed to a waiting task, which is cancelled before it runs
    again: it must pass the connection on, not lose it."""

    async def main() -> None:
        async with AsyncPool(postgres_url, pool_size=1, max_overflow=0, timeout=5) as pool:
            held = await pool.acquire()
            waiter = asyncio.create_task(pool.acquire())
            await asyncio.sleep(0.05)  # it is queued
            assert pool.stats().waiting == 1
            await pool.release(held)  # handed to the waiter (not running yet)...
            waiter.cancel()  # ...which is cancelled before it resumes
            with pytest.raises(asyncio.CancelledError):
                await waiter
            stats = pool.stats()
            assert (stats.in_use, stats.idle, stats.waiting) == (0, 1, 0), stats
            async with pool.connection(timeout=0):
                pass

    run(main())


def test_cancellation_storm_keeps_every_invariant(postgres_url: str) -> None:
    """Tasks check out, query, fail, time out and get cancelled at random points (while
    waiting, while a checkout is pinged, while a return is reset): never over the maximum,
    never one connection in two hands, and in the end every connection accounted for and
    the server's sessions equal the pool's."""
    tag = f"dbpool_storm_{os.getpid()}"
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}application_name={tag}"
    rng = random.Random(1512)
    counts = {"served": 0, "timeouts": 0, "cancelled": 0, "errors": 0}

    async def main() -> None:
        async with AsyncPool(
            url, pool_size=3, max_overflow=2, timeout=0.3, pre_ping=True, ping_interval=0
        ) as pool:
            holders: dict[int, int] = {}
            stop = time.monotonic() + 4.0

            async def worker(n: int) -> None:
                while time.monotonic() < stop:
                    try:
                        wait = rng.choice((0.0, 0.005, 0.3, 0.3, 0.3))
                        async with pool.connection(timeout=wait) as conn:
                            entry_id = id(conn.driver_connection)
                            assert entry_id not in holders, "one connection in two hands"
                            holders[entry_id] = n
                            try:
                                assert pool.stats().open <= 5
                                await scalar(conn, "SELECT 1")
                                await asyncio.sleep(rng.random() * 0.01)
                                if rng.random() < 0.2:
                                    raise ValueError("the borrower failed")
                            finally:
                                del holders[entry_id]
                        counts["served"] += 1
                    except PoolTimeout:
                        counts["timeouts"] += 1
                        await asyncio.sleep(0.001)  # timeout=0 fails without awaiting
                    except ValueError:
                        counts["errors"] += 1

            async def canceller(tasks: list[asyncio.Task[None]]) -> None:
                while time.monotonic() < stop:
                    await asyncio.sleep(rng.random() * 0.002)
                    victim = rng.randrange(len(tasks))
                    if not tasks[victim].done():
                        tasks[victim].cancel()
                        counts["cancelled"] += 1
                        try:
                            await tasks[victim]
                        except asyncio.CancelledError:
                            pass
                        tasks[victim] = asyncio.create_task(worker(victim))

            tasks = [asyncio.create_task(worker(n)) for n in range(40)]
            await asyncio.gather(*(canceller(tasks) for _ in range(4)))
            await asyncio.gather(*tasks, return_exceptions=True)
            for _ in range(100):  # shielded resets finish in the background
                if pool.stats().in_use == 0:
                    break
                await asyncio.sleep(0.02)
            stats = pool.stats()
            assert (stats.in_use, stats.waiting, stats.connecting) == (0, 0, 0), stats
            assert stats.open == stats.idle <= 5, stats
            sessions = await _sessions(postgres_url, tag)
            assert sessions == stats.open, (sessions, stats)

    run(main())
    print("cancellation storm:", counts)
    assert counts["served"] > 100 and counts["cancelled"] > 50, counts


async def _sessions(postgres_url: str, tag: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (tag,)
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


def test_close_with_timeout_cancels_what_still_runs(postgres_url: str) -> None:
    tag = f"dbpool_aio_close_{os.getpid()}"
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}application_name={tag}"

    async def main() -> None:
        pool = AsyncPool(url, pool_size=1)
        await pool.open()

        async def long_query() -> None:
            async with pool.connection() as conn:
                await scalar(conn, "SELECT pg_sleep(30)")

        task = asyncio.create_task(long_query())
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await pool.close(timeout=0.2)
        assert time.monotonic() - started < 4.0
        import psycopg

        with pytest.raises(psycopg.Error):  # the query was cancelled, then its connection closed
            await task
        for _ in range(50):
            if await _sessions(postgres_url, tag) == 0:
                break
            await asyncio.sleep(0.05)
        assert await _sessions(postgres_url, tag) == 0
        with pytest.raises(PoolClosed):
            await pool.acquire()

    run(main())


def test_discard_reset_and_restored_settings(postgres_url: str) -> None:
    async def main() -> None:
        async with AsyncPool(
            postgres_url, pool_size=1, max_overflow=0, reset_on_return="discard"
        ) as pool:
            async with pool.connection() as conn:
                pid = await scalar(conn, "SELECT pg_backend_pid()")
                await scalar(conn, "SET statement_timeout = '4321ms'")
                await scalar(conn, "CREATE TEMP TABLE dbpool_aio_secret (v int)")
                await conn.commit()
                await conn.set_autocommit(True)
            async with pool.connection() as conn:
                assert await scalar(conn, "SELECT pg_backend_pid()") == pid
                assert await scalar(conn, "SHOW statement_timeout") == "0"
                assert await scalar(conn, "SELECT to_regclass('pg_temp.dbpool_aio_secret')") is None
                assert conn.autocommit is False

    run(main())


def test_pre_ping_replaces_a_killed_connection(postgres_url: str) -> None:
    async def main() -> None:
        async with AsyncPool(
            postgres_url, pool_size=1, max_overflow=0, pre_ping=True, ping_interval=0
        ) as pool:
            async with pool.connection() as conn:
                pid = await scalar(conn, "SELECT pg_backend_pid()")
            import psycopg

            async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as a:
                await a.execute("SELECT pg_terminate_backend(%s)", (pid,))
            await asyncio.sleep(0.2)
            async with pool.connection() as conn:
                assert await scalar(conn, "SELECT pg_backend_pid()") != pid
            assert pool.stats().closed_by_reason.get("ping_failed") == 1

    run(main())


def _relayed(postgres_url: str) -> tuple[Any, str]:
    """A TCP relay in front of the server (to freeze its answers), and the URL through it."""
    from urllib.parse import urlsplit

    from tcprelay import TCPRelay

    parts = urlsplit(postgres_url)
    relay = TCPRelay(parts.hostname or "127.0.0.1", parts.port or 5432)
    rest = postgres_url.partition("://")[2].partition("/")[2]
    user = f"{parts.username}@" if parts.username else ""
    return relay, f"postgresql://{user}127.0.0.1:{relay.port}/{rest}"


def test_a_ping_cut_short_by_a_cancellation_discards_the_connection(postgres_url: str) -> None:
    """A checkout cancelled while its pre-ping waits, and a maintenance run cancelled while
    its keepalive check waits (close() cancels it): either connection is discarded (its
    state is unknown: psycopg switched autocommit on for the ping), not lent again and not
    lost; close() then finds every slot free."""
    relay, url = _relayed(postgres_url)

    async def main() -> None:
        pool = AsyncPool(url, pool_size=1, max_overflow=0, pre_ping=True, ping_interval=0)
        await pool.open()
        async with pool.connection():
            pass
        relay.latency = 0.4  # the next ping waits for its answer
        checkout = asyncio.create_task(pool.acquire(timeout=5))
        await asyncio.sleep(0.2)
        checkout.cancel()
        with pytest.raises(asyncio.CancelledError):
            await checkout
        relay.latency = 0.0
        stats = pool.stats()
        assert (stats.open, stats.in_use, stats.closed_by_reason.get("ping_failed")) == (
            0,
            0,
            1,
        ), stats
        async with pool.connection() as conn:  # a new one, as the pool opened it
            assert conn.autocommit is False
        await pool.close()

        keeping = AsyncPool(url, pool_size=1, max_overflow=0, keepalive_interval=0.1)
        await keeping.open()
        async with keeping.connection():
            pass
        relay.latency = 0.4
        await asyncio.sleep(0.3)  # the keepalive check is under way, unanswered yet
        assert keeping.stats().checking == 1
        started = time.monotonic()
        await keeping.close(timeout=2)  # cancels maintenance: the checked one is discarded
        assert time.monotonic() - started < 2.0
        assert keeping.stats().open == 0
        relay.latency = 0.0

    try:
        run(main())
    finally:
        relay.close()


def test_wait_ready_cancelled_while_returning_loses_nothing(tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite", reason="aiosqlite is not installed (extra: async)")

    async def slow_checkin(raw: Any) -> None:
        await asyncio.sleep(0.2)

    async def main() -> None:
        url = f"sqlite:///{tmp_path / 'ready.db'}"
        async with AsyncPool(url, pool_size=2, min_idle=2, on_checkin=slow_checkin) as pool:
            ready = asyncio.create_task(pool.wait_ready(timeout=5))
            await asyncio.sleep(0.1)  # both checked out, the first return under way
            ready.cancel()
            with pytest.raises(asyncio.CancelledError):
                await ready
            for _ in range(50):
                if pool.stats().in_use == 0:
                    break
                await asyncio.sleep(0.05)
            stats = pool.stats()  # (maintenance may have opened min_idle more meanwhile)
            assert stats.in_use == 0 and stats.open == stats.idle >= 2, stats
            assert stats.reclaimed == 0, stats  # returned, not found dropped

    run(main())


def test_leak_report_maintenance_drain_and_resize(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The rest of Pool's API on AsyncPool: a checkout held past leak_threshold is reported
    with the task and the line; idle_timeout closes idle connections; drain() retires
    every connection; resize() hands new slots to waiting tasks."""

    async def main() -> None:
        async with AsyncPool(
            postgres_url, pool_size=1, max_overflow=0, leak_threshold=0.1, idle_timeout=0.3
        ) as pool:
            held = await pool.acquire()  # LEAK-SITE
            await asyncio.sleep(0.2)
            await pool.run_maintenance()
            assert "possible leak" in caplog.text and "test_aio.py" in caplog.text
            assert "task " in caplog.text
            assert pool.stats().leaks_detected == 1
            waiting = asyncio.create_task(pool.acquire(timeout=5))
            await asyncio.sleep(0.05)
            pool.resize(pool_size=2)  # the waiting task gets the new slot
            second = await waiting
            assert pool.stats().open == 2
            assert pool.drain() == 2  # both lent: closed when they come back
            await pool.release(held)
            await pool.release(second)
            assert pool.stats().closed_by_reason.get("drained") == 2
            async with pool.connection():  # a new one
                pass
            await asyncio.sleep(0.4)
            await pool.run_maintenance()
            assert pool.stats().open == 0  # idle past idle_timeout
            assert pool.stats().closed_by_reason.get("idle") == 1

    with caplog.at_level(logging.WARNING, logger="flask_dbpool"):
        run(main())


def test_forked_child_opens_its_own(postgres_url: str) -> None:
    """After fork the child forgets the parent's connections (untouched) and opens the
    pool again in its own loop; the parent's connection still works."""
    from forking import in_child

    async def parent_side() -> tuple[AsyncPool, Any]:
        pool = AsyncPool(postgres_url, pool_size=1)
        await pool.open()
        conn = await pool.acquire()
        await scalar(conn, "SELECT 1")
        await conn.commit()
        await pool.release(conn)
        return pool, asyncio.get_running_loop()

    loop = asyncio.new_event_loop()
    try:
        pool, _ = loop.run_until_complete(parent_side())

        def child() -> str:
            async def use() -> int:
                await pool.open()
                async with pool.connection() as conn:
                    return int(await scalar(conn, "SELECT 7"))

            return f"{pool.stats().open} {asyncio.run(use())}"

        assert in_child(child) == "0 7"

        async def again() -> None:
            async with pool.connection() as conn:
                assert await scalar(conn, "SELECT 1") == 1
            assert pool.stats().created == 1
            await pool.close()

        loop.run_until_complete(again())
    finally:
        loop.close()
