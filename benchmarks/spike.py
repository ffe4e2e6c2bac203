#!/usr/bin/env python3
"""Spike test, after HikariCP's: a burst of concurrent requests on a pool of 5 + 45 when
opening a connection is slow.

    .venv/bin/python benchmarks/spike.py [--url URL] [--connect-delay 0.15] [--burst 50]

A small TCP proxy in front of PostgreSQL delays every new connection by ``--connect-delay``
seconds (150 ms: a server across a network, TLS, authentication). Each pool first opens its 5
``pool_size`` connections; then ``--burst`` threads at once each check out a connection, run
a 2 ms query (``pg_sleep(0.002)``) and return it, ``--waves`` times in a row with
``--pause`` between waves (a spike lasting a little while, not a single instant). The proxy
counts connections, so every pool is measured the same way:

- opened during the spike (each costs ``--connect-delay`` to a caller or a background thread),
- still open ``--after`` seconds after the spike (server sessions left behind),
- the spike's duration and the slowest checkout.

Pools: flask-dbpool (``pool_size=5, max_overflow=45``), psycopg_pool
(``min_size=5, max_size=50``), SQLAlchemy's QueuePool (``pool_size=5, max_overflow=45``).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask_dbpool import Pool

POOL_SIZE, MAX_OVERFLOW = 5, 45


class DelayProxy:
    """Forwards loopback TCP connections to ``upstream``, each new one after ``delay`` s."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.accepted = 0
        self.live = 0
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self.lock:
            self.accepted += 1
            self.live += 1
        try:
            time.sleep(self.delay)
            server = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            with self.lock:
                self.live -= 1
            return
        done = threading.Event()

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                done.set()

        threading.Thread(target=pump, args=(server, client), daemon=True).start()
        pump(client, server)
        done.wait()
        for sock in (client, server):
            try:
                sock.close()
            except OSError:
                pass
        with self.lock:
            self.live -= 1

    def counts(self) -> tuple[int, int]:
        """(connections accepted so far, connections open now)."""
        with self.lock:
            return self.accepted, self.live

    def close(self) -> None:
        self.stopped = True
        self.listener.close()


def through(url: str, port: int) -> str:
    """``url`` pointed at the proxy."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{port}"))


Checkout = Callable[[], AbstractContextManager[Any]]


def flask_dbpool_pool(url: str) -> tuple[Checkout, Callable[[], None], Callable[[], None]]:
    pool = Pool(url, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, timeout=60)
    return pool.connection, lambda: pool.warm_up() and None, pool.close


def psycopg_pool_pool(url: str) -> tuple[Checkout, Callable[[], None], Callable[[], None]]:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(url, min_size=POOL_SIZE, max_size=POOL_SIZE + MAX_OVERFLOW, timeout=60)
    return pool.connection, lambda: pool.wait(60), pool.close


def queuepool_pool(url: str) -> tuple[Checkout, Callable[[], None], Callable[[], None]]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1),
        pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW,
        pool_timeout=60,
    )

    @contextmanager
    def checkout() -> Iterator[Any]:
        conn = engine.raw_connection()
        try:
            yield conn
        finally:
            conn.close()

    def warm() -> None:
        held = [engine.raw_connection() for _ in range(POOL_SIZE)]
        for conn in held:
            conn.close()

    return checkout, warm, engine.dispose


POOLS = {
    "flask-dbpool": flask_dbpool_pool,
    "psycopg_pool": psycopg_pool_pool,
    "SQLAlchemy QueuePool": queuepool_pool,
}


def spike(checkout: Checkout, burst: int, waves: int, pause: float) -> tuple[float, float]:
    """Run the spike; returns (its duration, the slowest checkout) in seconds."""
    slowest = [0.0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def request(start: threading.Barrier) -> None:
        start.wait()
        try:
            began = time.monotonic()
            with checkout() as conn:
                waited = time.monotonic() - began
                cursor = conn.cursor()
                cursor.execute("SELECT pg_sleep(0.002)")
                cursor.fetchall()
                conn.commit()
            with lock:
                slowest[0] = max(slowest[0], waited)
        except BaseException as error:
            errors.append(error)

    started = time.monotonic()
    for wave in range(waves):
        barrier = threading.Barrier(burst)
        threads = [threading.Thread(target=request, args=(barrier,)) for _ in range(burst)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if wave < waves - 1:
            time.sleep(pause)
    if errors:
        raise errors[0]
    return time.monotonic() - started, slowest[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--connect-delay", type=float, default=0.15)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--waves", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.2)
    parser.add_argument("--after", type=float, default=5.0)
    args = parser.parse_args()
    upstream = urlsplit(args.url)
    print(
        f"pool {POOL_SIZE} + {MAX_OVERFLOW}; connecting costs {args.connect_delay * 1000:.0f} ms; "
        f"{args.waves} waves of {args.burst} concurrent requests ({args.pause:g} s apart), "
        "each a 2 ms query"
    )
    print(
        "| pool | opened during the spike | open at its end | open "
        f"{args.after:g} s after | spike duration | slowest checkout |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    server = (upstream.hostname or "127.0.0.1", upstream.port or 5432)
    for name, make in POOLS.items():
        proxy = DelayProxy(server, args.connect_delay)
        checkout, warm, close = make(through(args.url, proxy.port))
        try:
            warm()
            time.sleep(0.5)  # background openers (psycopg_pool) settle
            before, _ = proxy.counts()
            duration, slowest = spike(checkout, args.burst, args.waves, args.pause)
            opened, live_end = proxy.counts()
            time.sleep(args.after)
            _, live_after = proxy.counts()
            print(
                f"| {name} | {opened - before} | {live_end} | {live_after} | "
                f"{duration:.2f} s | {slowest * 1000:.0f} ms |"
            )
        finally:
            close()
            proxy.close()


if __name__ == "__main__":
    main()
