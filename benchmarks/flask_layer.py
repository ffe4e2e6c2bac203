#!/usr/bin/env python3
"""What the Flask layer costs per request, next to the same request with psycopg_pool by hand.

    .venv/bin/python benchmarks/flask_layer.py [--url URL] [--rounds N] [--threads T]

Each variant runs one Flask view (``GET /item/<id>``-like: no query, so that only the pooling
layer is measured) through Flask's request machinery without a server: a request context is
pushed, the view gets the request's connection, the context is popped (teardown returns it).
Variants, timed in interleaved rounds (random order each round):

- ``flask-dbpool``: ``db.connection`` (endpoint wait/hold histograms, label, pin), teardown;
- ``psycopg_pool``: ``g.conn = pool.getconn()`` and ``pool.putconn(g.conn)`` in teardown, the
  usual hand-written pattern (PostgreSQL URLs only);
- ``context only``: the same request context with no database work, the floor.

Reported: CPU µs per request of the calling thread (wall time with ``--threads``), median
and minimum of the rounds, and what the pooling layer adds to the bare request context.
``--threads T`` runs T threads at once (each its own loop) to show contention on anything
shared.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import threading
import time
from collections.abc import Callable

from flask import Flask, g

from flask_dbpool import DBPool

N = 2000
#: CPU time of the calling thread: what the layer costs, less exposed than wall time to other
#: processes taking the CPU (the machine is shared); wall time with --threads.
clock = time.thread_time


def flask_dbpool_app(url: str) -> tuple[Flask, Callable[[], None]]:
    app = Flask("bench_dbpool")
    app.config.update(DBPOOL_URL=url, DBPOOL_POOL_SIZE=8, DBPOOL_MAX_OVERFLOW=0)
    db = DBPool(app)

    @app.route("/item/<int:item>")
    def item(item: int) -> str:
        db.connection  # noqa: B018 -- checked out, returned at teardown
        return "ok"

    return app, DBPool.get_pool(app).close


def psycopg_pool_app(url: str) -> tuple[Flask, Callable[[], None]]:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(url, min_size=8, max_size=8, open=True)
    pool.wait()
    app = Flask("bench_psycopg_pool")

    @app.route("/item/<int:item>")
    def item(item: int) -> str:
        if "conn" not in g:
            g.conn = pool.getconn()
        return "ok"

    @app.teardown_appcontext
    def put_back(exc: BaseException | None) -> None:
        conn = g.pop("conn", None)
        if conn is not None:
            pool.putconn(conn)

    return app, pool.close


def bare_app(url: str) -> tuple[Flask, Callable[[], None]]:
    app = Flask("bench_bare")

    @app.route("/item/<int:item>")
    def item(item: int) -> str:
        return "ok"

    return app, lambda: None


def loop(app: Flask, n: int) -> float:
    """Seconds for ``n`` requests through the request context and the view."""
    adapter_env = {"PATH_INFO": "/item/7", "REQUEST_METHOD": "GET"}
    view = app.view_functions["item"]
    start = clock()
    for _ in range(n):
        with app.request_context(
            {**adapter_env, "SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
        ) as ctx:
            ctx.request.url_rule  # noqa: B018 -- matched
            view(item=7)
    return clock() - start


def timed(app: Flask, threads: int) -> float:
    """µs per request, ``threads`` loops at once."""
    if threads == 1:
        return loop(app, N) / N * 1e6
    global clock
    clock = time.perf_counter
    results: list[float] = []
    barrier = threading.Barrier(threads)

    def run() -> None:
        barrier.wait()
        results.append(loop(app, N))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (time.perf_counter() - start) / (N * threads) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    variants: dict[str, tuple[Flask, Callable[[], None]]] = {
        "context only": bare_app(args.url),
        "flask-dbpool": flask_dbpool_app(args.url),
    }
    if args.url.startswith("postgres"):
        variants["psycopg_pool"] = psycopg_pool_app(args.url)
    for app, _ in variants.values():
        loop(app, 200)  # warm up (connections opened, code paths hot)
    times: dict[str, list[float]] = {name: [] for name in variants}
    gc.disable()
    for _ in range(args.rounds):
        names = list(variants)
        random.shuffle(names)
        for name in names:
            times[name].append(timed(variants[name][0], args.threads))
    gc.enable()
    floor = statistics.median(times["context only"])
    floor_min = min(times["context only"])
    print(f"{args.url.split('://')[0]}, {args.threads} thread(s), {args.rounds} rounds of {N}")
    for name, values in times.items():
        median, best = statistics.median(values), min(values)
        print(
            f"{name:14s} median {median:7.2f} µs/request (layer {median - floor:6.2f} µs)   "
            f"min {best:7.2f} µs/request (layer {best - floor_min:6.2f} µs)"
        )
    for _, close in variants.values():
        close()


if __name__ == "__main__":
    main()
