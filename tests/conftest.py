"""Real-database fixtures.

``sqlite_url`` is a temp file. ``postgres_url`` / ``mysql_url`` come from
``DBPOOL_TEST_POSTGRES_URL`` / ``DBPOOL_TEST_MYSQL_URL`` when set, else from a server found on
127.0.0.1 (5432 / 3306). A backend that cannot be had is skipped with the reason.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _find_postgres() -> tuple[str | None, str]:
    url = os.environ.get("DBPOOL_TEST_POSTGRES_URL")
    if url:
        return url, "DBPOOL_TEST_POSTGRES_URL"
    if _port_open("127.0.0.1", 5432):
        return "postgresql://postgres@127.0.0.1:5432/test", "server on 127.0.0.1:5432"
    return None, "no DBPOOL_TEST_POSTGRES_URL and nothing listening on 127.0.0.1:5432"


def _find_mysql() -> tuple[str | None, str]:
    url = os.environ.get("DBPOOL_TEST_MYSQL_URL")
    if url:
        return url, "DBPOOL_TEST_MYSQL_URL"
    if _port_open("127.0.0.1", 3306):
        return "mysql://root@127.0.0.1:3306/test", "server on 127.0.0.1:3306"
    return None, "no DBPOOL_TEST_MYSQL_URL and nothing listening on 127.0.0.1:3306"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url, why = _find_postgres()
    if url is None:
        pytest.skip(f"PostgreSQL unavailable: {why}")
    return url


@pytest.fixture(scope="session")
def mysql_url() -> str:
    url, why = _find_mysql()
    if url is None:
        pytest.skip(f"MySQL/MariaDB unavailable: {why}")
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'test.db'}"
