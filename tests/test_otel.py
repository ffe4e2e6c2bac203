"""OpenTelemetry instruments: exact semantic-convention names, checked with the SDK's
in-memory reader against real databases."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from typing import Any

import pytest

from backends import Backend, MakePool, query, wait_until
from flask_dbpool import Pool, PoolTimeout
from flask_dbpool.stats import DURATION_BUCKETS

pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from flask_dbpool.metrics.otel import POOL_NAME, STATE, instrument_pool

SEMCONV = {
    "db.client.connection.count",
    "db.client.connection.max",
    "db.client.connection.idle.max",
    "db.client.connection.idle.min",
    "db.client.connection.pending_requests",
    "db.client.connection.timeouts",
    "db.client.connection.wait_time",
    "db.client.connection.create_time",
    "db.client.connection.use_time",
}


def _collect(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "flask_dbpool"
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def _by_pool(points: list[Any]) -> dict[str, list[Any]]:
    """Data points grouped by their pool name."""
    grouped: dict[str, list[Any]] = {}
    for point in points:
        grouped.setdefault(point.attributes[POOL_NAME], []).append(point)
    return grouped


def _value(found: dict[str, list[Any]], metric: str, pool_name: str) -> Any:
    """The single data point's value of ``metric`` for ``pool_name``."""
    (point,) = _by_pool(found[metric])[pool_name]
    return point.value


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_semantic_convention_instruments(backend: Backend, make_pool: MakePool) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pool = make_pool(backend.url, pool_size=2, max_overflow=1, min_idle=0, name="orders")
    instrument_pool(pool, meter_provider=provider)
    # timeout=0: each opens its connection at once, without first waiting a moment for
    # one to come back, so the only waits recorded are the timeouts below.
    held = [pool.acquire(timeout=0), pool.acquire(timeout=0), pool.acquire(timeout=0)]
    with pytest.raises(PoolTimeout):
        pool.acquire(timeout=0.01)
    for conn in held:
        query(conn, "SELECT 1")
    held.pop().close()

    found = _collect(reader)
    assert set(found) == SEMCONV  # exact names, nothing else
    for points in found.values():
        for point in points:
            assert point.attributes[POOL_NAME] == "orders"
    states = {p.attributes[STATE]: p.value for p in found["db.client.connection.count"]}
    assert states == {"idle": 1, "used": 2}
    assert found["db.client.connection.max"][0].value == 3
    assert found["db.client.connection.idle.max"][0].value == 2
    assert found["db.client.connection.idle.min"][0].value == 0
    assert found["db.client.connection.pending_requests"][0].value == 0
    assert found["db.client.connection.timeouts"][0].value == 1
    (waits,) = found["db.client.connection.wait_time"]
    assert waits.count == 1 and waits.sum >= 0.01
    (uses,) = found["db.client.connection.use_time"]
    assert uses.count == 1  # one checkout returned so far
    (creates,) = found["db.client.connection.create_time"]
    assert creates.count == 3 and creates.sum > 0
    for conn in held:
        conn.close()
    provider.shutdown()


def test_missing_extra_names_it(sqlite_url: str) -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if not installed\n"
        "from flask_dbpool import ConfigError, Pool\n"
        "from flask_dbpool.metrics.otel import instrument_pool\n"
        f"pool = Pool({sqlite_url!r})\n"
        "try:\n"
        "    instrument_pool(pool)\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'flask-dbpool[otel]'" in result.stdout, result.stderr


def test_two_pools_on_one_provider_are_both_reported(
    postgres_url: str, mysql_url: str, make_pool: MakePool
) -> None:
    # The SDK hands back the first pool's instruments for the second call: the second pool
    # must still get its own series in every instrument, with its own figures.
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    # Overflow closed on return: the figures below count on it.
    orders = make_pool(
        postgres_url,
        pool_size=2,
        max_overflow=1,
        min_idle=0,
        name="orders",
        overflow_idle_timeout=0,
    )
    billing = make_pool(
        mysql_url,
        pool_size=1,
        max_overflow=1,
        min_idle=1,
        name="billing",
        overflow_idle_timeout=0,
    )
    billing.wait_ready(10)
    # Maintenance may still be opening the min_idle connection wait_ready did not wait for:
    # let it finish, so that create_time counts only what this test opens.
    wait_until(lambda: billing.stats().connecting == 0, what="billing's opens to finish")
    created_before = billing.stats().created
    instrument_pool(orders, meter_provider=provider)
    instrument_pool(billing, meter_provider=provider)

    # timeout=0: each opens its connection at once, without first waiting a moment for
    # one to come back, so the only waits recorded are the timeouts below.
    held = [orders.acquire(timeout=0), orders.acquire(timeout=0), orders.acquire(timeout=0)]
    try:
        for _ in range(2):
            with pytest.raises(PoolTimeout):
                orders.acquire(timeout=0.01)
        held.pop().close()
        # timeout=0: each opens its connection at once, without first waiting a moment for
        # one to come back, so the only waits recorded are the timeouts below.
        lent = [billing.acquire(timeout=0), billing.acquire(timeout=0)]
        try:
            with pytest.raises(PoolTimeout):
                billing.acquire(timeout=0.01)
            for conn in lent:
                query(conn, "SELECT 1")
        finally:
            for conn in lent:
                conn.close()  # the second is overflow: closed, one stays idle
        _check_two_pools(_collect(reader), billing.stats().created - created_before)
    finally:
        for conn in held:
            conn.close()
        provider.shutdown()


def _check_two_pools(found: dict[str, list[Any]], billing_created: int) -> None:
    """The figures test_two_pools_on_one_provider_are_both_reported leads to, per pool."""
    assert billing_created == 1  # the second connection; the first was opened before
    assert set(found) == SEMCONV
    for metric, points in found.items():
        assert set(_by_pool(points)) == {"orders", "billing"}, metric
    counts = {
        (p.attributes[POOL_NAME], p.attributes[STATE]): p.value
        for p in found["db.client.connection.count"]
    }
    assert counts == {
        ("orders", "idle"): 1,
        ("orders", "used"): 2,
        ("billing", "idle"): 1,
        ("billing", "used"): 0,
    }
    expected = {
        "db.client.connection.max": {"orders": 3, "billing": 2},
        "db.client.connection.idle.max": {"orders": 2, "billing": 1},
        "db.client.connection.idle.min": {"orders": 0, "billing": 1},
        "db.client.connection.pending_requests": {"orders": 0, "billing": 0},
        "db.client.connection.timeouts": {"orders": 2, "billing": 1},
    }
    for metric, values in expected.items():
        for pool_name, value in values.items():
            assert _value(found, metric, pool_name) == value, (metric, pool_name)
    histogram_counts = {
        "db.client.connection.wait_time": {"orders": 2, "billing": 1},
        "db.client.connection.create_time": {"orders": 3, "billing": 1},
        "db.client.connection.use_time": {"orders": 1, "billing": 2},
    }
    for metric, values in histogram_counts.items():
        for pool_name, count in values.items():
            (point,) = _by_pool(found[metric])[pool_name]
            assert point.count == count, (metric, pool_name)


def test_closed_or_collected_pool_is_no_longer_observed(
    postgres_url: str, make_pool: MakePool
) -> None:
    # One provider each, so that this checks closing and collection on their own.
    readers = {name: InMemoryMetricReader() for name in ("kept", "closed", "dropped")}
    providers = {name: MeterProvider(metric_readers=[r]) for name, r in readers.items()}
    kept = make_pool(postgres_url, name="kept")
    closed = make_pool(postgres_url, name="closed")
    dropped = Pool(postgres_url, name="dropped")  # never opens a connection: nothing leaks
    for pool in (kept, closed, dropped):
        instrument_pool(pool, meter_provider=providers[pool.name])
    conn = closed.acquire()
    conn.close()
    observed = {name for name in SEMCONV if not name.endswith("_time")}
    for name, reader in readers.items():
        found = _collect(reader)
        assert observed <= set(found)
        assert {p.attributes[POOL_NAME] for m in observed for p in found[m]} == {name}

    closed.close()
    gone = weakref.ref(dropped)
    del dropped, pool  # the loop variable holds it too
    gc.collect()
    assert not observed & set(_collect(readers["closed"]))
    # What it recorded before closing stays: histograms are cumulative.
    assert _collect(readers["closed"])["db.client.connection.use_time"][0].count == 1
    assert gone() is None  # instrumenting does not keep a pool alive
    data = readers["dropped"].get_metrics_data()  # None: nothing at all to export
    assert data is None or not [m for r in data.resource_metrics for m in r.scope_metrics]
    assert observed <= set(_collect(readers["kept"]))
    for provider in providers.values():
        provider.shutdown()


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_instrumenting_twice_counts_once(backend: Backend, make_pool: MakePool) -> None:
    readers = [InMemoryMetricReader(), InMemoryMetricReader()]
    providers = [MeterProvider(metric_readers=[reader]) for reader in readers]
    pool = make_pool(backend.url, min_idle=0, name="twice")
    for provider in providers:
        instrument_pool(pool, meter_provider=provider)
        instrument_pool(pool, meter_provider=provider)  # no second observer
    conn = pool.acquire()
    query(conn, "SELECT 1")
    conn.close()

    for reader in readers:  # each provider counts each event once
        found = _collect(reader)
        for metric in ("db.client.connection.create_time", "db.client.connection.use_time"):
            (point,) = found[metric]
            assert point.count == 1, metric
        for metric in SEMCONV - {"db.client.connection.count"}:
            assert len(found.get(metric, [])) == (0 if metric.endswith("wait_time") else 1)
        assert len(found["db.client.connection.count"]) == 2  # idle and used
    for provider in providers:
        provider.shutdown()


def test_histograms_use_duration_buckets(postgres_url: str, make_pool: MakePool) -> None:
    # The SDK's default boundaries (0, 5, 10, ... 10000) suit milliseconds, not seconds.
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pool = make_pool(postgres_url, pool_size=1, max_overflow=0, name="buckets")
    instrument_pool(pool, meter_provider=provider)
    conn = pool.acquire()
    with pytest.raises(PoolTimeout):
        pool.acquire(timeout=0.01)
    conn.close()

    found = _collect(reader)
    for metric in (
        "db.client.connection.wait_time",
        "db.client.connection.create_time",
        "db.client.connection.use_time",
    ):
        (point,) = found[metric]
        assert tuple(point.explicit_bounds) == DURATION_BUCKETS, metric
        assert len(point.bucket_counts) == len(DURATION_BUCKETS) + 1
        assert sum(point.bucket_counts) == point.count == 1
    provider.shutdown()


def test_global_provider_reports_pools_instrumented_before_and_after_it_is_set(
    postgres_url: str, mysql_url: str
) -> None:
    # In a child process: the global provider can be set only once per process. Before it
    # is set, the API hands out proxy meters, which must not duplicate the instruments.
    code = (
        "import json\n"
        "from opentelemetry import metrics\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.metrics.export import InMemoryMetricReader\n"
        "from flask_dbpool import Pool\n"
        "from flask_dbpool.metrics.otel import POOL_NAME, instrument_pool\n"
        f"early = Pool({postgres_url!r}, name='early')\n"
        f"late = Pool({mysql_url!r}, name='late')\n"
        "instrument_pool(early)\n"
        "reader = InMemoryMetricReader()\n"
        "metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))\n"
        "instrument_pool(late)\n"
        "for pool in (early, late):\n"
        "    conn = pool.acquire()\n"
        "    conn.close()\n"
        "names = {}\n"
        "for rm in reader.get_metrics_data().resource_metrics:\n"
        "    for sm in rm.scope_metrics:\n"
        "        for m in sm.metrics:\n"
        "            names[m.name] = sorted(p.attributes[POOL_NAME] for p in m.data.data_points)\n"
        "early.close()\n"
        "late.close()\n"
        "print(json.dumps(names))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    names = json.loads(result.stdout)
    assert set(names) == SEMCONV - {"db.client.connection.wait_time"}  # nobody waited
    assert names["db.client.connection.count"] == ["early", "early", "late", "late"]
    for metric, pools in names.items():
        if metric != "db.client.connection.count":
            assert pools == ["early", "late"], metric
