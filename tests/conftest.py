"""Real-database fixtures. No database or driver is ever mocked.

``sqlite_url``
    A temp file.
``postgres_url``
    ``DBPOOL_TEST_POSTGRES_URL`` when set; else a server on 127.0.0.1:5432 that accepts
    ``postgres@127.0.0.1:5432/test`` (checked by connecting); else a throwaway cluster started
    for the session (see ``tests/pgcluster.py``); else skipped with the reason.
``mysql_url``
    ``DBPOOL_TEST_MYSQL_URL`` when set; else a server on 127.0.0.1:3306 that accepts
    ``root@127.0.0.1:3306/test`` (checked by connecting); else skipped with the reason.
``throwaway_postgres``
    A :class:`~pgcluster.ThrowawayCluster` of the session's own, always (for tests that stop,
    restart or kill the server). Skipped when no PostgreSQL binaries are available.
``backend``
    Parametrized over sqlite, postgres and mysql: a :class:`~backends.Backend`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from backends import BACKEND_NAMES, Backend, MakePool
from flask_dbpool import Pool
from pgcluster import ClusterUnavailable, ThrowawayCluster

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
LOCAL_MYSQL = "mysql://root@127.0.0.1:3306/test"


def _try_postgres(host: str, port: int, user: str, dbname: str) -> str | None:
    """``None`` if a PostgreSQL session can be opened, else why not."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        with psycopg.connect(
            host=host, port=port, user=user, dbname=dbname, connect_timeout=3
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return None


def _try_mysql(host: str, port: int, user: str, database: str) -> str | None:
    try:
        import pymysql
    except ImportError as exc:
        return f"pymysql is not installed ({exc})"
    try:
        conn = pymysql.connect(
            host=host, port=port, user=user, database=database, connect_timeout=3
        )
        conn.close()
    except pymysql.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class _PostgresSource:
    """Finds (once per session) the PostgreSQL the suite runs against, and why not."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.why = ""
        self.cluster: ThrowawayCluster | None = None
        self._resolved = False

    def resolve(self) -> str | None:
        if self._resolved:
            return self.url
        self._resolved = True
        env = os.environ.get("DBPOOL_TEST_POSTGRES_URL")
        if env:
            self.url = env
            return env
        local_error = _try_postgres("127.0.0.1", 5432, "postgres", "test")
        if local_error is None:
            self.url = LOCAL_POSTGRES
            return self.url
        try:
            cluster = ThrowawayCluster()
            cluster.start()
        except Exception as exc:  # no binaries, or they would not run here
            self.why = (
                "no DBPOOL_TEST_POSTGRES_URL; no usable server on 127.0.0.1:5432 "
                f"({local_error}); no throwaway cluster ({exc})"
            )
            return None
        self.cluster = cluster
        self.url = cluster.url
        return self.url

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.destroy()
            self.cluster = None


@pytest.fixture(scope="session")
def _postgres_source() -> Iterator[_PostgresSource]:
    source = _PostgresSource()
    yield source
    source.close()


@pytest.fixture(scope="session")
def postgres_url(_postgres_source: _PostgresSource) -> str:
    url = _postgres_source.resolve()
    if url is None:
        pytest.skip(f"PostgreSQL unavailable: {_postgres_source.why}")
    return url


@pytest.fixture(scope="session")
def mysql_url() -> str:
    env = os.environ.get("DBPOOL_TEST_MYSQL_URL")
    if env:
        return env
    error = _try_mysql("127.0.0.1", 3306, "root", "test")
    if error is not None:
        pytest.skip(
            "MySQL/MariaDB unavailable: no DBPOOL_TEST_MYSQL_URL and no usable server on "
            f"127.0.0.1:3306 ({error})"
        )
    return LOCAL_MYSQL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(scope="session")
def throwaway_postgres() -> Iterator[ThrowawayCluster]:
    """A PostgreSQL cluster of this session's own, whatever other server exists."""
    try:
        cluster = ThrowawayCluster()
    except ClusterUnavailable as exc:
        pytest.skip(f"no throwaway PostgreSQL cluster: {exc}")
    try:
        cluster.start()
    except Exception:
        cluster.destroy()
        raise
    yield cluster
    cluster.destroy()


@pytest.fixture(params=BACKEND_NAMES)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name: str = request.param
    base_url = ""
    if name == "postgres":
        base_url = request.getfixturevalue("postgres_url")
    elif name == "mysql":
        base_url = request.getfixturevalue("mysql_url")
    b = Backend.create(name, base_url, tmp_path)
    yield b
    b.cleanup()


@pytest.fixture
def make_pool() -> Iterator[MakePool]:
    """``make_pool(target, **options)``: a Pool closed at teardown (before the backend's
    cleanup drops its tables, since this fixture is set up after ``backend``)."""
    pools: list[Pool] = []

    def make(target: Any, **options: Any) -> Pool:
        pool = Pool(target, **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()
