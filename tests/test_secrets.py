"""Secrets, fuzzed: passwords made of every character a URL treats specially, given
percent-encoded in the user info or as a ``?password=`` option, never appear in the pool's
repr, its errors (also when the server is down and the driver's error echoes the target),
its logs down to DEBUG, its metrics, the dashboard's JSON or the CLI's output. Real
PostgreSQL (which trusts loopback here, so any password logs in) and a port nothing listens
on for "down"."""

from __future__ import annotations

import logging
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_dbpool import Pool, PoolError

SPECIAL = ":/?#[]@!$&'()*+,;=% \"<>\\^`{|}~"
secret_parts = st.text(alphabet=SPECIAL + "abcXYZ019", min_size=1, max_size=12)


def _secret(core: str) -> str:
    # Distinctive ends, so that finding the password cannot be an accident of other text.
    return f"Pw7q{core}Zx4k"


def _forms(secret: str) -> list[str]:
    """How the secret could leak: as given, percent-encoded (both flavours)."""
    return [secret, quote(secret, safe=""), quote(secret, safe="").replace("%20", "+")]


def _assert_hidden(text: str, secret: str, where: str) -> None:
    for form in _forms(secret):
        assert form not in text, f"the password leaked in {where}: {text[:300]!r}"


def _urls(postgres_url: str, secret: str, port: int | None = None) -> list[str]:
    parts = urlsplit(postgres_url)
    host = f"{parts.hostname}:{port or parts.port or 5432}"
    user = parts.username or "postgres"
    db = parts.path
    encoded = quote(secret, safe="")
    return [
        f"postgresql://{user}:{encoded}@{host}{db}?connect_timeout=2",
        f"postgresql://{user}@{host}{db}?password={encoded}&connect_timeout=2",
    ]


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(core=secret_parts)
def test_a_password_never_shows(
    core: str, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("prometheus_client")
    from flask import Flask
    from prometheus_client import CollectorRegistry, generate_latest

    from flask_dbpool import DBPool
    from flask_dbpool.metrics.prometheus import PoolCollector

    secret = _secret(core)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="flask_dbpool"):
        for url in _urls(postgres_url, secret):
            # Up: repr, stats, metrics, the dashboard and the CLI.
            app = Flask("secrets")
            app.config.update(DBPOOL_URL=url, DBPOOL_DASHBOARD=True, DBPOOL_POOL_SIZE=1)
            db = DBPool(app)
            pool = db.get_pool(app)
            try:
                with app.app_context():
                    db.connection.cursor().execute("SELECT 1")
                texts = {
                    "repr": repr(pool),
                    "target": pool.target,
                    "stats": repr(pool.stats()),
                    "dashboard": app.test_client().get("/_dbpool/data").get_data(as_text=True),
                }
                registry = CollectorRegistry()
                registry.register(PoolCollector(pool))
                texts["metrics"] = generate_latest(registry).decode()
                runner = app.test_cli_runner()
                for command in (["status"], ["check"], ["doctor"]):
                    result = runner.invoke(args=["dbpool", *command])
                    texts[f"flask dbpool {command[0]}"] = result.output
                with pool.connection() as conn, pytest.raises(Exception) as caught:
                    conn.cursor().execute("SELECT * FROM no_such_table_here")
                texts["a driver error"] = str(caught.value)
            finally:
                pool.close()
            for where, text in texts.items():
                _assert_hidden(text, secret, where)
        for url in _urls(postgres_url, secret, port=1):
            # Down: the timeout's message and cause, the CLI's failure.
            down = Pool(url, pool_size=1, timeout=0.3)
            try:
                with pytest.raises(PoolError) as caught:
                    down.acquire()
                texts = {
                    "repr (down)": repr(down),
                    "PoolTimeout": str(caught.value),
                    "its cause": str(caught.value.__cause__),
                }
            finally:
                down.close()
            app = Flask("secrets-down")
            app.config.update(DBPOOL_URL=url)
            DBPool(app)
            try:
                result = app.test_cli_runner().invoke(args=["dbpool", "check", "--timeout", "0.5"])
                texts["flask dbpool check (down)"] = result.output
            finally:
                app.extensions["dbpool"].close()
            for where, text in texts.items():
                _assert_hidden(text, secret, where)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    _assert_hidden(logged, secret, "the logs")
