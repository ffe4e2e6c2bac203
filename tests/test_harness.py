"""The test harness itself: the throwaway PostgreSQL cluster and the backend helpers.

The throwaway cluster is the fallback used when no PostgreSQL server is configured or running;
these tests exercise it even when a server exists, so the fallback cannot rot unnoticed.
"""

from __future__ import annotations

import psycopg
import pytest

from backends import Backend, query, wait_until
from flask_dbpool import Pool
from pgcluster import ClusterUnavailable, ThrowawayCluster, find_bindir


@pytest.fixture
def cluster() -> ThrowawayCluster:
    if find_bindir() is None:
        pytest.skip("no PostgreSQL server binaries to start a throwaway cluster with")
    try:
        return ThrowawayCluster()
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))


def test_throwaway_cluster_lifecycle(cluster: ThrowawayCluster) -> None:
    try:
        cluster.start()
        assert cluster.running
        assert cluster.base is not None and cluster.datadir.is_dir()
        with psycopg.connect(cluster.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT current_database(), 40 + 2").fetchone() == ("test", 42)
            # Listens on loopback only.
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)

        # The pool works against it, through its URL.
        with Pool(cluster.url, pool_size=1, name="throwaway") as pool:
            with pool.connection() as conn:
                assert query(conn, "SELECT 1") == [(1,)]

        # stop(): nothing accepts connections any more.
        cluster.stop()
        assert not cluster.running
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(cluster.url, connect_timeout=2)

        # restart() on the same port, with the same data.
        cluster.start()
        with psycopg.connect(cluster.url, connect_timeout=5) as conn:
            conn.execute("CREATE TABLE survives (x int)")
            conn.commit()
        cluster.restart()
        with psycopg.connect(cluster.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT count(*) FROM survives").fetchone() == (0,)

        # kill(): a crash; the session in use breaks, and start() recovers the cluster.
        victim = psycopg.connect(cluster.url, connect_timeout=5)
        cluster.kill()
        assert not cluster.running
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        victim.close()
        cluster.start()
        with psycopg.connect(cluster.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        base = cluster.base
        cluster.destroy()
    assert base is not None and not base.exists()
    assert not cluster.running


def test_throwaway_postgres_fixture(throwaway_postgres: ThrowawayCluster) -> None:
    assert throwaway_postgres.running
    with Pool(throwaway_postgres.url, pool_size=2, name="fixture") as pool:
        with pool.connection() as conn:
            assert query(conn, "SELECT current_setting('port')::int") == [
                (throwaway_postgres.port,)
            ]


def test_backend_helpers(backend: Backend) -> None:
    """session ids, tagged URLs and session counting agree with what the server sees."""
    table = backend.new_table()
    assert backend.count_rows(table) == 0
    if not backend.has_server:
        with pytest.raises(pytest.skip.Exception):
            backend.tagged()
        return
    url, count_sessions = backend.tagged()
    assert count_sessions() == 0
    with Pool(url, pool_size=2, name="helpers") as pool:
        with pool.connection() as a, pool.connection() as b:
            sid_a, sid_b = backend.session_id(a), backend.session_id(b)
            assert sid_a != sid_b
            assert backend.client_session_id(a.driver_connection) == sid_a
            assert count_sessions.ids() == {sid_a, sid_b}
        backend.kill(sid_a)
        wait_until(lambda: count_sessions() == 1, what="the killed session to go")
    wait_until(lambda: count_sessions() == 0, what="the pool's sessions to close")
