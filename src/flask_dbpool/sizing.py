"""Fleet arithmetic: does every worker's pool fit in the server's ``max_connections``?

Each worker process (gunicorn ``--workers``, ``WEB_CONCURRENCY``) has its own pool, so the
server may see ``workers * (pool_size + max_overflow)`` connections from one application.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask_dbpool.drivers.base import ServerLimits

__all__ = ["FleetAdvice", "fleet_advice"]


@dataclass(frozen=True)
class FleetAdvice:
    """The verdict of :func:`fleet_advice`."""

    workers: int
    """Worker processes, each with its own pool."""
    per_worker: int
    """``pool_size + max_overflow``: the most connections one worker opens."""
    fleet: int
    """``workers * per_worker``."""
    budget: int
    """Connections the application may use: ``max_connections`` minus reserved ones and
    those set aside for other clients."""
    fits: bool
    """Whether ``fleet <= budget``."""
    suggestion: str
    """What to change when it does not fit (empty when it does)."""

    @property
    def spare(self) -> int:
        """Connections left over (negative when it does not fit)."""
        return self.budget - self.fleet


def fleet_advice(
    limits: ServerLimits, *, workers: int, pool_size: int, max_overflow: int, others: int = 0
) -> FleetAdvice:
    """Check ``workers`` pools of ``pool_size + max_overflow`` against ``limits``.

    ``others``: connections to leave for other clients (migrations, cron jobs, psql, other
    applications). Raises ``ValueError`` for a non-positive worker count or negative values.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if others < 0:
        raise ValueError(f"others must be >= 0, got {others}")
    per_worker = pool_size + max_overflow
    fleet = workers * per_worker
    budget = limits.max_connections - limits.reserved - others
    if fleet <= budget:
        return FleetAdvice(workers, per_worker, fleet, budget, True, "")
    needed = fleet + limits.reserved + others
    per_worker_budget = budget // workers
    if per_worker_budget < 1:
        suggestion = (
            f"even one connection per worker does not fit ({workers} workers, {budget} "
            f"connections available): put PgBouncer (transaction mode) in front, use fewer "
            f"workers, or raise max_connections to at least {needed}"
        )
    else:
        new_size = min(pool_size, per_worker_budget)
        new_overflow = per_worker_budget - new_size
        suggestion = (
            f"allow at most {per_worker_budget} connections per worker, e.g. "
            f"DBPOOL_POOL_SIZE={new_size} and DBPOOL_MAX_OVERFLOW={new_overflow} "
            f"({workers} x {per_worker_budget} = {workers * per_worker_budget} <= {budget}), "
            f"or raise max_connections to at least {needed}"
        )
    return FleetAdvice(workers, per_worker, fleet, budget, False, suggestion)
