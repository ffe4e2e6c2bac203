"""Drive the notes API over real HTTP and summarise the result.

Requests are sent with :mod:`http.client` (so that no proxy settings from the environment get
in the way), each client thread on one keep-alive HTTP connection, as a browser or a load
balancer would; :func:`drive_in_subprocess` runs the clients in a process of their own, so
that their Python work does not compete with the server's for one interpreter lock.
"""

from __future__ import annotations

import http.client
import json
import math
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "BurstResult",
    "HttpError",
    "Traffic",
    "drive",
    "drive_in_subprocess",
    "format_table",
    "http_json",
    "percentile",
]


class HttpError(Exception):
    """A request answered with an unexpected status."""


def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    timeout: float = 15.0,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, Any]:
    """Send one request (``body`` as JSON if given); return the status and the decoded JSON.

    On ``connection`` (kept alive for the next request) if given, else on a new connection
    closed afterwards. The body of a 204 (or any empty body) decodes to ``None``. Raises
    ``OSError`` or :class:`http.client.HTTPException` on a transport failure.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"expected an http:// URL, got {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = {"Accept": "application/json"}
    if connection is None:
        headers["Connection"] = "close"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn = connection or http.client.HTTPConnection(
        parts.hostname, parts.port or 80, timeout=timeout
    )
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        status = response.status
    except BaseException:
        conn.close()  # a kept-alive connection reconnects on its next request
        raise
    if connection is None:
        conn.close()
    return status, (json.loads(raw) if raw else None)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Traffic:
    """The raw outcome of :func:`drive`."""

    requests: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    """One per successful request, in completion order."""
    errors: list[str] = field(default_factory=list)
    """One description per failed request (bad status or transport error)."""
    created_ids: list[int] = field(default_factory=list)
    """Ids of the notes the burst created (for clean-up)."""


def drive(
    base_url: str,
    requests: int,
    concurrency: int,
    *,
    write_every: int = 4,
    limit: int = 20,
    timeout: float = 15.0,
    keep_alive: bool = True,
) -> Traffic:
    """Send ``requests`` requests to the notes API at ``base_url`` from ``concurrency`` threads.

    Every ``write_every``-th request is ``POST /notes``; the others are
    ``GET /notes?limit=<limit>``. Each thread keeps one HTTP connection alive across its
    requests (``keep_alive=False``: a new one per request). A request fails if it does not
    answer 201 / 200 with the expected JSON; failures are recorded, never raised.
    """
    if requests < 1 or concurrency < 1:
        raise ValueError("requests and concurrency must be >= 1")
    base = base_url.rstrip("/")
    parts = urlsplit(base)
    lock = threading.Lock()
    traffic = Traffic(requests=requests, seconds=0.0)
    next_index = iter(range(requests)).__next__

    def one(index: int, connection: http.client.HTTPConnection | None) -> None:
        started = time.perf_counter()
        try:
            if index % write_every == 0:
                status, body = http_json(
                    "POST",
                    f"{base}/notes",
                    {"text": f"burst note #{index}"},
                    timeout=timeout,
                    connection=connection,
                )
                if status != 201 or not isinstance(body, dict) or "id" not in body:
                    raise HttpError(f"POST /notes -> {status} {body!r}"[:200])
                with lock:
                    traffic.created_ids.append(int(body["id"]))
            else:
                status, body = http_json(
                    "GET", f"{base}/notes?limit={limit}", timeout=timeout, connection=connection
                )
                if status != 200 or not isinstance(body, dict) or "notes" not in body:
                    raise HttpError(f"GET /notes -> {status} {body!r}"[:200])
        except (OSError, http.client.HTTPException, ValueError, HttpError) as exc:
            with lock:
                traffic.errors.append(f"{type(exc).__name__}: {exc}")
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        with lock:
            traffic.latencies_ms.append(elapsed_ms)

    def worker() -> None:
        connection = None
        if keep_alive and parts.hostname is not None:
            connection = http.client.HTTPConnection(
                parts.hostname, parts.port or 80, timeout=timeout
            )
        try:
            while True:
                with lock:
                    try:
                        index = next_index()
                    except StopIteration:
                        return
                one(index, connection)
        finally:
            if connection is not None:
                connection.close()

    threads = [
        threading.Thread(target=worker, name=f"demo-client-{i}", daemon=True)
        for i in range(min(concurrency, requests))
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    traffic.seconds = time.perf_counter() - started
    return traffic


def drive_in_subprocess(
    base_url: str, requests: int, concurrency: int, **options: Any
) -> Traffic:
    """:func:`drive` in a new process of its own (spawned: nothing of this process is
    inherited), so that the client threads' Python work does not compete with a server in
    this process for the interpreter lock, as real clients would not. Falls back to driving
    from this process if no process can be started. ``options``: as :func:`drive`."""
    try:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
            return executor.submit(drive, base_url, requests, concurrency, **options).result()
    except OSError:
        return drive(base_url, requests, concurrency, **options)


@dataclass(frozen=True)
class BurstResult:
    """One row of the demo's table: a burst against one mode."""

    mode: str
    """``pooled`` or ``direct``."""
    requests: int
    """Requests sent."""
    errors: int
    """Requests that failed."""
    seconds: float
    """Wall-clock duration of the burst."""
    p50_ms: float
    """Median latency of the successful requests, in milliseconds."""
    p99_ms: float
    """99th-percentile latency of the successful requests, in milliseconds."""
    connections_opened: int
    """Database connections the mode's app had opened by the end of the burst."""
    error_samples: tuple[str, ...] = ()
    """The first few error descriptions."""

    @property
    def requests_per_second(self) -> float:
        """Throughput over the whole burst."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_traffic(cls, mode: str, traffic: Traffic, connections_opened: int) -> BurstResult:
        """Summarise :func:`drive`'s outcome."""
        latencies = sorted(traffic.latencies_ms)
        return cls(
            mode=mode,
            requests=traffic.requests,
            errors=len(traffic.errors),
            seconds=traffic.seconds,
            p50_ms=percentile(latencies, 50),
            p99_ms=percentile(latencies, 99),
            connections_opened=connections_opened,
            error_samples=tuple(traffic.errors[:3]),
        )


_COLUMNS: tuple[tuple[str, Callable[[BurstResult], str]], ...] = (
    ("mode", lambda r: r.mode),
    ("requests", lambda r: str(r.requests)),
    ("req/s", lambda r: f"{r.requests_per_second:.0f}"),
    ("p50 ms", lambda r: f"{r.p50_ms:.1f}"),
    ("p99 ms", lambda r: f"{r.p99_ms:.1f}"),
    ("db connections opened", lambda r: str(r.connections_opened)),
    ("errors", lambda r: str(r.errors)),
)


def format_table(results: Sequence[BurstResult]) -> str:
    """The results as a plain-text table (first column left-aligned, the rest right)."""
    rows = [[name for name, _ in _COLUMNS]]
    rows += [[cell(result) for _, cell in _COLUMNS] for result in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]

    def line(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])
