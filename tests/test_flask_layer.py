"""The Flask layer's per-request bookkeeping: endpoint times kept in shards, merged exactly."""

from __future__ import annotations

import threading

from flask import Flask

from flask_dbpool import DBPool
from flask_dbpool.flask.endpoints import STRIPES, EndpointTimes
from flask_dbpool.stats import Histogram


def test_histogram_merge_adds_everything() -> None:
    one, two, whole = Histogram(), Histogram(), Histogram()
    for index, seconds in enumerate([0.00001, 0.0003, 0.02, 0.7, 3.0, 100.0, 0.00009]):
        (one if index % 2 else two).record(seconds)
        whole.record(seconds)
    one.merge(two)
    assert one.snapshot() == whole.snapshot()


def test_endpoint_times_merge_the_shards() -> None:
    times = EndpointTimes()
    rounds = STRIPES * 3 + 1  # every shard used, some twice
    for index in range(rounds):
        times.record("a", 0.001 * index, 0.002 * index)
    times.record("b", None, 0.5)
    times.record("c", 0.25, None)
    snapshot = times.snapshot()
    assert list(snapshot) == ["a", "b", "c"]
    assert snapshot["a"].wait.count == rounds and snapshot["a"].hold.count == rounds
    assert abs(snapshot["a"].hold.sum - 0.002 * sum(range(rounds))) < 1e-9
    assert snapshot["a"].hold.max == 0.002 * (rounds - 1)
    assert (snapshot["b"].wait.count, snapshot["b"].hold.count) == (0, 1)
    assert (snapshot["c"].wait.count, snapshot["c"].hold.count) == (1, 0)


def test_concurrent_requests_are_all_counted(sqlite_url: str) -> None:
    """Many request threads at once: every request's wait and hold land in its endpoint."""
    app = Flask(__name__)
    app.config.update(DBPOOL_URL=sqlite_url, DBPOOL_POOL_SIZE=4, DBPOOL_MAX_OVERFLOW=0)
    db = DBPool(app)

    @app.route("/one")
    def one() -> str:
        db.connection.execute("SELECT 1")
        return "ok"

    @app.route("/two")
    def two() -> str:
        assert db.connection is db.connection  # one checkout per request
        return "ok"

    threads, per_thread = 8, 60
    errors: list[BaseException] = []

    def client_loop(path: str) -> None:
        try:
            client = app.test_client()
            for _ in range(per_thread):
                assert client.get(path).status_code == 200
        except BaseException as error:
            errors.append(error)

    workers = [
        threading.Thread(target=client_loop, args=("/one" if i % 2 else "/two",))
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    times = DBPool.endpoint_times(app)
    expected = threads // 2 * per_thread
    for endpoint in ("one", "two"):
        assert times[endpoint].wait.count == expected, times[endpoint]
        assert times[endpoint].hold.count == expected, times[endpoint]
    stats = DBPool.get_pool(app).stats()
    assert stats.acquired == threads * per_thread and stats.in_use == 0
    DBPool.get_pool(app).close()
