"""Fleet arithmetic: does every worker's pool fit in the server's ``max_connections``?

Each worker process (gunicorn ``--workers``, ``WEB_CONCURRENCY``) has its own pool, so the
server may see ``workers * (pool_size + max_overflow)`` connections from one application.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask_dbpool.drivers.base import ServerLimits

__all__ = ["BouncerAdvice", "FleetAdvice", "fleet_advice", "pgbouncer_advice"]


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


@dataclass(frozen=True)
class BouncerAdvice:
    """The verdict of :func:`pgbouncer_advice`: the fleet against PgBouncer's
    ``max_client_conn``, and PgBouncer's server pools against the server's connections."""

    clients: int
    """``workers * per_worker``: the client connections the fleet may open to PgBouncer."""
    max_client_conn: int
    """PgBouncer's ``max_client_conn``."""
    server_connections: int
    """The server connections PgBouncer may open for the databases it lists (pool size plus
    reserve per database, for one user; capped by ``max_db_connections``)."""
    budget: int
    """The server's ``max_connections`` minus reserved ones and those set aside for others."""
    problems: tuple[str, ...]
    """What does not fit, each with a concrete suggestion (empty when everything fits)."""

    @property
    def fits(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems


def pgbouncer_advice(
    limits: ServerLimits,
    settings: dict[str, str],
    pools: dict[str, int],
    *,
    workers: int,
    per_worker: int,
    others: int = 0,
) -> BouncerAdvice:
    """Check a fleet behind PgBouncer. ``settings``: ``SHOW CONFIG`` (key -> value);
    ``pools``: each database's pool size from ``SHOW DATABASES`` (-1 or absent: the
    default). Raises ``ValueError`` for a non-positive worker count."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    default_size = int(settings.get("default_pool_size", "20"))
    reserve = int(settings.get("reserve_pool_size", "0"))
    max_db = int(settings.get("max_db_connections", "0"))
    max_client_conn = int(settings.get("max_client_conn", "100"))
    server_connections = 0
    for size in pools.values():
        per_database = (size if size >= 0 else default_size) + reserve
        server_connections += min(per_database, max_db) if max_db > 0 else per_database
    clients = workers * per_worker
    budget = limits.max_connections - limits.reserved - others
    problems = []
    if clients > max_client_conn:
        problems.append(
            f"the fleet may open {clients} client connections ({workers} x {per_worker}) but "
            f"PgBouncer accepts max_client_conn={max_client_conn}: raise max_client_conn to at "
            f"least {clients} (clients are cheap for PgBouncer), or use fewer workers"
        )
    if server_connections > budget:
        databases = max(1, len(pools))
        fitting = max(1, budget // databases - reserve)
        problems.append(
            f"PgBouncer may open {server_connections} server connections but the server has "
            f"{budget} available: lower default_pool_size to {fitting} (with {databases} "
            f"database(s) and reserve_pool_size={reserve}), or raise max_connections to at least "
            f"{server_connections + limits.reserved + others}"
        )
    return BouncerAdvice(clients, max_client_conn, server_connections, budget, tuple(problems))
