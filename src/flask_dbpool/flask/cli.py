"""``flask dbpool …``: status, check and doctor commands for the app's pool.

Registered on the app by :meth:`DBPool.init_app`. The commands run in a CLI process, so they
see that process's pool (fresh), not the pools of running server workers.
"""

from __future__ import annotations

import os
import statistics
import time

import click
from flask import current_app
from flask.cli import AppGroup

from flask_dbpool.errors import PoolError, one_line
from flask_dbpool.flask.extension import DBPool
from flask_dbpool.pool import Pool
from flask_dbpool.sizing import fleet_advice

__all__ = ["dbpool_cli"]

_CONFIG_KEYS = frozenset({"name", "pool_size", "max_overflow"})

dbpool_cli = AppGroup("dbpool", help="Inspect and check the flask-dbpool connection pool.")


def _pool() -> Pool:
    return DBPool.get_pool(current_app._get_current_object())  # type: ignore[attr-defined]


def _table(rows: list[tuple[str, object]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


@dbpool_cli.command("status")
def status() -> None:
    """Show the pool's settings, state and counters."""
    pool = _pool()
    config = pool.config
    stats = pool.stats()
    click.echo(f"pool {pool.name!r}: {pool.target}{' (closed)' if pool.closed else ''}")
    click.echo(
        _table(
            [
                ("pool_size", config.pool_size),
                ("max_overflow", config.max_overflow),
                ("timeout", f"{config.timeout:g} s"),
                ("pre_ping", config.pre_ping),
                ("max_lifetime", _seconds(config.max_lifetime)),
                ("idle_timeout", _seconds(config.idle_timeout)),
                ("min_idle", config.min_idle),
                ("leak_threshold", _seconds(config.leak_threshold)),
            ]
        )
    )
    click.echo("")
    shown = {key: value for key, value in stats.as_dict().items() if key not in _CONFIG_KEYS}
    click.echo(_table(list(shown.items())))
    click.echo("")
    click.echo("(this CLI process's pool; running server workers each have their own)")


def _seconds(value: float | None) -> str:
    return "off" if value is None else f"{value:g} s"


@dbpool_cli.command("check")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for a connection.")
@click.option("--count", default=3, show_default=True, help="Round trips to time.")
def check(timeout: float, count: int) -> None:
    """Connect, ping and report the server version and round-trip latency.

    Exits with status 1, printing the cause, when the database cannot be reached.
    """
    pool = _pool()
    started = time.perf_counter()
    try:
        with pool.connection(timeout=timeout) as conn:
            connected = time.perf_counter() - started
            entry = conn._entry
            assert entry is not None
            version = entry.driver.server_version(entry.raw)
            trips = []
            for _ in range(max(1, count)):
                begin = time.perf_counter()
                entry.driver.ping(entry.raw)
                trips.append((time.perf_counter() - begin) * 1000)
    except Exception as error:
        cause = error.__cause__ if isinstance(error, PoolError) and error.__cause__ else None
        click.echo(f"FAILED: {pool.target}: {one_line(error)}", err=True)
        if cause is not None:
            click.echo(f"cause: {one_line(cause)}", err=True)
        raise SystemExit(1) from None
    click.echo(f"OK: {pool.target}")
    click.echo(
        _table(
            [
                ("server", version),
                ("connect", f"{connected * 1000:.1f} ms"),
                (
                    "round trip",
                    f"min {min(trips):.2f} / median {statistics.median(trips):.2f} / "
                    f"max {max(trips):.2f} ms over {len(trips)} ping(s)",
                ),
            ]
        )
    )


@dbpool_cli.command("doctor")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes, each with its own pool (default: $WEB_CONCURRENCY, else 1).",
)
@click.option(
    "--others",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Connections to leave for other clients (migrations, cron, psql, other apps).",
)
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for a connection.")
def doctor(workers: int | None, others: int, timeout: float) -> None:
    """Check that every worker's pool fits in the server's max_connections.

    Exits with status 1 when it does not (with a suggestion), 2 when the database cannot be
    reached.
    """
    pool = _pool()
    source = "--workers"
    if workers is None:
        env = os.environ.get("WEB_CONCURRENCY")
        if env:
            try:
                workers, source = int(env), "WEB_CONCURRENCY"
            except ValueError:
                raise click.BadParameter(
                    f"WEB_CONCURRENCY must be an integer, got {env!r}", param_hint="--workers"
                ) from None
            if workers < 1:
                raise click.BadParameter(
                    f"WEB_CONCURRENCY must be >= 1, got {workers}", param_hint="--workers"
                )
        else:
            workers, source = 1, "default; set --workers or WEB_CONCURRENCY"
    try:
        with pool.connection(timeout=timeout) as conn:
            entry = conn._entry
            assert entry is not None
            limits = entry.driver.server_limits(entry.raw)
            version = entry.driver.server_version(entry.raw)
    except Exception as error:
        click.echo(f"cannot reach {pool.target}: {one_line(error)}", err=True)
        if error.__cause__ is not None:
            click.echo(f"cause: {one_line(error.__cause__)}", err=True)
        raise SystemExit(2) from None
    config = pool.config
    click.echo(f"server: {version} ({pool.target})")
    if limits is None:
        click.echo("no connection limit to check: the database is embedded, not a server")
        return
    advice = fleet_advice(
        limits,
        workers=workers,
        pool_size=config.pool_size,
        max_overflow=config.max_overflow,
        others=others,
    )
    click.echo(
        _table(
            [
                ("max_connections", limits.max_connections),
                ("reserved", f"{limits.reserved} (for administrators)"),
                ("other clients", f"{others} (--others)"),
                ("available", advice.budget),
                (
                    "per worker",
                    f"pool_size {config.pool_size} + max_overflow {config.max_overflow} "
                    f"= {advice.per_worker}",
                ),
                ("workers", f"{workers} ({source})"),
                ("fleet maximum", f"{workers} x {advice.per_worker} = {advice.fleet}"),
            ]
        )
    )
    if limits.by_client:
        click.echo("")
        click.echo(f"sessions open now: {limits.sessions}, by {limits.client_label}:")
        for name, count in limits.by_client.items():
            click.echo(f"  {count:>5}  {name}")
    click.echo("")
    if advice.fits:
        click.echo(f"OK: fits, with {advice.spare} connection(s) to spare")
        return
    click.echo(f"PROBLEM: {advice.fleet} connections needed, {advice.budget} available")
    click.echo(f"suggestion: {advice.suggestion}")
    raise SystemExit(1)
