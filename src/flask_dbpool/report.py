"""A pool's report as plain data: settings, stats, checkouts and per-endpoint times.

What the dashboard serves as JSON and what ``flask dbpool status`` prints, built in one place
so the two cannot drift apart. Core, not Flask side: no Flask, werkzeug or click import (the
Flask side's endpoint histograms come in as an argument), and no import of :mod:`pool`, not
even for type hints: it reads a pool through :class:`ReportSource`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from flask_dbpool.config import PoolConfig
from flask_dbpool.stats import HistogramSnapshot

__all__ = ["EndpointHistograms", "ReportSource", "pool_report"]

#: Per endpoint name, its ``(wait, hold)`` histograms (seconds): the shape the Prometheus
#: ``EndpointCollector`` takes too.
EndpointHistograms = Mapping[str, tuple[HistogramSnapshot, HistogramSnapshot]]


class _AsDict(Protocol):
    def as_dict(self) -> dict[str, Any]: ...


class ReportSource(Protocol):
    """What :func:`pool_report` reads of a pool (a :class:`~flask_dbpool.Pool` is one)."""

    @property
    def name(self) -> str:
        """The pool's name."""

    @property
    def target(self) -> str:
        """The redacted URL connections are opened from (never a password)."""

    @property
    def closed(self) -> bool:
        """Whether the pool was closed."""

    @property
    def config(self) -> PoolConfig:
        """The pool's settings."""

    def stats(self) -> _AsDict:
        """A snapshot of gauges and totals."""

    def checkouts(self) -> Sequence[_AsDict]:
        """The connections checked out now, longest held first."""


def pool_report(pool: ReportSource, endpoints: EndpointHistograms | None = None) -> dict[str, Any]:
    """``pool``'s settings, stats, checkouts and ``endpoints`` times as JSON-ready dicts.

    The JSON of the dashboard's ``/data`` and the input of ``flask dbpool status`` (which
    also reads it from a running server's ``/data``): its keys are an interface, keep them.
    """
    config = pool.config
    return {
        "pool": pool.name,
        "target": pool.target,
        "closed": pool.closed,
        "time": time.time(),
        "settings": {
            "timeout": config.timeout,
            "pre_ping": config.pre_ping,
            "max_lifetime": config.max_lifetime,
            "idle_timeout": config.idle_timeout,
            "leak_threshold": config.leak_threshold,
        },
        "stats": pool.stats().as_dict(),
        "checkouts": [checkout.as_dict() for checkout in pool.checkouts()],
        "endpoints": {
            name: {"wait": wait.as_dict(), "hold": hold.as_dict()}
            for name, (wait, hold) in (endpoints or {}).items()
        },
    }
