"""Chaos under real gunicorn: the app of ``tests/chaos/app.py`` (flask-dbpool, pool of 4 per
worker) serving 16 keep-alive HTTP clients while every app session is terminated, then the
PostgreSQL server (a throwaway cluster of its own) is stopped for 1 s and started again.
Once per worker class: gthread, sync with ``--preload`` (the pool forked), gevent.

Invariants: failed requests no more than those in flight at the two faults; served again
within moments of the server's return; never more sessions than workers x pool size;
nothing left checked out or waiting; each worker's pool counts as many connections as the
server has sessions. ``make chaos`` runs longer rounds and prints the table.
"""

from __future__ import annotations

import contextlib
import threading

import pytest

pytest.importorskip("gunicorn", reason="gunicorn is not installed (the dev extra has it)")

from backends import Backend
from chaos.harness import POOL_SIZE, WORKER_CLASSES, run, run_kills, run_network_faults
from pgcluster import ThrowawayCluster

pytestmark = pytest.mark.timeout(120)

#: The issue's target is 0.2 s (measured 17-122 ms here, docs/benchmarks.md); the bound
#: leaves room for a loaded CI machine.
RECOVERY_BOUND = 0.5


@pytest.mark.parametrize("worker_class", list(WORKER_CLASSES))
def test_the_app_rides_out_killed_sessions_and_a_restart(
    throwaway_postgres: ThrowawayCluster, worker_class: str
) -> None:
    if worker_class == "gevent":
        pytest.importorskip("gevent", reason="gevent is not installed (the dev extra has it)")
    throwaway_postgres.start()
    outcome = run(throwaway_postgres, worker_class, quiet=1.5)
    print(outcome)
    assert outcome.requests > 200, outcome
    assert outcome.failed <= outcome.in_flight_at_faults, outcome
    assert outcome.recovery <= RECOVERY_BOUND, outcome
    assert outcome.most_sessions <= outcome.workers * POOL_SIZE, outcome
    assert outcome.most_open_per_worker <= POOL_SIZE, outcome
    assert outcome.leaked == 0, outcome
    assert outcome.sessions_after == outcome.open_total, outcome


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_the_app_rides_out_network_faults(
    throwaway_postgres: ThrowawayCluster, worker_class: str
) -> None:
    """Through a fault proxy: every connection reset, a 2 s black hole, 50 ms of latency.
    Only requests in flight at the reset may fail; the black hole and the latency only slow
    requests down (the pool's timeout is 10 s); then the same invariants."""
    if worker_class == "gevent":
        pytest.importorskip("gevent", reason="gevent is not installed (the dev extra has it)")
    throwaway_postgres.start()
    outcome, slowest = run_network_faults(throwaway_postgres, worker_class, quiet=1.0)
    print(outcome, f"slowest {slowest:.2f} s")
    assert outcome.requests > 200, outcome
    assert outcome.failed <= outcome.in_flight_at_faults, outcome
    assert outcome.recovery <= RECOVERY_BOUND, outcome
    assert 2.0 <= slowest < 10.0, slowest  # waited out the black hole, no timeout
    assert outcome.most_sessions <= outcome.workers * POOL_SIZE, outcome
    assert outcome.leaked == 0, outcome
    assert outcome.sessions_after == outcome.open_total, outcome


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_the_app_rides_out_killed_mariadb_connections(backend: Backend) -> None:
    """MariaDB: every app connection ended with KILL CONNECTION, twice, under load (gthread):
    only requests in flight at the kills fail; then the same invariants."""
    url, sessions = backend.tagged()
    admin = threading.Lock()  # one admin connection: the sampler and the kills take turns

    def count_sessions() -> int:
        with admin:
            return sessions()

    def kill_all() -> None:
        with admin:
            ids = sessions.ids()
        for session in ids:
            with admin, contextlib.suppress(backend.operational_error):
                backend.kill(session)  # (one the pool closed meanwhile is unknown: fine)

    outcome = run_kills(url, count_sessions, kill_all, "gthread", quiet=1.5)
    print(outcome)
    assert outcome.requests > 200, outcome
    assert outcome.failed <= outcome.in_flight_at_faults, outcome
    assert outcome.recovery <= RECOVERY_BOUND, outcome
    assert outcome.most_sessions <= outcome.workers * POOL_SIZE, outcome
    assert outcome.leaked == 0, outcome
    assert outcome.sessions_after == outcome.open_total, outcome
