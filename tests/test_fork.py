"""Fork safety: a forked child never uses or terminates the parent's sessions."""

from __future__ import annotations

import time

import pytest

from backends import Backend, MakePool, query
from flask_dbpool import Pool, PoolError
from forking import in_child


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_child_gets_fresh_sessions_and_parent_sessions_survive(
    backend: Backend, make_pool: MakePool
) -> None:
    pool = make_pool(backend.url, pool_size=2, max_overflow=0)
    pool.warm_up()
    held = pool.acquire()  # lent at fork time: must become inert in the child
    parent_ids = {backend.session_id(held)}
    with pool.connection() as conn:
        parent_ids.add(backend.session_id(conn))
    assert len(parent_ids) == 2

    def child() -> str:
        stats = pool.stats()
        assert (stats.open, stats.idle, stats.in_use) == (0, 0, 0), stats
        with pool.connection() as conn:
            child_id = backend.session_id(conn)
        with pytest.raises(PoolError, match="fork"):
            pool.release(held)
        held.close()  # harmless no-op in the child
        pool.close()
        return str(child_id)

    child_id = in_child(child)
    assert child_id not in {str(i) for i in parent_ids}
    # Both parent sessions are alive: neither used nor terminated by the child.
    assert backend.session_id(held) in parent_ids
    with pool.connection() as conn:
        assert backend.session_id(conn) in parent_ids
        assert query(conn, "SELECT 1") == [(1,)]
    held.close()
    stats = pool.stats()
    assert (stats.open, stats.created, stats.closed) == (2, 2, 0), stats


def test_sqlite_pool_starts_emptyin_child(sqlite_url: str) -> None:
    with Pool(sqlite_url, pool_size=2) as pool:
        pool.warm_up()

        def child() -> str:
            assert pool.stats().open == 0
            with pool.connection() as conn:
                return str(query(conn, "SELECT 41 + 1")[0][0])

        assert in_child(child) == "42"
        assert pool.stats().open == 2


def test_with_block_spanning_fork_exits_cleanlyin_child(sqlite_url: str) -> None:
    with Pool(sqlite_url, pool_size=1) as pool:
        with pool.connection() as conn:

            def child() -> str:
                conn.__exit__(None, None, None)  # what leaving the `with` does in the child
                assert conn.returned
                with pool.connection() as fresh:
                    return str(query(fresh, "SELECT 7")[0][0])

            assert in_child(child) == "7"
        assert pool.stats().idle == 1


def test_with_block_spanning_fork_commits_nothing_in_the_child(sqlite_url: str) -> None:
    """A ``with`` block commits when it ends (issue 17), but not in a forked child for a
    connection lent at fork time: that would commit the parent's half-done transaction (or
    hang on a driver lock another parent thread held)."""
    with Pool(sqlite_url, pool_size=1) as pool:
        with pool.connection() as conn:
            conn.execute("CREATE TABLE t (x INTEGER)")
        with pytest.raises(RuntimeError), pool.connection() as conn:
            conn.execute("INSERT INTO t VALUES (1)")  # open, not committed, at the fork

            def child() -> str:
                conn.__exit__(None, None, None)  # the child leaves the `with` normally
                return "ok"

            assert in_child(child) == "ok"
            raise RuntimeError("the parent rolls its transaction back")
        with pool.connection() as conn:
            assert query(conn, "SELECT count(*) FROM t") == [(0,)]


def test_fork_while_another_thread_queries_does_not_hang_the_child(sqlite_url: str) -> None:
    """The busy connection's driver lock is held by a thread that does not exist in the
    child: the child must not try to close that connection."""
    import threading

    with Pool(sqlite_url, pool_size=2) as pool:
        busy = pool.acquire()
        started = threading.Event()

        def long_query() -> None:
            started.set()
            query(
                busy,
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                "WHERE x < 3000000) SELECT count(*) FROM c",
            )

        worker = threading.Thread(target=long_query, daemon=True)
        worker.start()
        started.wait(5)
        time.sleep(0.05)  # let it get inside sqlite3

        def child() -> str:
            # Only pool calls: opening a new SQLite connection here could itself block on a
            # SQLite-global mutex the parent's querying thread held at fork time.
            busy.close()  # returning the inherited handle must not touch the connection
            pool.close(timeout=1)
            return str(pool.stats().open)

        assert in_child(child) == "0"  # a hang here would trip the test timeout
        worker.join(60)
        busy.close()


def test_observers_and_use_time_tracking_survive_fork(sqlite_url: str) -> None:
    """Exporters set a pool up once (gunicorn --preload: in the parent): a worker must keep
    feeding them."""
    events: list[str] = []
    with Pool(sqlite_url, pool_size=2) as pool:
        pool.add_observer(lambda event, seconds: events.append(event))
        pool.track_use_time()

        def child() -> str:
            events.clear()
            with pool.connection():
                pass
            return f"{sorted(events)} {pool.stats().use_time.count}"

        assert in_child(child) == "['create', 'use'] 1"
