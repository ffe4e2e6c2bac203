"""Connection health against real servers: ``pre_ping``, ``max_lifetime`` (with jitter),
``idle_timeout`` with ``min_idle``, ``keepalive_interval``, checks after a disconnect, the
``on_checkout`` / ``on_checkin`` hooks and their ``DBPOOL_*`` keys in the Flask extension.

Server sessions are killed and counted from a separate admin connection (see ``backends.py``),
so every assertion about "the connection was closed / replaced / pinged" is checked on the
server's side, not only in the pool's own counters. Nothing is mocked.

The tests at the end check that maintenance acts close to the configured times (within a few
multiples of them), not only eventually; the bounds are generous and only stop a hung test.
"""

from __future__ import annotations

import contextlib
import time
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask

from backends import Backend, MakePool, SessionCounter, query, wait_until
from flask_dbpool import ConfigError, DBPool, Pool

SERVERS = ["postgres", "mysql"]
ALL = ["sqlite", "postgres", "mysql"]

#: Bound for waits on maintenance (generous: only stops a hung test).
MAINTENANCE_WAIT = 9.0


def _url_and_counter(backend: Backend) -> tuple[str, SessionCounter | None]:
    """A URL, and a counter of its server sessions (``None`` for SQLite: no server)."""
    if not backend.has_server:
        return backend.url, None
    url, count = backend.tagged()
    return url, count


# ---------------------------------------------------------------------------------- pre_ping


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_pre_ping_replaces_a_killed_idle_connection(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(
        backend.url, pool_size=1, max_overflow=0, pre_ping=True, ping_interval=0, timeout=10
    )
    with pool.connection() as conn:
        dead = backend.session_id(conn)
    backend.kill(dead)

    with pool.connection() as conn:  # would get the killed session without the ping
        alive = backend.session_id(conn)
        assert query(conn, "SELECT 1") == [(1,)]
    assert alive != dead
    s = pool.stats()
    assert s.pings_failed == 1, s
    assert (s.created, s.closed, s.open) == (2, 1, 1), s


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_pre_ping_skips_connections_used_within_ping_interval(
    backend: Backend, make_pool: MakePool
) -> None:
    """Pinned on purpose: with ping_interval=60 a connection checked out a moment ago is lent
    without a round trip, even though its session was killed since. This is what the interval
    buys (no ping per checkout) and shows that it is honoured."""
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, pre_ping=True, ping_interval=60)
    with pool.connection() as conn:
        dead = backend.session_id(conn)
    backend.kill(dead)

    with pytest.raises(backend.operational_error), pool.connection() as conn:
        query(conn, "SELECT 1")  # the dead connection was handed out unchecked
    s = pool.stats()
    assert s.pings_failed == 0, s
    assert (s.open, s.closed) == (0, 1), f"the dead connection is discarded on return: {s}"


# ------------------------------------------------------------------------------ max_lifetime


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_max_lifetime_retires_idle_connections_and_lent_ones_only_on_return(
    backend: Backend, make_pool: MakePool
) -> None:
    """One pool, two connections past max_lifetime=0.5: the idle one is closed by maintenance,
    the lent one keeps working for as long as it is held and is closed when returned. (One
    test for both, since maintenance may take up to MAX_SLEEP to get to them.)"""
    url, count = _url_and_counter(backend)
    pool = make_pool(url, pool_size=2, max_overflow=0, max_lifetime=0.5, timeout=5)
    held = pool.acquire()
    spare = pool.acquire()
    held_id, spare_id = backend.session_id(held), backend.session_id(spare)
    start = time.monotonic()
    spare.close()
    if count is not None:
        assert count() == 2

    # Idle: retired by maintenance.
    wait_until(lambda: pool.stats().open == 1, timeout=MAINTENANCE_WAIT, what="idle retirement")
    assert time.monotonic() - start >= 0.4
    s = pool.stats()
    assert (s.open, s.idle, s.closed) == (1, 0, 1), s
    if count is not None:
        wait_until(lambda: spare_id not in count.ids(), timeout=5, what="the idle one to end")
        assert count.ids() == {held_id}, "the lent session must stay open"

    # Lent: marked for retiring by maintenance, never closed while held.
    entry = held._entry
    assert entry is not None
    wait_until(lambda: entry.retire, timeout=MAINTENANCE_WAIT, what="the lent one to be marked")
    assert backend.session_id(held) == held_id
    assert query(held, "SELECT 1") == [(1,)]
    assert pool.stats().closed == 1
    if count is not None:
        assert count() == 1

    held.close()  # ...closed as it comes back
    s = pool.stats()
    assert (s.open, s.idle, s.closed) == (0, 0, 2), f"closed when returned: {s}"
    if count is not None:
        wait_until(lambda: count() == 0, timeout=5, what="the returned session to end")
    with pool.connection() as conn:
        assert backend.session_id(conn) not in (held_id, spare_id)
        assert query(conn, "SELECT 1") == [(1,)]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_max_lifetime_is_jittered_per_connection(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=10, max_overflow=0, max_lifetime=100)
    assert pool.warm_up() == 10
    lifetimes = [entry.expires_at - entry.created for entry in pool._state.entries]
    assert len(lifetimes) == 10
    assert all(95.0 <= life <= 100.0 for life in lifetimes), lifetimes
    assert len(set(lifetimes)) > 1, f"every connection got the same lifetime: {lifetimes}"


# -------------------------------------------------------------------- idle_timeout, min_idle


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_idle_timeout_closes_idle_connections_down_to_min_idle(
    backend: Backend, make_pool: MakePool
) -> None:
    url, count = backend.tagged()
    pool = make_pool(url, pool_size=4, max_overflow=0, idle_timeout=0.5, min_idle=1)
    pool.warm_up()
    assert pool.stats().open == 4
    assert count() == 4
    warm = count.ids()

    wait_until(
        lambda: count() == 1 and pool.stats().open == 1,
        timeout=MAINTENANCE_WAIT,
        what="idle_timeout to close 3 of 4 idle connections",
    )
    time.sleep(0.7)  # past idle_timeout again: min_idle keeps the last one open
    s = pool.stats()
    assert (s.open, s.idle, s.created, s.closed) == (1, 1, 4, 3), s
    survivors = count.ids()
    assert len(survivors) == 1 and survivors <= warm, (
        "the kept connection is one of the warm ones, not closed and reopened",
        survivors,
        warm,
    )


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_min_idle_is_opened_by_maintenance_without_any_checkout(
    backend: Backend, make_pool: MakePool
) -> None:
    url, count = backend.tagged()
    pool = make_pool(url, pool_size=4, max_overflow=0, min_idle=2)
    wait_until(
        lambda: count() == 2 and pool.stats().idle == 2,
        timeout=5,
        what="maintenance to open min_idle=2",
    )
    s = pool.stats()
    assert (s.open, s.idle, s.created, s.acquired) == (2, 2, 2, 0), s
    time.sleep(0.2)
    assert count() == 2, "min_idle is a floor, not a reason to open more"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"pool_size": 4, "min_idle": 5}, "min_idle"),
        ({"pool_size": 4, "min_idle": -1}, "min_idle"),
        ({"min_idle": 1.5}, "min_idle"),
    ],
)
def test_invalid_min_idle_is_a_config_error(
    options: dict[str, Any], named: str, sqlite_url: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        Pool(sqlite_url, **options)


# ------------------------------------------------------------------------- keepalive_interval


def _pg_last_query(backend: Backend, pid: int) -> str:
    rows = backend.admin_query("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
    assert rows, f"PostgreSQL session {pid} is gone"
    return str(rows[0][0])


def _mariadb_idle_ms(backend: Backend, session: int) -> Decimal:
    rows = backend.admin_query(
        "SELECT time_ms FROM information_schema.processlist WHERE id = %s", (session,)
    )
    assert rows, f"MariaDB session {session} is gone"
    return Decimal(rows[0][0])


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_keepalive_pings_idle_connections(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, keepalive_interval=0.3)
    if backend.name == "postgres":
        marker = "SELECT 'dbpool keepalive marker'"
        with pool.connection() as conn:
            conn.autocommit = True  # so that the marker stays the session's last statement
            session = backend.session_id(conn)
            query(conn, marker)
            assert _pg_last_query(backend, session) == marker
        # Idle in the pool: the next statement the server sees is the keepalive ping.
        wait_until(
            lambda: _pg_last_query(backend, session) == "SELECT 1",
            timeout=MAINTENANCE_WAIT,
            what="the keepalive ping to reach the server",
        )
    else:
        version = str(backend.admin_query("SELECT VERSION()")[0][0])
        if "mariadb" not in version.lower():
            # MySQL's processlist has no millisecond idle time and a ping (COM_PING) leaves no
            # statement text: no reliable server-side signal of a keepalive within seconds.
            pytest.skip(f"needs MariaDB's information_schema.processlist.time_ms ({version})")
        with pool.connection() as conn:
            session = backend.session_id(conn)
        # COM_PING leaves INFO empty but resets the session's idle time (TIME_MS): a drop in
        # it while nobody uses the connection is the keepalive ping.
        samples: list[Decimal] = []

        def idle_time_dropped() -> bool:
            samples.append(_mariadb_idle_ms(backend, session))
            return len(samples) > 1 and samples[-1] < samples[-2]

        wait_until(
            idle_time_dropped,
            timeout=MAINTENANCE_WAIT,
            what="the keepalive ping to reset the session's idle time",
        )
    # A keepalive ping may be under way right now (the connection then counts as checking).
    wait_until(lambda: pool.stats().idle == 1, MAINTENANCE_WAIT, "the ping to finish")
    s = pool.stats()
    assert (s.created, s.open, s.pings_failed) == (1, 1, 0), s
    with pool.connection() as conn:
        assert backend.session_id(conn) == session, "pinged, not replaced"


# ------------------------------------------------------------------- checks after disconnect


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_disconnect_gets_the_other_idle_connections_checked_before_reuse(
    backend: Backend, make_pool: MakePool
) -> None:
    """A connection found dead (here by a classify_error that says so: a killed session's
    error, by default, says the server went away, which drains the pool, see the next test)
    gets the others checked before reuse."""
    pool = make_pool(
        backend.url,
        pool_size=4,
        max_overflow=0,
        timeout=10,
        classify_error=lambda error, raw: "dead",
    )  # no pre_ping
    held = [pool.acquire() for _ in range(4)]
    killed = {backend.session_id(conn) for conn in held}
    for conn in held:
        conn.close()
    assert pool.stats().idle == 4
    for session in killed:
        backend.kill(session)

    # One borrower runs into the dead session; the driver error reaches it.
    with pytest.raises(backend.operational_error), pool.connection() as conn:
        query(conn, "SELECT 1")

    # The other three, killed too, must not be lent unchecked.
    held = [pool.acquire() for _ in range(4)]
    try:
        sessions = {backend.session_id(conn) for conn in held}
        for conn in held:
            assert query(conn, "SELECT 1") == [(1,)]
    finally:
        for conn in held:
            conn.close()
    assert len(sessions) == 4 and not sessions & killed, (sessions, killed)
    s = pool.stats()
    assert s.pings_failed >= 3, s
    assert (s.open, s.closed, s.created) == (4, 4, 8), s


@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)
def test_a_session_killed_by_the_server_drains_the_pool(
    backend: Backend, make_pool: MakePool
) -> None:
    """The error of a session the server terminated (PostgreSQL 57P01 admin shutdown, MySQL
    2013 lost connection) says the server is no longer the one connected to: the connection
    is discarded and every other one retired at once, without a check each."""
    pool = make_pool(backend.url, pool_size=4, max_overflow=0, timeout=10)  # no pre_ping
    held = [pool.acquire() for _ in range(4)]
    killed = {backend.session_id(conn) for conn in held}
    for conn in held:
        conn.close()
    for session in killed:
        backend.kill(session)
    with pytest.raises(backend.operational_error), pool.connection() as conn:
        query(conn, "SELECT 1")
    s = pool.stats()
    assert s.closed_by_reason == {"broken": 1, "drained": 3} and s.open == 0, s
    held = [pool.acquire() for _ in range(4)]
    try:
        sessions = {backend.session_id(conn) for conn in held}
    finally:
        for conn in held:
            conn.close()
    assert len(sessions) == 4 and not sessions & killed
    assert pool.stats().pings_failed == 0


# ------------------------------------------------------------------ on_checkout / on_checkin


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_checkout_and_checkin_hooks_run_once_per_checkout_and_return(
    backend: Backend, make_pool: MakePool
) -> None:
    calls: list[tuple[str, Any]] = []
    pool = make_pool(
        backend.url,
        pool_size=1,
        max_overflow=0,
        on_checkout=lambda raw: calls.append(("out", raw)),
        on_checkin=lambda raw: calls.append(("in", raw)),
    )
    raws = []
    for i in range(3):
        with pool.connection() as conn:
            raw = conn.driver_connection
            raws.append(raw)
            assert len(calls) == 2 * i + 1 and calls[-1][0] == "out" and calls[-1][1] is raw
            query(conn, "SELECT 1")
        assert len(calls) == 2 * i + 2 and calls[-1][0] == "in" and calls[-1][1] is raw
    conn = pool.acquire()
    pool.release(conn)  # acquire / release run them too
    assert [kind for kind, _ in calls] == ["out", "in"] * 4
    assert all(raw is raws[0] for raw in raws)
    assert all(raw is raws[0] for _, raw in calls), "called with the driver connection"


def test_start_up_checkouts_do_not_run_on_checkout(sqlite_url: str, make_pool: MakePool) -> None:
    # open_timeout / wait_ready check connections out to open them: not a use, so a hook
    # that only works inside the application (or is not ready yet) must not run, nor fail.
    calls: list[Any] = []
    pool = make_pool(sqlite_url, pool_size=2, min_idle=2, open_timeout=5, on_checkout=calls.append)
    pool.wait_ready(5)
    # At least 2: while wait_ready holds both, maintenance may already be opening another
    # to keep min_idle connections idle (a race of the test, not of the pool).
    assert calls == [] and pool.stats().open >= 2
    with pool.connection():
        assert len(calls) == 1, "a real checkout runs it"

    def not_ready(raw: Any) -> None:
        raise RuntimeError("hook used at start-up")

    pool = make_pool(sqlite_url, open_timeout=5, on_checkout=not_ready)
    assert pool.stats().open == 1


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_failing_on_checkout_reaches_the_caller_and_rolls_the_connection_back_into_the_pool(
    backend: Backend, make_pool: MakePool
) -> None:
    table = backend.new_table()
    armed = False

    def on_checkout(raw: Any) -> None:
        if armed:
            cur = raw.cursor()
            cur.execute(backend.sql(f"INSERT INTO {table} VALUES (%s, %s)"), (1, "hook"))
            cur.close()
            raise RuntimeError("checkout hook failed")

    pool = make_pool(backend.url, pool_size=1, max_overflow=0, on_checkout=on_checkout)
    with pool.connection() as conn:
        first = conn.driver_connection
    armed = True
    with pytest.raises(RuntimeError, match="checkout hook failed"):
        pool.acquire(timeout=2)
    s = pool.stats()
    assert (s.open, s.idle, s.in_use, s.closed) == (1, 1, 0, 0), f"back in the pool: {s}"

    armed = False
    with pool.connection(timeout=2) as conn:
        assert conn.driver_connection is first, "the same connection, kept"
        assert query(conn, f"SELECT COUNT(*) FROM {table}") == [(0,)], "the hook's insert"
        conn.commit()
    assert backend.count_rows(table) == 0


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_failing_on_checkin_discards_the_connection_and_frees_its_slot(
    backend: Backend, make_pool: MakePool
) -> None:
    url, count = _url_and_counter(backend)
    seen: list[Any] = []
    armed = True

    def on_checkin(raw: Any) -> None:
        seen.append(raw)
        if armed:
            raise RuntimeError("checkin hook failed")

    pool = make_pool(url, pool_size=1, max_overflow=0, on_checkin=on_checkin)
    # (Whether release() re-raises the hook's error is not pinned here; today it is logged.)
    with contextlib.suppress(RuntimeError), pool.connection() as conn:
        raw = conn.driver_connection
        first = backend.session_id(conn)
    assert seen == [raw]
    s = pool.stats()
    assert (s.open, s.idle, s.closed) == (0, 0, 1), f"discarded: {s}"
    if count is not None:
        wait_until(lambda: count() == 0, timeout=5, what="its server session to end")
    else:
        assert backend.client_closed(raw)

    armed = False
    with pool.connection(timeout=2) as conn:  # the slot was freed
        assert backend.session_id(conn) != first
    assert pool.stats().open == 1


# ------------------------------------------------------------------------------ Flask config


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_flask_config_keys_for_health_options(backend: Backend) -> None:
    url, count = backend.tagged()
    app = Flask(__name__)
    app.config.update(
        DBPOOL_URL=url,
        DBPOOL_POOL_SIZE=3,
        DBPOOL_MAX_OVERFLOW=0,
        DBPOOL_TIMEOUT=10,
        DBPOOL_PRE_PING=True,
        DBPOOL_PING_INTERVAL=0,
        DBPOOL_MIN_IDLE=2,
        DBPOOL_MAX_LIFETIME=None,
    )
    db = DBPool(app)
    pool = DBPool.get_pool(app)
    try:
        c = pool.config
        assert (c.pre_ping, c.ping_interval, c.min_idle, c.max_lifetime) == (True, 0, 2, None)
        # DBPOOL_MIN_IDLE: opened by maintenance before any request.
        wait_until(lambda: count() == 2, timeout=5, what="DBPOOL_MIN_IDLE=2 to be opened")
        # DBPOOL_MAX_LIFETIME=None: no connection ever expires.
        assert pool._state.entries and all(
            e.expires_at == float("inf") for e in pool._state.entries
        )

        with app.app_context():
            dead = backend.session_id(db.connection)
        backend.kill(dead)
        # DBPOOL_PRE_PING: the next request does not get the killed session (LIFO: it is the
        # first one it is offered).
        with app.app_context():
            alive = backend.session_id(db.connection)
            assert query(db.connection, "SELECT 1") == [(1,)]
        assert alive != dead
        assert pool.stats().pings_failed == 1, pool.stats()
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("DBPOOL_PING_INTERVAL", -1),
        ("DBPOOL_PRE_PING", "yes"),
        ("DBPOOL_MIN_IDLE", 9),
        ("DBPOOL_MAX_LIFETIME", 0),
        ("DBPOOL_IDLE_TIMEOUT", "600"),
        ("DBPOOL_KEEPALIVE_INTERVAL", -5),
        ("DBPOOL_ON_CHECKOUT", "not callable"),
        ("DBPOOL_ON_CHECKIN", 1),
    ],
)
def test_flask_bad_health_value_names_the_config_key(
    key: str, value: object, sqlite_url: str
) -> None:
    app = Flask(__name__)
    app.config.update(DBPOOL_URL=sqlite_url, DBPOOL_POOL_SIZE=3, **{key: value})
    with pytest.raises(ConfigError, match=key):
        DBPool(app)
    assert "dbpool" not in app.extensions


# ------------------------------------------------------------- maintenance acts on time


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_max_lifetime_acts_within_a_few_lifetimes(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, max_lifetime=0.5)
    with pool.connection() as conn:
        query(conn, "SELECT 1")
    deadline = time.monotonic() + 2.5
    while pool.stats().open and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool.stats().open == 0, pool.stats()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_idle_timeout_acts_within_a_few_idle_timeouts(
    backend: Backend, make_pool: MakePool
) -> None:
    pool = make_pool(backend.url, pool_size=4, max_overflow=0, idle_timeout=0.5, min_idle=1)
    wait_until(lambda: pool.stats().idle == 1, timeout=5, what="min_idle to be opened")
    time.sleep(0.1)  # maintenance has nothing to do now: it goes to sleep
    pool.warm_up()
    deadline = time.monotonic() + 2.5
    while pool.stats().open > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool.stats().open == 1, pool.stats()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_keepalive_pings_at_its_interval(backend: Backend, make_pool: MakePool) -> None:
    pool = make_pool(backend.url, pool_size=1, max_overflow=0, keepalive_interval=0.3)
    with pool.connection() as conn:
        session = backend.session_id(conn)
    stamps: set[Any] = set()
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline and len(stamps) < 4:
        rows = backend.admin_query(
            "SELECT query_start FROM pg_stat_activity WHERE pid = %s", (session,)
        )
        stamps.add(rows[0][0])
        time.sleep(0.02)
    # The last statement time changes with each ping: 3 pings in 2.5 s at a 0.3 s interval.
    assert len(stamps) >= 4, stamps
