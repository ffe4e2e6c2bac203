"""OpenTelemetry instruments: exact semantic-convention names, checked with the SDK's
in-memory reader against real databases."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from backends import Backend, MakePool, query
from flask_dbpool import PoolTimeout

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


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"], indirect=True)
def test_semantic_convention_instruments(backend: Backend, make_pool: MakePool) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    pool = make_pool(backend.url, pool_size=2, max_overflow=1, min_idle=0, name="orders")
    instrument_pool(pool, meter_provider=provider)
    held = [pool.acquire(), pool.acquire(), pool.acquire()]
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
