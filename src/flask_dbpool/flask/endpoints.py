"""Which Flask endpoints wait for, and hold, the pool's connections.

Recorded by :attr:`DBPool.connection` (the wait) and at teardown (the hold), per endpoint
name: a bounded set (the app's routes), never the raw path. Costs a few clock reads per
request, outside the pool's own checkout path.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

from flask import has_request_context, request

from flask_dbpool.stats import Histogram, HistogramSnapshot

__all__ = ["NO_REQUEST", "UNMATCHED", "EndpointTimes", "EndpointTimesSnapshot", "endpoint_label"]

#: Label of checkouts outside a request (CLI commands, ``app.app_context()`` blocks).
NO_REQUEST = "<no request>"
#: Label of requests that matched no route (404, 405).
UNMATCHED = "<unmatched>"


def endpoint_label() -> str:
    """The current request's endpoint name, or :data:`NO_REQUEST` / :data:`UNMATCHED`."""
    if not has_request_context():
        return NO_REQUEST
    return request.endpoint or UNMATCHED


@dataclass(frozen=True)
class EndpointTimesSnapshot:
    """Wait and hold durations (seconds) of one endpoint's checkouts."""

    wait: HistogramSnapshot
    """Time spent in ``db.connection`` getting the connection."""
    hold: HistogramSnapshot
    """Time from checkout to return at teardown."""


class _Stripe:
    """One shard of an app's endpoint histograms, with its own lock."""

    __slots__ = ("holds", "lock", "waits")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waits: dict[str, Histogram] = {}
        self.holds: dict[str, Histogram] = {}


#: Shards per app: request threads spread over them round-robin, so two threads rarely
#: record into the same one at once (gthread workers run 4-64 threads).
STRIPES = 16


class EndpointTimes:
    """Per-endpoint wait and hold histograms of one app's pool (thread-safe).

    Recording costs no lock shared by every request thread: each record goes to one of
    :data:`STRIPES` shards, chosen round-robin (``itertools.count`` is atomic in CPython),
    each with its own lock; :meth:`snapshot` merges them.
    """

    def __init__(self) -> None:
        self._stripes = tuple(_Stripe() for _ in range(STRIPES))
        self._turn = itertools.count()

    def record(self, endpoint: str, wait: float | None, hold: float | None) -> None:
        """Count one checkout of ``endpoint``: its wait for a connection and how long it was
        held (either may be ``None``: a wait that timed out held nothing)."""
        stripe = self._stripes[next(self._turn) % STRIPES]
        with stripe.lock:
            if wait is not None:
                histogram = stripe.waits.get(endpoint)
                if histogram is None:
                    histogram = stripe.waits[endpoint] = Histogram()
                histogram.record(wait)
            if hold is not None:
                histogram = stripe.holds.get(endpoint)
                if histogram is None:
                    histogram = stripe.holds[endpoint] = Histogram()
                histogram.record(hold)

    def record_wait(self, endpoint: str, seconds: float) -> None:
        """Count one checkout's wait for ``endpoint``."""
        self.record(endpoint, seconds, None)

    def record_hold(self, endpoint: str, seconds: float) -> None:
        """Count one checkout's hold for ``endpoint``."""
        self.record(endpoint, None, seconds)

    def snapshot(self) -> dict[str, EndpointTimesSnapshot]:
        """Every endpoint seen so far, by name (the shards merged)."""
        waits: dict[str, Histogram] = {}
        holds: dict[str, Histogram] = {}
        for stripe in self._stripes:
            with stripe.lock:
                for merged, part in ((waits, stripe.waits), (holds, stripe.holds)):
                    for name, histogram in part.items():
                        merged.setdefault(name, Histogram()).merge(histogram)
        empty = HistogramSnapshot()
        return {
            name: EndpointTimesSnapshot(
                waits[name].snapshot() if name in waits else empty,
                holds[name].snapshot() if name in holds else empty,
            )
            for name in sorted(set(waits) | set(holds))
        }
