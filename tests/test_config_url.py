"""Configuration validation, URL handling, callable targets and password redaction."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from backends import Backend, MakePool, Worker, query, wait_until
from flask_dbpool import ConfigError, Pool, PoolConfig, PoolError, PoolTimeout

# ---------------------------------------------------------------------- pool options

INVALID_OPTIONS: list[tuple[str, Any]] = [
    ("pool_size", 0),
    ("pool_size", -1),
    ("pool_size", True),
    ("pool_size", 2.0),
    ("pool_size", "3"),
    ("pool_size", None),
    ("max_overflow", -1),
    ("max_overflow", False),
    ("max_overflow", 1.5),
    ("max_overflow", "0"),
    ("timeout", 0),
    ("timeout", -1),
    ("timeout", 0.0),
    ("timeout", math.nan),
    ("timeout", math.inf),
    ("timeout", -math.inf),
    ("timeout", "30"),
    ("timeout", True),
    ("timeout", None),
    ("timeout", threading.TIMEOUT_MAX * 2),
    ("name", ""),
    ("name", 5),
    ("name", None),
    ("name", "x" * 201),
    ("reset_on_return", 1),
    ("reset_on_return", "yes"),
    ("reset_on_return", None),
    ("lifo", 0),
    ("lifo", "true"),
]


@pytest.mark.parametrize(("option", "value"), INVALID_OPTIONS, ids=repr)
def test_invalid_option_raises_config_error_naming_it(
    sqlite_url: str, option: str, value: Any
) -> None:
    with pytest.raises(ConfigError) as info:
        Pool(sqlite_url, **{option: value})
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, PoolError)
    assert option in str(err)


@pytest.mark.parametrize(
    "options",
    [
        {"pool_size": 1, "max_overflow": 0},
        {"pool_size": 50, "max_overflow": 100, "timeout": 0.001},
        {"timeout": 5, "name": "n" * 200, "reset_on_return": False, "lifo": False},
    ],
)
def test_valid_options_are_accepted(sqlite_url: str, options: dict[str, Any]) -> None:
    with Pool(sqlite_url, **options) as pool:
        for key, value in options.items():
            assert getattr(pool.config, key) == value
        assert pool.config.max_open == pool.config.pool_size + pool.config.max_overflow
        assert isinstance(pool.config.timeout, float)


def test_unknown_option_suggests_the_right_name() -> None:
    with pytest.raises(ConfigError, match=r"pool_sise.*did you mean pool_size"):
        PoolConfig.from_options({"pool_sise": 3})
    with pytest.raises(ConfigError, match="valid options are"):
        PoolConfig.from_options({"zzz": 3})


def test_config_error_names_the_user_facing_key() -> None:
    def label(name: str) -> str:
        return f"DBPOOL_{name.upper()}"

    with pytest.raises(ConfigError, match="DBPOOL_POOL_SIZE"):
        PoolConfig.from_options({"pool_size": 0}, label=label)


# ---------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "url",
    ["oracle://scott@db.example/orcl", "postgresql+asyncpg://u@h/db", "mongodb://h/db"],
)
def test_unknown_scheme_lists_the_supported_ones(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        Pool(url)
    message = str(info.value)
    assert urlsplit(url).scheme in message
    for scheme in ("postgresql", "postgresql+psycopg2", "mysql", "mariadb", "sqlite"):
        assert scheme in message


@pytest.mark.parametrize("url", ["127.0.0.1:5432/test", "", "://host/db", "test.db"])
def test_url_without_scheme(url: str) -> None:
    with pytest.raises(ConfigError, match="no scheme"):
        Pool(url)


@pytest.mark.parametrize(
    ("url", "option"),
    [
        ("mysql://root@127.0.0.1:3306/test?bogus_option=1", "bogus_option"),
        ("mariadb://root@127.0.0.1/test?charset=utf8mb4&sslmode=require", "sslmode"),
        ("sqlite:///x.db?cache=shared", "cache"),
        ("sqlite:///:memory:?mode=memory", "mode"),
    ],
)
def test_unsupported_url_option_is_named(url: str, option: str) -> None:
    with pytest.raises(ConfigError) as info:
        Pool(url)
    assert repr(option) in str(info.value)
    assert "supported" in str(info.value)


@pytest.mark.parametrize(
    ("url", "option"),
    [
        ("mysql://root@127.0.0.1/test?connect_timeout=soon", "connect_timeout"),
        ("mysql://root@127.0.0.1/test?autocommit=maybe", "autocommit"),
        ("sqlite:///x.db?timeout=long", "timeout"),
    ],
)
def test_invalid_url_option_value_is_named(url: str, option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        Pool(url)


@pytest.mark.parametrize("url", ["postgresql://u@h:notaport/db", "mysql://u@h:99999999/db"])
def test_invalid_port(url: str) -> None:
    with pytest.raises(ConfigError, match="port"):
        Pool(url)


@pytest.mark.parametrize("target", [42, None, b"sqlite:///x.db", ["sqlite:///x.db"]])
def test_target_must_be_url_or_callable(target: Any) -> None:
    with pytest.raises(ConfigError, match="URL string or a zero-argument callable"):
        Pool(target)


def test_url_is_not_connected_at_construction() -> None:
    # Lazy: a pool for an unreachable server builds fine, and says where it points.
    pool = Pool("postgresql://nobody@127.0.0.1:1/none")
    assert pool.target == "postgresql://nobody@127.0.0.1:1/none"
    assert pool.stats().open == 0


# ---------------------------------------------------------------------- callable targets


def test_callable_target_works_and_its_driver_is_detected(
    backend: Backend, make_pool: MakePool
) -> None:
    table = backend.new_table()
    pool = make_pool(backend.raw_connect, pool_size=2, max_overflow=0)
    assert pool.target.startswith("<") and "raw_connect" in pool.target
    conn = pool.acquire()
    query(conn, backend.sql(f"INSERT INTO {table} VALUES (%s, %s)"), (1, "x"))
    pool.release(conn)
    assert backend.count_rows(table) == 0  # reset on return
    # Used from another thread than the one that opened it (sqlite: check_same_thread=False).
    with pool.connection() as conn:
        query(conn, backend.sql(f"INSERT INTO {table} VALUES (%s, %s)"), (2, "y"))
        conn.commit()

    def elsewhere() -> list[tuple[Any, ...]]:
        with pool.connection() as conn:
            return query(conn, "SELECT 1")

    other = Worker(elsewhere, "other-thread")
    other.start()
    assert other.finish(10) == [(1,)]
    assert backend.count_rows(table) == 1
    assert pool.stats().created == 1
    if backend.name == "mysql":
        # The generic driver (no transaction flag) would send a ROLLBACK on every return;
        # the detected PyMySQL driver reads the server status flag and sends none.
        with pool.connection() as conn:
            before = backend.rollback_count(conn)  # type: ignore[attr-defined]
        for _ in range(3):
            with pool.connection() as conn:
                query(conn, "SELECT 1")
        with pool.connection() as conn:
            assert backend.rollback_count(conn) == before  # type: ignore[attr-defined]


def test_callable_killed_connection_is_discarded(backend: Backend, make_pool: MakePool) -> None:
    """The detected driver classifies a killed session as broken for a callable target too."""
    if not backend.has_server:
        pytest.skip("sqlite has no server session to kill")
    pool = make_pool(backend.raw_connect, pool_size=1, max_overflow=0)
    conn = pool.acquire()
    dead = backend.session_id(conn)
    backend.kill(dead)
    with pytest.raises(backend.operational_error):
        query(conn, "SELECT 1")
    pool.release(conn)
    assert pool.stats().closed == 1
    with pool.connection() as conn:
        assert backend.session_id(conn) != dead


def test_sqlite_callable_target_for_memory_database(make_pool: MakePool) -> None:
    pool = make_pool(lambda: sqlite3.connect(":memory:", check_same_thread=False), pool_size=1)
    assert "lambda" in pool.target
    conn = pool.acquire()
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.execute("INSERT INTO t VALUES (1)")
    pool.release(conn)  # without a commit (a ``with`` block would commit)
    with pool.connection() as conn:
        # Same connection (pool_size=1), and the uncommitted insert was rolled back.
        assert conn.execute("SELECT COUNT(*) FROM t").fetchall() == [(0,)]


# ---------------------------------------------------------------------- redaction

SECRET = "SeCrEt"


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        if record.exc_info and record.exc_info[1] is not None:
            text += repr(record.exc_info[1])
        assert SECRET not in text, f"password in log record: {record!r}"
    assert SECRET not in caplog.text


def _chain(exc: BaseException) -> str:
    """str and repr of an exception and of everything it was chained from."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://postgres:{SECRET}%40pw@127.0.0.1:1/test",
        f"postgresql://postgres@127.0.0.1:1/test?password={SECRET}2&connect_timeout=5",
        f"postgresql://postgres:{SECRET}@127.0.0.1:1/test?password={SECRET}3",
    ],
)
def test_password_not_shown_when_connecting_fails(
    url: str, debug_logs: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("psycopg")
    import psycopg

    pool = Pool(url, pool_size=1, max_overflow=0, timeout=0.2, name="secret-pool")
    assert SECRET not in repr(pool)
    assert SECRET not in str(pool.target)
    assert pool.target.startswith("postgresql://postgres")
    assert "127.0.0.1:1/test" in pool.target
    for _ in range(2):  # the slot was given back each time
        with pytest.raises(PoolTimeout) as info:
            pool.acquire()
        assert isinstance(info.value.__cause__, psycopg.OperationalError)
        assert "Connection refused" in str(info.value)
        assert SECRET not in _chain(info.value)
        # A reconnection attempt made for this caller while it waited (every recovery step)
        # may still be on its way: it fails too, and gives its slot back.
        wait_until(
            lambda: (pool.stats().open, pool.stats().connecting) == (0, 0),
            timeout=5,
            what="no slot taken once the attempts failed",
        )
        s = pool.stats()
        assert (s.open, s.connecting, s.in_use, s.waiting) == (0, 0, 0, 0), s
        assert s.connect_errors >= 1
    pool.close()
    assert SECRET not in debug_logs.text
    assert SECRET not in repr(pool)


def test_password_not_shown_in_timeout_message(
    postgres_url: str, debug_logs: pytest.LogCaptureFixture
) -> None:
    import psycopg

    parts = urlsplit(postgres_url)
    if parts.password:
        pytest.skip("the configured PostgreSQL URL carries a real password")
    host, port, path = parts.hostname, parts.port or 5432, parts.path
    urls = [
        f"postgresql://{parts.username or 'postgres'}:{SECRET}%40pw@{host}:{port}{path}",
        f"postgresql://{parts.username or 'postgres'}@{host}:{port}{path}?password={SECRET}",
    ]
    for url in urls:
        pool = Pool(url, pool_size=1, max_overflow=0, name="secret-timeout")
        try:
            held = pool.acquire()
        except psycopg.OperationalError as exc:
            pool.close()
            pytest.skip(f"the server does not use trust authentication: {exc}")
        with pytest.raises(PoolTimeout) as info:
            pool.acquire(timeout=0.05)
        message = str(info.value)
        assert "secret-timeout" in message and "***" in message
        assert SECRET not in _chain(info.value)
        assert SECRET not in repr(pool)
        held.invalidate()  # logs a discard
        pool.close()


@pytest.mark.parametrize(
    "url",
    [
        f"oracle://scott:{SECRET}@db.example/orcl",
        f"postgresql+nosuchdriver://u:{SECRET}@h/db",
        f"u:{SECRET}@host/db",
        f"postgresql://u:{SECRET}@h:notaport/db",
        f"mysql://u:{SECRET}@h/db?bogus=1",
        f"mysql://u@h/db?password={SECRET}",
        f"mysql://u:{SECRET}@h/db?connect_timeout=soon&password={SECRET}",
        f"sqlite:///x.db?password={SECRET}",
        f"sqlite:///x.db?timeout=x&password={SECRET}",
    ],
)
def test_password_not_shown_in_config_errors(
    url: str, debug_logs: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError) as info:
        Pool(url)
    assert SECRET not in _chain(info.value)


def test_pool_takes_every_option_by_name() -> None:
    """An option PoolConfig knows but Pool's signature lacks would land in **unknown, pass
    validation there, and be dropped silently."""
    import inspect

    from flask_dbpool import Pool
    from flask_dbpool.config import PoolConfig

    params = set(inspect.signature(Pool).parameters)
    assert PoolConfig.option_names() <= params, PoolConfig.option_names() - params
