"""``flask dbpool …``: status, check and doctor commands for the app's pools.

Registered on the app by :meth:`DBPool.init_app` and :func:`~flask_dbpool.flask.monitor`.
Each command covers every pool the app shows (its DBPool's, SQLAlchemy engines' added with
``monitor``), or the one ``--pool NAME`` picks. The commands run in a CLI process, so they
see that process's pools (fresh), not the pools of running server workers; ``status --from``
reads a running worker's pools through its dashboard's JSON instead.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from http.client import HTTPMessage
from typing import IO, Any
from urllib.error import HTTPError, URLError
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from urllib.request import HTTPRedirectHandler, Request, build_opener

import click
from flask import current_app
from flask.cli import AppGroup

from flask_dbpool.drivers import connection_rejected, driver_for_connection
from flask_dbpool.drivers.base import ServerLimits
from flask_dbpool.errors import ConfigError, PoolError, one_line
from flask_dbpool.flask.state import CONFIG_PREFIX, MonitoredPool, current_pools
from flask_dbpool.report import pool_report
from flask_dbpool.sizing import fleet_advice, pgbouncer_advice
from flask_dbpool.stats import DURATION_BUCKETS, PoolStats
from flask_dbpool.url import redact

__all__ = ["dbpool_cli"]


dbpool_cli = AppGroup("dbpool", help="Inspect and check the flask-dbpool connection pool.")


def _table(rows: list[tuple[str, object]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


_POOL_OPTION = click.option(
    "--pool",
    "pool_name",
    metavar="NAME",
    help="Only the pool called NAME (default: every pool the app shows: DBPool's, then "
    "those added with flask_dbpool.flask.monitor).",
)


def _pools(pool_name: str | None) -> list[MonitoredPool]:
    """The current app's pools, or the one ``--pool`` names; a usage error otherwise."""
    try:
        return current_pools(pool_name)
    except ConfigError as error:
        if pool_name is None:
            raise click.ClickException(str(error)) from None
        raise click.BadParameter(str(error), param_hint="--pool") from None


@dbpool_cli.command("status")
@click.option(
    "--from",
    "source",
    metavar="URL",
    help="Read a running server's pool through its dashboard (DBPOOL_DASHBOARD), e.g. "
    "http://127.0.0.1:5000/_dbpool. Default: this CLI process's own pool.",
)
@click.option(
    "--token",
    envvar="DBPOOL_DASHBOARD_TOKEN",
    help="The dashboard's token, needed from other hosts (default: $DBPOOL_DASHBOARD_TOKEN, "
    "else the app's DBPOOL_DASHBOARD_TOKEN).",
)
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for --from.")
@_POOL_OPTION
def status(source: str | None, token: str | None, timeout: float, pool_name: str | None) -> None:
    """Show each pool's settings, state, counters, timings and checked-out connections.

    Without --from it shows this CLI process's pools, which have done little; --from shows
    the pools of the server worker that answers. Exits with status 1 when --from fails.
    """
    reports: list[dict[str, Any]] = []
    if source is None:
        reports = [pool_report(pool) for pool in _pools(pool_name)]
        where = "this CLI process's pool; each server worker has its own: see --from"
    else:
        if token is None:
            token = current_app.config.get(f"{CONFIG_PREFIX}DASHBOARD_TOKEN")
        first = _fetch_dashboard_data(source, token, timeout, pool_name)
        reports = [first]
        if pool_name is None:  # the first pool comes by default; the others by name
            names = [name for name in first.get("pools") or [] if name != first.get("pool")]
            reports += [_fetch_dashboard_data(source, token, timeout, name) for name in names]
        where = f"read from {_without_query(source)}"
    for index, data in enumerate(reports):
        if index:
            click.echo("")
            click.echo("=" * 60)
        _echo_status(data, where)


def _without_query(url: str) -> str:
    """``url`` without its query (which may carry ``?token=``) or user info."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of ``url``, lower case, with the scheme's default port."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a malformed port: matches nothing
        port = -1
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def _same_origin(first: str, second: str) -> bool:
    """Whether two URLs share scheme, host and port (so https -> http is another origin)."""
    return _origin(first) == _origin(second)


class _TokenRedirects(HTTPRedirectHandler):
    """Follows redirects, sending the bearer token only back to the origin it was given for.

    urllib copies a request's headers onto the redirected request, whatever the new host or
    scheme; the token is therefore kept out of them (an unredirected header) and added again
    only when the new URL has the original scheme, host and port.
    """

    def __init__(self, origin: str, token: str | None) -> None:
        self._origin = origin
        self._token = token

    def redirect_request(
        self,
        req: Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and self._token and _same_origin(self._origin, new.full_url):
            new.add_unredirected_header("Authorization", f"Bearer {self._token}")
        return new


def _fetch_dashboard_data(
    source: str, token: str | None, timeout: float, pool_name: str | None = None
) -> dict[str, Any]:
    shown = _without_query(source)
    parts = urlsplit(source)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(
            f"expected an http(s) URL of the dashboard, got {shown!r}", param_hint="--from"
        )
    path = parts.path.rstrip("/")
    if not path.endswith("/data"):
        path += "/data"
    # A ?token= in the URL goes in the Authorization header: request lines land in logs.
    query = parse_qsl(parts.query, keep_blank_values=True)
    url_tokens = [value for key, value in query if key == "token"]
    if url_tokens:
        token = url_tokens[-1]
        query = [(key, value) for key, value in query if key != "token"]
    if pool_name is not None:
        query = [(key, value) for key, value in query if key != "pool"] + [("pool", pool_name)]
    url = urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))
    request = Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    opener = build_opener(_TokenRedirects(url, token))
    try:
        with opener.open(request, timeout=timeout) as response:  # (scheme checked above)
            body = response.read()
    except HTTPError as error:
        body = error.read() if error.code == 404 else b""
        error.close()  # (it holds the response)
        if error.code == 403:
            hint = "pass --token" if not token else "the token was not accepted"
            why = f"refused (403): served to loopback or with the dashboard's token; {hint}"
        elif error.code == 404:
            why = _not_found(body)
        else:
            why = f"HTTP {error.code} {error.reason}"
        raise click.ClickException(f"{shown}: {why}") from None
    except (URLError, OSError) as error:
        reason = error.reason if isinstance(error, URLError) else error
        raise click.ClickException(f"cannot reach {shown}: {reason}") from None
    try:
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("stats"), dict):
            raise ValueError("no stats")
    except ValueError:
        raise click.ClickException(
            f"{shown} did not answer with flask-dbpool dashboard data"
        ) from None
    return data


def _not_found(body: bytes) -> str:
    """Why a dashboard's ``/data`` answered 404: an unknown ``pool`` (the dashboard names the
    pools it has), or no dashboard there at all."""
    try:
        data = json.loads(body)
        names = ", ".join(repr(name) for name in data["pools"])
        return f"{data['error']} (404); its pools: {names or 'none'}"
    except (ValueError, KeyError, TypeError):
        return "no dashboard there (404): is DBPOOL_DASHBOARD on, at DBPOOL_DASHBOARD_PATH?"


def _echo_fleet(data: dict[str, Any]) -> None:
    """The whole server: one row per worker process, and its connections against the
    database's limit (a server's /data since issue 16; a lone process is one worker)."""
    workers = data.get("workers") or []
    if len(workers) > 1:
        click.echo(f"workers: {len(workers)} (the figures above are their totals)")
        columns = ("open", "in_use", "idle", "waiting", "acquired", "timeouts")
        click.echo("  " + "  ".join(f"{name:>8}" for name in ("pid", *columns)))
        for worker in workers:
            values = [worker["pid"], *(worker["stats"].get(name, "-") for name in columns)]
            click.echo("  " + "  ".join(f"{value:>8}" for value in values))
        click.echo("")
    server = data.get("server")
    if server:
        verdict = "fits" if server["fits"] else f"WARNING: does not fit: {server['suggestion']}"
        click.echo(
            f"server: {server['server']}: {server['open']} open by {server['workers']} "
            f"worker(s) of {server['available']} available (max_connections "
            f"{server['max_connections']} - reserved {server['reserved']}); all workers at "
            f"their maximum: {server['most']}: {verdict}"
        )
        click.echo("")


def _echo_status(data: dict[str, Any], where: str) -> None:
    stats: dict[str, Any] = data["stats"]
    settings: dict[str, Any] = data.get("settings", {})
    closed = " (closed)" if data.get("closed") else ""
    click.echo(f"pool {data.get('pool')!r}: {data.get('target')}{closed}")
    click.echo(f"({where})")
    click.echo("")
    workers = data.get("workers") or []
    one = workers[0]["stats"] if len(workers) > 1 else stats

    def setting(key: str) -> object:
        # A server's totals add every worker's settings up: show one worker's, and the sum.
        if one is stats:
            return stats.get(key, 0)
        return f"{one.get(key, 0)} per worker ({stats.get(key, 0)} in all)"

    rows: list[tuple[str, object]] = [
        ("pool_size", setting("pool_size")),
        ("max_overflow", setting("max_overflow")),
        ("min_idle", setting("min_idle")),
    ]
    if settings:
        rows += [
            ("timeout", _seconds(settings["timeout"])),
            ("pre_ping", settings["pre_ping"]),
            ("max_lifetime", _seconds(settings["max_lifetime"])),
            ("idle_timeout", _seconds(settings["idle_timeout"])),
            ("leak_threshold", _seconds(settings["leak_threshold"])),
        ]
    click.echo(_table(rows))
    click.echo("")
    state = ("open", "idle", "in_use", "connecting", "checking", "waiting")
    click.echo(_table([(key, stats[key]) for key in state if key in stats]))
    click.echo("")
    _echo_fleet(data)
    reasons = stats.get("closed_by_reason") or {}
    totals: list[tuple[str, object]] = []
    # In as_dict() order (a server's JSON comes with sorted keys), then anything newer.
    known = [key for key in PoolStats.__dataclass_fields__ if key in stats]
    for key in known + sorted(set(stats) - set(known)):
        value = stats[key]
        if key in state or key in _NOT_TOTALS or isinstance(value, dict):
            continue
        if key == "closed" and reasons:
            value = f"{value} ({', '.join(f'{k} {n}' for k, n in sorted(reasons.items()))})"
        elif isinstance(value, float):
            value = _duration(value)
        totals.append((key, value))
    click.echo(_table(totals))
    click.echo("")
    click.echo(
        _table(
            [
                (name, _distribution(stats[name]))
                for name in ("wait_time", "use_time", "create_time")
                if isinstance(stats.get(name), dict)
            ]
        )
    )
    checkouts = data.get("checkouts") or []
    click.echo("")
    if not checkouts:
        click.echo("checked out now: none")
        return
    click.echo(f"checked out now: {len(checkouts)}, longest held first")
    for checkout in checkouts:
        held = _duration(float(checkout.get("held_seconds", 0.0)))
        what = (
            " ".join(str(checkout[key]) for key in ("label", "caller") if checkout.get(key)) or "-"
        )
        site = f"  at {checkout['site']}" if checkout.get("site") else ""
        click.echo(f"  {held:>10}  {checkout.get('thread', '?')}  {what}{site}")


#: as_dict() keys that are not totals (settings, or shown in a section of their own).
_NOT_TOTALS = frozenset({"name", "pool_size", "max_overflow", "min_idle", "closed_by_reason"})


def _seconds(value: float | None) -> str:
    return "off" if value is None else f"{value:g} s"


def _duration(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds:.3g} s"


def _distribution(histogram: dict[str, Any]) -> str:
    """``count 12, mean 1.2 ms, max 8 ms, p50 <= 1 ms, p99 <= 10 ms`` from ``as_dict()``."""
    count = int(histogram.get("count", 0))
    if not count:
        return "none recorded"
    parts = [
        f"count {count}",
        f"mean {_duration(histogram['sum'] / count)}",
        f"max {_duration(histogram['max'])}",
    ]
    buckets = histogram.get("buckets", [])
    for quantile in (0.5, 0.99):
        seen = 0
        for bucket in buckets:
            seen += bucket["count"]
            if seen >= quantile * count:
                bound = bucket["le"]
                last = _duration(DURATION_BUCKETS[-1])
                label = f"<= {_duration(bound)}" if bound != "+Inf" else f"> {last}"
                parts.append(f"p{quantile * 100:g} {label}")
                break
    return ", ".join(parts)


def _echo_failure(head: str, error: Exception) -> None:
    """``<head>: rejected: <error>`` when the server refused the login (wrong password,
    unknown database or role), else ``<head>: <error>`` and its cause, on stderr."""
    cause = error.__cause__ if isinstance(error, PoolError) and error.__cause__ else None
    if connection_rejected(error):
        click.echo(f"{head}: rejected: {one_line(error)}", err=True)
    elif cause is not None and connection_rejected(cause):
        # (a pool that retried the rejection until the timeout: the cause is what counts)
        click.echo(f"{head}: rejected: {one_line(cause)}", err=True)
    else:
        click.echo(f"{head}: {one_line(error)}", err=True)
        if cause is not None:
            click.echo(f"cause: {one_line(cause)}", err=True)


@dbpool_cli.command("check")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for a connection.")
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Round trips to time (at least 1).",
)
@_POOL_OPTION
def check(timeout: float, count: int, pool_name: str | None) -> None:
    """Connect, ping and report the server version and round-trip latency, for each pool.

    Exits with status 1, printing the cause, when a database cannot be reached or rejects
    the login (wrong password, unknown database or role: the line then says "rejected").
    For a SQLAlchemy engine's pool the wait for a connection is the engine's pool_timeout.
    """
    failed = False
    for index, pool in enumerate(_pools(pool_name)):
        if index:
            click.echo("")
        failed = not _check_one(pool, timeout, count) or failed
    if failed:
        raise SystemExit(1)


def _check_one(pool: MonitoredPool, timeout: float, count: int) -> bool:
    started = time.perf_counter()
    try:
        with pool.connection(timeout=timeout) as conn:
            connected = time.perf_counter() - started
            raw = conn.driver_connection
            driver = driver_for_connection(raw)
            version = driver.server_version(raw)
            trips = []
            for _ in range(count):
                begin = time.perf_counter()
                driver.ping(raw, timeout)
                trips.append((time.perf_counter() - begin) * 1000)
    except Exception as error:
        _echo_failure(f"FAILED: {_named(pool)}", error)
        return False
    click.echo(f"OK: {_named(pool)}")
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
    return True


def _named(pool: MonitoredPool) -> str:
    """The pool's target, and its name when the app has more than one pool."""
    if len(current_pools()) < 2:
        return pool.target
    return f"{pool.target} (pool {pool.name!r})"


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
@click.option(
    "--pgbouncer-admin",
    "pgbouncer_admin",
    metavar="URL",
    envvar="DBPOOL_PGBOUNCER_ADMIN",
    help="PgBouncer's admin console, e.g. postgresql://pgbouncer@127.0.0.1:6432/pgbouncer "
    "(default: $DBPOOL_PGBOUNCER_ADMIN): size the fleet against PgBouncer instead.",
)
@_POOL_OPTION
def doctor(
    workers: int | None,
    others: int,
    timeout: float,
    pgbouncer_admin: str | None,
    pool_name: str | None,
) -> None:
    """Check that every worker's pools fit in their server's max_connections.

    Pools on one server (same host and port) add up: each worker opens up to the sum of
    their maxima there. Exits with status 1 when they do not fit (with a suggestion), 2 when
    a database cannot be reached or rejects the login.
    """
    pools = _pools(pool_name)
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
    servers: dict[str, list[tuple[MonitoredPool, ServerLimits | None, str]]] = {}
    for pool in pools:
        try:
            with pool.connection(timeout=timeout) as conn:
                raw = conn.driver_connection
                driver = driver_for_connection(raw)
                limits = driver.server_limits(raw)
                version = driver.server_version(raw)
        except Exception as error:
            _echo_failure(f"cannot reach {_named(pool)}", error)
            raise SystemExit(2) from None
        servers.setdefault(_server_of(pool.target), []).append((pool, limits, version))
    if pgbouncer_admin is not None:
        if not _doctor_pgbouncer(pgbouncer_admin, servers, workers, source, others, timeout):
            raise SystemExit(1)
        return
    fits = True
    for index, found in enumerate(servers.values()):
        if index:
            click.echo("")
        fits = _doctor_server(found, workers, source, others) and fits
    if not fits:
        raise SystemExit(1)


def _doctor_pgbouncer(
    admin_url: str,
    servers: dict[str, list[tuple[MonitoredPool, ServerLimits | None, str]]],
    workers: int,
    source: str,
    others: int,
    timeout: float,
) -> bool:
    """The fleet behind PgBouncer: its clients against ``max_client_conn``, PgBouncer's
    server pools against the server's ``max_connections``. Whether it fits; exits with 2
    when the admin console cannot be read."""
    from flask_dbpool.drivers.postgres import read_pgbouncer

    shown = redact(admin_url)
    try:
        settings, pools = read_pgbouncer(admin_url, timeout)
    except Exception as error:
        _echo_failure(f"cannot read PgBouncer's admin console at {shown}", error)
        raise SystemExit(2) from None
    found = [item for group in servers.values() for item in group]
    limits = next((limits for _, limits, _ in found if limits is not None), None)
    if limits is None:
        click.echo("no server connection limit to check against: the pools reach no server")
        return True
    per_worker = sum(pool.config.max_open for pool, _, _ in found)
    advice = pgbouncer_advice(
        limits, settings, pools, workers=workers, per_worker=per_worker, others=others
    )
    click.echo(f"server: {found[0][2]} through PgBouncer ({shown})")
    sizes = ", ".join(f"{name}={size if size >= 0 else 'default'}" for name, size in pools.items())
    click.echo(
        _table(
            [
                ("pool_mode", settings.get("pool_mode", "?")),
                ("max_client_conn", advice.max_client_conn),
                ("default_pool_size", settings.get("default_pool_size", "?")),
                ("reserve_pool_size", settings.get("reserve_pool_size", "0")),
                ("databases", sizes or "none"),
                ("workers", f"{workers} ({source})"),
                ("client connections", f"{workers} x {per_worker} = {advice.clients}"),
                ("server connections", f"{advice.server_connections} (its pools, one user)"),
                (
                    "available",
                    f"{advice.budget} (max_connections {limits.max_connections} - reserved "
                    f"{limits.reserved} - others {others})",
                ),
            ]
        )
    )
    click.echo("")
    if advice.fits:
        click.echo(
            f"OK: fits, with {advice.max_client_conn - advice.clients} client and "
            f"{advice.budget - advice.server_connections} server connection(s) to spare"
        )
        return True
    for problem in advice.problems:
        click.echo(f"PROBLEM: {problem}")
    return False


def _server_of(target: str) -> str:
    """Which server ``target`` (a redacted URL) reaches: its kind, host (or socket directory)
    and port, the default port filled in and the names of loopback made one, so that pools
    on one server add up whatever their URLs say (``postgresql+psycopg://`` and
    ``postgres://`` reach the same kind of server)."""
    parts = urlsplit(target)
    scheme = parts.scheme.split("+")[0]
    kind = _SERVER_KINDS.get(scheme, scheme)
    if kind not in _DEFAULT_PORTS:
        return target  # (a file, or a callable's name)
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query.get("host") or query.get("unix_socket") or "(local socket)"
    if host in _LOOPBACK_NAMES:
        host = "127.0.0.1"
    try:
        port = parts.port or int(query.get("port", _DEFAULT_PORTS[kind]))
    except ValueError:
        port = _DEFAULT_PORTS[kind]
    return f"{kind}://{host}:{port}"


#: Schemes that name the same kind of server, and each kind's default port.
_SERVER_KINDS = {"postgres": "postgresql", "mariadb": "mysql"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})


def _doctor_server(
    found: list[tuple[MonitoredPool, ServerLimits | None, str]],
    workers: int,
    source: str,
    others: int,
) -> bool:
    """Report one server's fleet sizing; whether it fits."""
    version, limits = found[0][2], found[0][1]
    targets = ", ".join(dict.fromkeys(pool.target for pool, _, _ in found))
    click.echo(f"server: {version} ({targets})")
    if limits is None:
        click.echo("no connection limit to check: the database is embedded, not a server")
        return True
    configs = [pool.config for pool, _, _ in found]
    advice = fleet_advice(
        limits,
        workers=workers,
        pool_size=sum(config.pool_size for config in configs),
        max_overflow=sum(config.max_overflow for config in configs),
        others=others,
    )
    per_worker = " + ".join(
        f"pool_size {config.pool_size} + max_overflow {config.max_overflow}" for config in configs
    )
    if len(found) > 1:
        per_worker = " + ".join(
            f"{pool.name!r} ({pool.config.pool_size} + {pool.config.max_overflow})"
            for pool, _, _ in found
        )
    click.echo(
        _table(
            [
                ("max_connections", limits.max_connections),
                ("reserved", f"{limits.reserved} (for administrators)"),
                ("other clients", f"{others} (--others)"),
                ("available", advice.budget),
                ("per worker", f"{per_worker} = {advice.per_worker}"),
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
        return True
    click.echo(f"PROBLEM: {advice.fleet} connections needed, {advice.budget} available")
    suggestion = advice.suggestion
    if len(found) > 1:
        suggestion += " (the sizes are the sum over this server's pools: share them out)"
    click.echo(f"suggestion: {suggestion}")
    return False
