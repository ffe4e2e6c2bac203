"""Behind a real PgBouncer (Debian's 1.18, started by ``tests/bouncer.py`` in front of the
test server): the ``pgbouncer`` option. In transaction mode, psycopg 3's automatic prepared
statements collide between clients sharing server sessions; with the option they never
happen. The same load without the option shows the errors, so the test can fail."""

from __future__ import annotations

import logging
import re
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

    threads = [threading.Thread(target=work, args=(pool, i)) for pool in pools for i in range(4)]
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


def test_doctor_sizes_the_fleet_behind_pgbouncer(transaction_bouncer: Bouncer) -> None:
    from flask import Flask

    from flask_dbpool import DBPool

    app = Flask("doctor-bouncer")
    app.config.update(
        DBPOOL_URL=transaction_bouncer.url(),
        DBPOOL_PGBOUNCER="transaction",
        DBPOOL_POOL_SIZE=4,
        DBPOOL_MAX_OVERFLOW=1,
    )
    db = DBPool(app)
    admin = transaction_bouncer.admin_url()
    runner = app.test_cli_runner()

    def doctor(*args: str) -> Any:
        return runner.invoke(args=["dbpool", "doctor", "--pgbouncer-admin", admin, *args])

    try:
        ok = doctor("--workers", "3")
        assert ok.exit_code == 0, ok.output
        assert "through PgBouncer" in ok.output
        for line in (
            r"^pool_mode\s+transaction$",
            r"^max_client_conn\s+200$",
            r"^databases\s+test=2$",
            r"^client connections\s+3 x 5 = 15$",
            r"^server connections\s+2 \(its pools, one user\)$",
        ):
            assert re.search(line, ok.output, re.M), (line, ok.output)
        assert "OK: fits, with 185 client and" in ok.output
        clients = doctor("--workers", "41")  # 41 x 5 = 205 > 200
        assert clients.exit_code == 1
        assert "raise max_client_conn to at least 205" in clients.output
        server = doctor("--workers", "1", "--others", "1000")
        assert server.exit_code == 1 and "lower default_pool_size" in server.output
        down = runner.invoke(
            args=["dbpool", "doctor", "--pgbouncer-admin", "postgresql://pgbouncer@127.0.0.1:1/x"]
        )
        assert down.exit_code == 2 and "cannot read PgBouncer's admin console" in down.output
    finally:
        db.get_pool(app).close()


def test_pgbouncer_advice_arithmetic() -> None:
    from flask_dbpool.drivers.base import ServerLimits
    from flask_dbpool.sizing import pgbouncer_advice

    limits = ServerLimits(server="PostgreSQL 15", max_connections=100, reserved=3, sessions=0)
    settings = {
        "max_client_conn": "500",
        "default_pool_size": "20",
        "reserve_pool_size": "5",
        "max_db_connections": "0",
    }
    advice = pgbouncer_advice(
        limits, settings, {"app": -1, "reports": 10}, workers=8, per_worker=15
    )
    assert (advice.clients, advice.server_connections, advice.budget) == (120, 40, 97)
    assert advice.fits
    capped = pgbouncer_advice(
        limits, {**settings, "max_db_connections": "12"}, {"app": -1}, workers=1, per_worker=1
    )
    assert capped.server_connections == 12
    tight = pgbouncer_advice(limits, settings, {f"db{i}": -1 for i in range(5)}, workers=1,
                             per_worker=1)  # fmt: skip
    assert not tight.fits and "lower default_pool_size to 14" in tight.problems[0]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        pgbouncer_advice(limits, settings, {}, workers=0, per_worker=1)
