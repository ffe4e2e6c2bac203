"""The Prometheus collector, checked with prometheus_client's own text parser."""

from __future__ import annotations

import pytest

from backends import Backend, MakePool, query
from flask_dbpool import PoolTimeout
from flask_dbpool.stats import CLOSE_REASONS

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from flask_dbpool.metrics.prometheus import PoolCollector  # noqa: E402


def _scrape(collector: PoolCollector) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = prometheus_client.CollectorRegistry()
    registry.register(collector)
    text = prometheus_client.generate_latest(registry).decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_scrape_matches_stats(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=2, max_overflow=1, name="orders", min_idle=0)
    # timeout=0: each opens its connection at once, without first waiting a moment for
    # one to come back, so the only waits recorded are the timeouts below.
    held = [pool.acquire(timeout=0), pool.acquire(timeout=0), pool.acquire(timeout=0)]
    with pytest.raises(PoolTimeout):
        pool.acquire(timeout=0.01)
    held.pop().invalidate()
    for conn in held:
        query(conn, "SELECT 1")
    held.pop().close()
    other = make_pool(backend.url, pool_size=1, name="reports")

    samples = _scrape(PoolCollector(pool, other))
    s = pool.stats()
    orders = (("pool_name", "orders"),)
    assert samples["db_client_connection_count"][(*orders, ("state", "idle"))] == s.idle == 1
    assert samples["db_client_connection_count"][(*orders, ("state", "used"))] == 1
    assert samples["db_client_connection_max"][orders] == 3
    assert samples["db_client_connection_idle_max"][orders] == 2
    assert samples["db_client_connection_idle_min"][orders] == 0
    assert samples["db_client_connection_pending_requests"][orders] == 0
    assert samples["db_client_connection_timeouts_total"][orders] == s.timeouts == 1
    assert samples["flask_dbpool_checkouts_total"][orders] == s.acquired == 3
    assert samples["flask_dbpool_connections_created_total"][orders] == 3
    closed = samples["flask_dbpool_connections_closed_total"]
    assert closed[(*orders, ("reason", "invalidated"))] == 1
    assert closed[(*orders, ("reason", "idle"))] == 0  # every reason has a series from the start
    assert {dict(labels)["reason"] for labels in closed} == set(CLOSE_REASONS)
    wait = samples["db_client_connection_wait_time_seconds_count"][orders]
    assert wait == s.wait_time.count == 1
    create_buckets = {
        labels: value
        for labels, value in samples["db_client_connection_create_time_seconds_bucket"].items()
        if ("pool_name", "orders") in labels
    }
    assert create_buckets[(("le", "+Inf"), *orders)] == s.create_time.count == 3
    values = [create_buckets[key] for key in sorted(create_buckets, key=_le)]
    assert values == sorted(values)  # cumulative
    # the second pool is reported with its own label
    assert samples["db_client_connection_max"][(("pool_name", "reports"),)] == 11
    held.pop().close()


def _le(labels: tuple[tuple[str, str], ...]) -> float:
    return float(dict(labels)["le"])


def test_no_password_in_the_scrape(make_pool: MakePool) -> None:
    pool = make_pool("postgresql://app:SeCrEt@127.0.0.1:1/test", name="secret")
    registry = prometheus_client.CollectorRegistry()
    registry.register(PoolCollector(pool))
    assert "SeCrEt" not in prometheus_client.generate_latest(registry).decode()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_flask_metrics_endpoint(backend: Backend) -> None:
    from flask import Flask

    from flask_dbpool import DBPool

    app = Flask("metrics-app")
    app.config.update(DBPOOL_URL=backend.url, DBPOOL_METRICS_ENDPOINT="/metrics")
    db = DBPool(app)

    @app.get("/work")
    def work() -> str:
        query(db.connection, "SELECT 1")
        return "ok"

    client = app.test_client()
    try:
        assert client.get("/work").status_code == 200
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.content_type.startswith("text/plain; version=")
        families = {
            f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))
        }
        checkouts = families["flask_dbpool_checkouts"].samples[0]
        assert checkouts.labels == {"pool_name": "metrics-app"} and checkouts.value == 1
        assert "db_client_connection_wait_time_seconds" in families
    finally:
        app.extensions["dbpool"].close()


def test_flask_metrics_endpoint_must_be_a_path(sqlite_url: str) -> None:
    from flask import Flask

    from flask_dbpool import ConfigError, DBPool

    app = Flask("bad-metrics")
    app.config.update(DBPOOL_URL=sqlite_url, DBPOOL_METRICS_ENDPOINT="metrics")
    with pytest.raises(ConfigError, match="DBPOOL_METRICS_ENDPOINT"):
        DBPool(app)
    assert "dbpool" not in app.extensions


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_per_endpoint_wait_and_hold(backend: Backend) -> None:
    import threading
    import time

    from flask import Flask

    from flask_dbpool import DBPool

    app = Flask("endpoints-app")
    app.config.update(
        DBPOOL_URL=backend.url,
        DBPOOL_METRICS_ENDPOINT="/metrics",
        DBPOOL_POOL_SIZE=1,
        DBPOOL_MAX_OVERFLOW=0,
    )
    db = DBPool(app)
    inside = threading.Event()

    @app.get("/slow/<int:n>")
    def slow(n: int) -> str:
        query(db.connection, "SELECT 1")
        inside.set()
        time.sleep(0.1)
        return "slow"

    @app.get("/fast")
    def fast() -> str:
        query(db.connection, "SELECT 1")
        return "fast"

    client = app.test_client()
    try:
        worker = threading.Thread(target=lambda: app.test_client().get("/slow/7"))
        worker.start()
        assert inside.wait(5)
        assert client.get("/fast").status_code == 200  # waits for /slow's connection
        worker.join(5)
        with app.app_context():
            query(db.connection, "SELECT 1")  # outside any request

        times = DBPool.endpoint_times(app)
        assert set(times) == {"slow", "fast", "<no request>"}  # names, never /slow/7
        assert times["slow"].hold.count == 1 and times["slow"].hold.sum >= 0.1
        assert times["fast"].wait.count == 1 and times["fast"].wait.sum >= 0.03
        assert times["slow"].wait.sum < times["fast"].wait.sum

        text = client.get("/metrics").get_data(as_text=True)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        holds = {
            s.labels["endpoint"]: s.value
            for s in families["flask_dbpool_endpoint_hold_time_seconds"].samples
            if s.name.endswith("_count")
        }
        assert holds["slow"] == 1 and holds["fast"] == 1
        assert all("/" not in endpoint for endpoint in holds)
    finally:
        app.extensions["dbpool"].close()


def test_a_timed_out_wait_counts_for_its_endpoint(sqlite_url: str) -> None:
    from flask import Flask

    from flask_dbpool import DBPool

    app = Flask("timeouts-app")
    app.config.update(DBPOOL_URL=sqlite_url, DBPOOL_POOL_SIZE=1, DBPOOL_MAX_OVERFLOW=0)
    app.config["DBPOOL_TIMEOUT"] = 0.05
    db = DBPool(app)

    @app.get("/report")
    def report() -> str:
        query(db.connection, "SELECT 1")
        return "ok"

    pool = DBPool.get_pool(app)
    try:
        held = pool.acquire()
        assert app.test_client().get("/report").status_code == 500  # PoolTimeout
        held.close()
        wait = DBPool.endpoint_times(app)["report"].wait
        assert wait.count == 1 and wait.sum >= 0.05
        assert pool.stats().timeouts == 1
    finally:
        pool.close()
