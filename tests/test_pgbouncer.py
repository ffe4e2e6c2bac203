"""Behind a real PgBouncer (Debian's 1.18, started by ``tests/bouncer.py`` in front of the
test server): the ``pgbouncer`` option. In transaction mode, psycopg 3's automatic prepared
statements collide between clients sharing server sessions; with the option they never
happen. The same load without the option shows the errors, so the test can fail."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from bouncer import Bouncer, BouncerUnavailable
from flask_dbpool import ConfigError, Pool


def _bouncer(postgres_url: str, mode: str, pool_size: int) -> Iterator[Bouncer]:
    parts = urlsplit(postgres_url)
    try:
        bouncer = Bouncer(
            parts.hostname or "127.0.0.1",
            parts.port or 5432,
            parts.path.lstrip("/"),
            mode,
            pool_size=pool_size,
        )
    except BouncerUnavailable as error:
        pytest.skip(str(error))
    with bouncer:
        yield bouncer


@pytest.fixture(scope="module")
def transaction_bouncer(postgres_url: str) -> Iterator[Bouncer]:
    # Fewer server sessions (2) than client connections (2 pools x 2): PgBouncer hands each
    # transaction whichever server session is free, as it does under load.
    yield from _bouncer(postgres_url, "transaction", 2)


@pytest.fixture(scope="module")
def session_bouncer(postgres_url: str) -> Iterator[Bouncer]:
    # Session mode ties a server session to each client connection: enough for all of them.
    yield from _bouncer(postgres_url, "session", 10)


def _two_workers(url: str, **options: Any) -> list[str]:
    """Two pools (as two gunicorn workers), 4 threads each repeating one parameterised
    query 25 times: the errors they got, by class name."""
    errors: list[str] = []
    lock = threading.Lock()
    pools = [Pool(url, pool_size=2, max_overflow=0, timeout=10, **options) for _ in range(2)]

    def work(pool: Pool, worker: int) -> None:
        for step in range(25):
            try:
                with pool.connection() as conn:
                    cursor = conn.cursor()
                    cursor.execute("SELECT %s::int * 2", (worker * 100 + step,))
                    assert cursor.fetchone() == ((worker * 100 + step) * 2,)
            except Exception as error:  # collected: the test says which
                with lock:
                    errors.append(type(error).__name__)

    threads = [
        threading.Thread(target=work, args=(pool, i)) for pool in pools for i in range(4)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for pool in pools:
            pool.close()
    return errors


def test_without_the_option_prepared_statements_collide(transaction_bouncer: Bouncer) -> None:
    errors = _two_workers(transaction_bouncer.url())
    assert errors, "no collision: this test could not tell the option's effect"
    assert set(errors) <= {"DuplicatePreparedStatement", "InvalidSqlStatementName"}, errors


def test_with_the_option_nothing_is_prepared(transaction_bouncer: Bouncer) -> None:
    errors = _two_workers(transaction_bouncer.url(), pgbouncer="transaction")
    assert errors == []
    with Pool(transaction_bouncer.url(), pgbouncer="transaction") as pool:
        with pool.connection() as conn:
            assert conn.driver_connection.prepare_threshold is None


def test_session_mode_needs_nothing(session_bouncer: Bouncer) -> None:
    assert _two_workers(session_bouncer.url(), pgbouncer="session") == []


def test_settings_that_make_no_sense_behind_pgbouncer(
    transaction_bouncer: Bouncer, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError, match=r"pgbouncer must be None, 'transaction' or 'session'"):
        Pool(transaction_bouncer.url(), pgbouncer="statement")
    with pytest.raises(ConfigError, match=r"reset_on_return='discard' makes no sense"):
        Pool(transaction_bouncer.url(), pgbouncer="transaction", reset_on_return="discard")
    with caplog.at_level(logging.WARNING, logger="flask_dbpool.pool"):
        Pool(
            transaction_bouncer.url(),
            pgbouncer="transaction",
            on_connect=lambda raw: raw.execute("SET statement_timeout = 1000"),
        ).close()
    assert any("SET LOCAL" in record.getMessage() for record in caplog.records)


def test_the_flask_key(transaction_bouncer: Bouncer) -> None:
    from flask import Flask

    from flask_dbpool import DBPool

    app = Flask("behind-bouncer")
    app.config.update(DBPOOL_URL=transaction_bouncer.url(), DBPOOL_PGBOUNCER="transactions")
    with pytest.raises(ConfigError, match="DBPOOL_PGBOUNCER must be None"):
        DBPool(app)
    app.config["DBPOOL_PGBOUNCER"] = "transaction"
    db = DBPool(app)
    try:
        with app.app_context():
            assert db.connection.driver_connection.prepare_threshold is None
    finally:
        db.get_pool(app).close()
