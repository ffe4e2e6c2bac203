"""Which Flask endpoints wait for, and hold, the pool's connections.

Recorded by :attr:`DBPool.connection` (the wait) and at teardown (the hold), per endpoint
name: a bounded set (the app's routes), never the raw path. Costs a few clock reads per
request, outside the pool's own checkout path.
"""

from __future__ import annotations

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


class EndpointTimes:
    """Per-endpoint wait and hold histograms of one app's pool (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waits: dict[str, Histogram] = {}
        self._holds: dict[str, Histogram] = {}

    def record_wait(self, endpoint: str, seconds: float) -> None:
        """Count one checkout's wait for ``endpoint``."""
        with self._lock:
            histogram = self._waits.get(endpoint)
            if histogram is None:
                histogram = self._waits[endpoint] = Histogram()
            histogram.record(seconds)

    def record_hold(self, endpoint: str, seconds: float) -> None:
        """Count one checkout's hold for ``endpoint``."""
        with self._lock:
            histogram = self._holds.get(endpoint)
            if histogram is None:
                histogram = self._holds[endpoint] = Histogram()
            histogram.record(seconds)

    def snapshot(self) -> dict[str, EndpointTimesSnapshot]:
        """Every endpoint seen so far, by name."""
        empty = HistogramSnapshot()
        with self._lock:
            names = sorted(set(self._waits) | set(self._holds))
            return {
                name: EndpointTimesSnapshot(
                    self._waits[name].snapshot() if name in self._waits else empty,
                    self._holds[name].snapshot() if name in self._holds else empty,
                )
                for name in names
            }
