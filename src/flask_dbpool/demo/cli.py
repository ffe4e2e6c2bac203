"""``python -m flask_dbpool.demo``: serve the notes API and compare pooled vs per-request.

For each database, starts one werkzeug threaded server with both apps mounted (pooled at
``/``, one connection per request at ``/direct``), seeds a few notes, drives the same burst of
HTTP requests through each and prints a table. The databases: an SQLite file, then a
PostgreSQL server (the one ``--url`` / ``DBPOOL_URL`` names, else one started for the demo in
a temporary directory by :mod:`flask_dbpool.demo.postgres` and removed afterwards). Then it
prints the pooled ÷ per-request throughput of each and keeps serving (the ``--url`` database
if given, else SQLite) until Ctrl-C, unless ``--no-serve``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from flask_dbpool.demo.app import (
    DEFAULT_TABLE,
    close_app,
    connections_opened,
    create_app,
    default_sqlite_url,
    default_url,
    demo_state,
)
from flask_dbpool.demo.load import BurstResult, drive_in_subprocess, format_table, http_json
from flask_dbpool.demo.postgres import LocalPostgres, PostgresUnavailable
from flask_dbpool.demo.server import DemoServer
from flask_dbpool.drivers import resolve_target
from flask_dbpool.errors import ConfigError
from flask_dbpool.url import parse_url, redact

__all__ = ["build_parser", "main", "run_both", "run_demo"]

DIRECT_PREFIX = "/direct"
SEED_NOTES = (
    "Welcome to the flask-dbpool demo.",
    "Requests to /notes borrow a pooled connection for the length of the request.",
    "Requests to /direct/notes open a new database connection each time, as without a pool.",
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m flask_dbpool.demo",
        description=(
            "Serve a small notes JSON API with flask-dbpool and compare it, under the same "
            "burst of requests, with opening a new database connection per request."
        ),
    )
    parser.add_argument(
        "--url",
        help="a running database server to compare on besides SQLite, instead of starting a "
        "PostgreSQL (default: $DBPOOL_URL), e.g. postgresql://postgres@127.0.0.1:5432/test or "
        "mysql://root@127.0.0.1:3306/test; an sqlite:/// URL replaces ./demo-data/notes.db",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=5000, help="port (a free one is used if it is busy)"
    )
    parser.add_argument(
        "--requests", type=_positive, default=600, metavar="N", help="requests per mode"
    )
    parser.add_argument(
        "--concurrency", type=_positive, default=16, metavar="C", help="client threads"
    )
    parser.add_argument("--pool-size", type=_positive, default=4, help="DBPOOL_POOL_SIZE")
    parser.add_argument(
        "--max-overflow", type=_non_negative, default=0, help="DBPOOL_MAX_OVERFLOW"
    )
    parser.add_argument("--table", default=DEFAULT_TABLE, help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-serve", action="store_true", help="exit after the comparison instead of serving"
    )
    parser.add_argument(
        "--no-postgres",
        action="store_true",
        help="do not start a PostgreSQL for the demo (SQLite only, unless --url names a server)",
    )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _burst(
    app: Flask, base_url: str, requests: int, concurrency: int
) -> tuple[BurstResult, list[int]]:
    traffic = drive_in_subprocess(base_url, requests, concurrency)
    # The app's total: both apps are new, and the pooled one opened its connections for the
    # schema, the seeding and this burst.
    opened = connections_opened(app)
    return BurstResult.from_traffic(demo_state(app).mode, traffic, opened), traffic.created_ids


def _seed(base_url: str) -> int:
    status, body = http_json("GET", f"{base_url}/notes?limit=1")
    if status != 200 or not isinstance(body, dict):
        raise RuntimeError(f"GET /notes answered {status}: {body!r}")
    if body.get("count"):
        return 0
    for text in SEED_NOTES:
        status, body = http_json("POST", f"{base_url}/notes", {"text": text})
        if status != 201:
            raise RuntimeError(f"POST /notes answered {status}: {body!r}")
    return len(SEED_NOTES)


def _cleanup(app: Flask, note_ids: list[int]) -> int:
    """Delete the burst's notes, so that repeated runs do not pile them up."""
    state = demo_state(app)
    with app.app_context():
        return state.store.delete(state.connection(), note_ids)


def _examples(url: str) -> list[str]:
    body = shlex.quote('{"text": "hello from curl"}')
    return [
        f"curl -s {url}/notes?limit=5",
        f"curl -s -X POST -H 'Content-Type: application/json' -d {body} {url}/notes",
        f"curl -s {url}/notes/1",
        f"curl -s -X DELETE {url}/notes/1",
        f"curl -s {url}/health",
        f"curl -s {url}/stats",
        f"curl -s {url}{DIRECT_PREFIX}/notes   # same API, a new connection per request",
    ]


class _Site:
    """One database's two apps (pooled at ``/``, direct at ``/direct``) on a running server."""

    def __init__(
        self, url: str, host: str, port: int, pool_size: int, max_overflow: int, table: str
    ) -> None:
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.pooled = create_app(
            url, pooled=True, pool_size=pool_size, max_overflow=max_overflow, table=table
        )
        try:
            self.direct = create_app(url, pooled=False, table=table)
            wsgi = DispatcherMiddleware(self.pooled, {DIRECT_PREFIX: self.direct})
            self.server = DemoServer(wsgi, host, port)
        except BaseException:
            close_app(self.pooled)
            raise
        self.server.start()

    @property
    def base(self) -> str:
        return self.server.url

    def close(self) -> None:
        try:
            self.server.stop()
        finally:
            close_app(self.pooled)
            close_app(self.direct)

    def compare(
        self, requests: int, concurrency: int, say: Callable[[str], None]
    ) -> list[BurstResult]:
        """Seed, run the burst through each app, print the table; return its rows."""
        base, server = self.base, self.server
        say(f"  database : {demo_state(self.pooled).database}")
        if server.port != server.requested_port and server.requested_port:
            say(f"  note     : port {server.requested_port} is busy, using {server.port}")
        say(f"  pooled   : {base}/notes  (DBPool, pool_size={self.pool_size}, "
            f"max_overflow={self.max_overflow})")
        say(f"  direct   : {base}{DIRECT_PREFIX}/notes  (a new connection per request)")
        seeded = _seed(base)
        if seeded:
            say(f"  seeded {seeded} notes")
        writes = (requests + 3) // 4
        say("")
        say(f"Burst: {requests} requests per mode ({requests - writes} GET /notes?limit=20, "
            f"{writes} POST /notes)")
        say(f"       from {min(concurrency, requests)} client threads in a process of their "
            "own, each on a keep-alive HTTP connection")
        say("")
        pooled_result, pooled_ids = _burst(self.pooled, base, requests, concurrency)
        direct_result, direct_ids = _burst(
            self.direct, base + DIRECT_PREFIX, requests, concurrency
        )
        results = [pooled_result, direct_result]
        _cleanup(self.pooled, pooled_ids + direct_ids)
        say(format_table(results))
        say("")
        say(_summary(pooled_result, direct_result, self.pool_size,
                     self.pool_size + self.max_overflow))
        for result in results:
            for sample in result.error_samples:
                say(f"  {result.mode} error: {sample}")
        return results

    def serve(self, say: Callable[[str], None], stop: threading.Event | None) -> None:
        """Log requests and serve until Ctrl-C (or until ``stop`` is set)."""
        base = self.base
        say(f"Serving {demo_state(self.pooled).database} on {base}  (Ctrl-C to stop). "
            f"Live pool dashboard: {base}/_dbpool/")
        say("Try:")
        for example in _examples(base):
            say(f"  {example}")
        self.server.log_requests = True
        try:
            (stop or threading.Event()).wait()
        except KeyboardInterrupt:
            say("")
            say("Stopping.")


def _sayer(out: TextIO | None) -> Callable[[str], None]:
    stream = out if out is not None else sys.stdout

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    return say


TITLE = "flask-dbpool demo: a notes JSON API served by werkzeug's threaded server"


def run_demo(
    url: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    requests: int = 600,
    concurrency: int = 16,
    pool_size: int = 4,
    max_overflow: int = 0,
    table: str = DEFAULT_TABLE,
    serve: bool = False,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> list[BurstResult]:
    """Run the comparison on one database; return its rows (pooled first).

    Prints progress to ``out``. With ``serve=True``, keeps serving afterwards until Ctrl-C (or
    until ``stop`` is set). Raises :class:`~flask_dbpool.ConfigError` for a bad URL or setting
    and the driver's error when the database cannot be reached. :func:`run_both` is what
    ``make demo`` runs.
    """
    say = _sayer(out)
    site = _Site(url or default_url(), host, port, pool_size, max_overflow, table)
    try:
        say(TITLE)
        results = site.compare(requests, concurrency, say)
        if serve:
            say("")
            site.serve(say, stop)
        return results
    finally:
        site.close()


def _label(url: str) -> str:
    return _LABELS.get(parse_url(url).dialect, parse_url(url).dialect)


_LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MySQL"}
_WHY = {
    "SQLite": "opening an SQLite connection opens a local file: nearly free",
    "PostgreSQL": "a new connection: TCP + TLS handshakes, SCRAM password, a server process",
}


def _have_postgres_driver() -> bool:
    return any(importlib.util.find_spec(name) for name in ("psycopg", "psycopg2"))


def run_both(
    url: str | None = None,
    *,
    start_postgres: bool = True,
    postgres: LocalPostgres | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    requests: int = 600,
    concurrency: int = 16,
    pool_size: int = 4,
    max_overflow: int = 0,
    table: str = DEFAULT_TABLE,
    serve: bool = False,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> dict[str, list[BurstResult]]:
    """``make demo``: the comparison on SQLite, then on a database server; return the rows.

    The server is ``url`` if it names one (nothing is started), else a PostgreSQL started for
    the demo (``postgres``, default a new :class:`LocalPostgres`; skipped with
    ``start_postgres=False``), stopped and deleted before this returns (or serves). When it
    cannot be started, one line says why and only SQLite runs. An SQLite ``url`` replaces the
    default SQLite file. With ``serve=True`` the database named by ``url`` is served afterwards,
    else SQLite. Returns ``{"SQLite": rows, "PostgreSQL": rows}`` (rows pooled first).
    """
    say = _sayer(out)
    if url:
        resolve_target(url)  # a bad URL or a missing driver fails before anything runs
    given_sqlite = bool(url) and parse_url(url or "").dialect == "sqlite"
    sqlite_url = url if url and given_sqlite else default_sqlite_url()
    server_url = url if url and not given_sqlite else None
    options = (host, port, pool_size, max_overflow, table)
    results: dict[str, list[BurstResult]] = {}
    served: _Site | None = None
    try:
        say(TITLE)
        say("")
        say("== SQLite ==")
        site = _Site(sqlite_url, *options)
        try:
            results["SQLite"] = site.compare(requests, concurrency, say)
        finally:
            if serve and server_url is None:
                served = site
            else:
                site.close()
        say("")
        if server_url is not None:
            label = _label(server_url)
            say(f"== {label} (given by --url / DBPOOL_URL: nothing started) ==")
            site = _Site(server_url, *options)
            try:
                results[label] = site.compare(requests, concurrency, say)
            finally:
                if serve:
                    served = site
                else:
                    site.close()
        elif start_postgres:
            results.update(
                _run_local_postgres(postgres, requests, concurrency, options, say)
            )
        say("")
        say("Pooled vs a new connection per request (requests/s, pooled ÷ direct):")
        width = max(len(label) for label in results)
        for label, (pooled, direct) in results.items():
            ratio = (
                pooled.requests_per_second / direct.requests_per_second
                if direct.requests_per_second else 0.0
            )
            why = f"  ({_WHY[label]})" if label in _WHY else ""
            say(f"  {label.ljust(width)}  {ratio:4.1f}x{why}")
        if served is not None:
            say("")
            served.serve(say, stop)
        return results
    finally:
        if served is not None:
            served.close()


def _run_local_postgres(
    postgres: LocalPostgres | None,
    requests: int,
    concurrency: int,
    options: tuple[str, int, int, int, str],
    say: Callable[[str], None],
) -> dict[str, list[BurstResult]]:
    """Start a PostgreSQL for the demo, run the comparison on it, stop and delete it."""
    if not _have_postgres_driver():
        say("PostgreSQL: skipped: no PostgreSQL driver installed (pip install psycopg)")
        return {}
    pg = postgres if postgres is not None else LocalPostgres()
    say("== PostgreSQL (started for the demo) ==")
    try:
        started = time.monotonic()
        try:
            pg.start()
        except PostgresUnavailable as exc:
            say(f"PostgreSQL: not started, so SQLite only: {exc}")
            return {}
        security = "TLS + SCRAM password" if pg.tls else "SCRAM password, no TLS (no openssl)"
        say(f"  server   : PostgreSQL {pg.version or '?'} in {pg.directory}, "
            f"127.0.0.1:{pg.port} ({security}; started in {time.monotonic() - started:.1f} s)")
        site = _Site(pg.url, *options)
        try:
            return {"PostgreSQL": site.compare(requests, concurrency, say)}
        finally:
            site.close()
    finally:
        directory = pg.directory
        pg.close()
        if directory is not None:
            say(f"  stopped the demo's PostgreSQL and removed {directory}")


def _summary(pooled: BurstResult, direct: BurstResult, pool_size: int, max_open: int) -> str:
    lines = [
        f"pooled: {pooled.connections_opened} database connection(s) opened in all "
        f"(never more than {max_open} open at once);",
        f"direct: {direct.connections_opened} connections opened, one per request.",
    ]
    if pooled.connections_opened > max_open:
        lines.append(
            f"(Connections beyond pool_size={pool_size} are closed when returned once "
            f"{pool_size} are idle, and reopened by the next burst.)"
        )
    if pooled.requests_per_second and direct.requests_per_second:
        ratio = pooled.requests_per_second / direct.requests_per_second
        lines.append(f"Throughput, pooled vs direct: {ratio:.1f}x.")
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flask_dbpool.demo``; returns the exit status.

    SIGTERM stops it like Ctrl-C (closing the pool) when it runs in the main thread.
    """
    args = build_parser().parse_args(argv)
    url = args.url or os.environ.get("DBPOOL_URL") or None
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        results = run_both(
            url,
            start_postgres=not args.no_postgres,
            host=args.host,
            port=args.port,
            requests=args.requests,
            concurrency=args.concurrency,
            pool_size=args.pool_size,
            max_overflow=args.max_overflow,
            table=args.table,
            serve=not args.no_serve,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # most likely the database is unreachable: no traceback
        where = redact(url) if url else "the demo database"
        print(f"error: {type(exc).__name__}: {exc}".rstrip(), file=sys.stderr)
        print(f"(is {where} reachable? see --help for --url)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 1 if any(r.errors for rows in results.values() for r in rows) else 0
