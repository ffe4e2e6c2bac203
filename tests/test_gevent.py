"""The pool under gevent monkey-patching, against every real backend.

With ``monkey.patch_all()`` threads are greenlets and ``threading.Lock`` is a gevent lock, so
the pool's lock and its waiters' one-shot wake locks cooperate with the hub. Each test runs a
script in a *subprocess* (monkey-patching cannot be undone, and must happen before anything
imports ``threading``, ``socket`` or a driver) and parses the JSON summary it prints.

The script, for one backend:

* runs ``GREENLETS`` greenlets sharing a ``pool_size=4, max_overflow=2`` pool, each doing
  ``CHECKOUTS`` checkouts that hold the connection through a server-side sleep
  (``pg_sleep`` / ``SLEEP``: proves the driver yields to the hub) or, for SQLite, a
  ``gevent.sleep``; a monitor greenlet samples ``stats()`` meanwhile. Every holder records its
  driver connection and server session in sets while it holds them, and checks the query
  returned its own token (two greenlets on one connection would interleave their traffic);
* waits for a connection with ``acquire(timeout=...)`` on a saturated pool (``PoolTimeout``,
  while other greenlets keep running);
* interrupts waiters with ``gevent.Timeout``: a plain one, ones racing a release, and ones
  killed right after a connection or a fresh slot was handed to them (the hand-off must come
  back to the pool), plus ``gevent.Timeout`` interrupting a connect in progress (not the
  pool's first connect: see the known bug noted in phase (d) of the script);
* finally checks no slot was lost: ``open == idle``, the full ``pool_size + max_overflow`` can
  be checked out at once again, and ``close()`` leaves nothing open.

psycopg 3 (3.1.14+) cooperates with gevent on its own: when ``psycopg.waiting`` is imported
after ``monkey.patch_all()`` it picks a pure-Python wait function over the patched ``select``
instead of the C ``wait_c`` (which would block the hub). The script records which one was
chosen. PyMySQL is pure Python over the patched ``socket``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

GREENLETS = 60
CHECKOUTS = 3
HOLD = 0.02
POOL_SIZE = 4
MAX_OVERFLOW = 2
LIMIT = POOL_SIZE + MAX_OVERFLOW
SUBPROCESS_TIMEOUT = 60
SRC = Path(__file__).resolve().parent.parent / "src"

SCRIPT = r'''
from gevent import monkey

monkey.patch_all()

import json
import sys
import threading
import time

import gevent

import flask_dbpool
from flask_dbpool import Pool, PoolTimeout

backend, url, greenlets, checkouts, hold, pool_size, max_overflow = sys.argv[1:]
GREENLETS, CHECKOUTS, HOLD = int(greenlets), int(checkouts), float(hold)
POOL_SIZE, MAX_OVERFLOW = int(pool_size), int(max_overflow)
LIMIT = POOL_SIZE + MAX_OVERFLOW

summary = {
    "backend": backend,
    "flask_dbpool": flask_dbpool.__file__,
    "patched": {m: monkey.is_module_patched(m) for m in ("threading", "socket", "select")},
    "lock_type": f"{type(threading.Lock()).__module__}.{type(threading.Lock()).__name__}",
}
problems = []  # every invariant violation, with what was seen

# Overflow connections are retired by maintenance once idle this long (see "final state").
GRACE = 0.05
pool = Pool(
    url, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, timeout=30, overflow_idle_timeout=GRACE
)

if backend == "postgres":
    HOLD_SQL = "SELECT %s::int, pg_backend_pid(), pg_sleep(%s)"
elif backend == "mysql":
    HOLD_SQL = "SELECT %s, CONNECTION_ID(), SLEEP(%s)"
else:
    HOLD_SQL = "SELECT ?"


def run_hold(conn, token):
    """Hold ``conn`` for HOLD seconds; return the server session id the query ran in."""
    cur = conn.cursor()
    try:
        if backend == "sqlite":
            cur.execute(HOLD_SQL, (token,))
            row = cur.fetchone()
            gevent.sleep(HOLD)
            session = id(conn.driver_connection)
        else:
            cur.execute(HOLD_SQL, (token, HOLD))
            row = cur.fetchone()
            session = row[1]
    finally:
        cur.close()
    if row[0] != token:
        problems.append(f"token {token}: the query answered {row[0]!r} (shared connection?)")
    return session


# ---------------------------------------------------------------- phase 1: concurrent load

held = set()  # driver connections held right now
held_sessions = set()  # their server sessions (SQLite: ids of the driver connections)
peaks = {"open": 0, "in_use": 0, "held": 0, "waiting": 0}
hold_times = []
done = set()
running = True


def observe(stats):
    peaks["open"] = max(peaks["open"], stats.open)
    peaks["in_use"] = max(peaks["in_use"], stats.in_use)
    peaks["waiting"] = max(peaks["waiting"], stats.waiting)
    if stats.open > LIMIT:
        problems.append(f"open={stats.open} > pool_size + max_overflow = {LIMIT}")
    if stats.idle < 0 or stats.in_use < 0 or stats.connecting < 0:
        problems.append(f"negative gauge: {stats}")


def monitor():
    while running:
        observe(pool.stats())
        gevent.sleep(0.001)


def worker(i):
    for k in range(CHECKOUTS):
        token = i * 1000 + k
        with pool.connection() as conn:
            raw = conn.driver_connection
            if raw in held:
                problems.append(f"greenlet {i}: driver connection {raw!r} already held")
            held.add(raw)
            peaks["held"] = max(peaks["held"], len(held))
            stats = pool.stats()
            observe(stats)
            if len(held) > stats.in_use:
                problems.append(f"{len(held)} connections held but stats().in_use={stats.in_use}")
            try:
                started = time.monotonic()
                session = run_hold(conn, token)
                hold_times.append(time.monotonic() - started)
                if session in held_sessions:
                    problems.append(f"greenlet {i}: server session {session} already held")
                held_sessions.add(session)
                gevent.sleep(0)  # let others run while this session is marked held
                held_sessions.discard(session)
                if raw not in held:
                    problems.append(f"greenlet {i}: its connection was released by another")
            finally:
                held.discard(raw)
    done.add(i)


watcher = gevent.spawn(monitor)
started = time.monotonic()
workers = [gevent.spawn(worker, i) for i in range(GREENLETS)]
gevent.joinall(workers, timeout=40)
wall = time.monotonic() - started
running = False
watcher.join(5)

summary["driver_module"] = None
with pool.connection() as conn:
    summary["driver_module"] = type(conn.driver_connection).__module__
if backend == "postgres":
    import psycopg.waiting

    summary["psycopg_version"] = psycopg.__version__
    summary["psycopg_wait"] = psycopg.waiting.wait.__name__

summary["load"] = {
    "greenlets": GREENLETS,
    "finished": len(done),
    "successful": sum(1 for g in workers if g.successful()),
    "errors": [repr(g.exception) for g in workers if g.dead and g.exception is not None][:5],
    "still_running": sum(1 for g in workers if not g.dead),
    "checkouts": len(hold_times),
    "wall": wall,
    "serial": sum(hold_times),
    "nominal_serial": GREENLETS * CHECKOUTS * HOLD,
    "peaks": peaks,
}
for g in workers:
    g.kill(block=False)
stats = pool.stats()
summary["after_load"] = stats.as_dict()

# ---------------------------------------------------------------- phase 2: PoolTimeout

lent = [pool.acquire(timeout=5) for _ in range(LIMIT)]  # saturate the pool
ticks = 0
ticking = True


def ticker():
    global ticks
    while ticking:
        gevent.sleep(0.005)
        ticks += 1


def timed_waiter(seconds):
    t0 = time.monotonic()
    try:
        conn = pool.acquire(timeout=seconds)
    except PoolTimeout as exc:
        return {"raised": type(exc).__name__, "elapsed": time.monotonic() - t0,
                "message": str(exc)}
    pool.release(conn)
    return {"raised": None, "elapsed": time.monotonic() - t0}


before = pool.stats()
tick_g = gevent.spawn(ticker)
g = gevent.spawn(timed_waiter, 0.3)
gevent.sleep(0.05)
waiting_during = pool.stats().waiting
g.join(10)
ticking = False
tick_g.join(1)
result = g.value or {"raised": repr(g.exception)}
after = pool.stats()
result.update(
    ticks=ticks,
    waiting_during=waiting_during,
    waiting_after=after.waiting,
    timeouts_delta=after.timeouts - before.timeouts,
    open_after=after.open,
)
summary["pool_timeout"] = result

# ---------------------------------------------------------------- phase 3: gevent.Timeout


def interruptible(seconds):
    """Wait for a connection under ``gevent.Timeout(seconds)``; give back what it got."""
    try:
        with gevent.Timeout(seconds):
            conn = pool.acquire(timeout=30)
    except gevent.Timeout:
        return "interrupted"
    pool.release(conn)
    return "got"


class LostSlot(Exception):
    pass


def refill():
    """Check out connections until LIMIT are lent again (a lost slot makes this time out)."""
    while len(lent) < LIMIT:
        try:
            lent.append(pool.acquire(timeout=1))
        except PoolTimeout as exc:
            problems.append(f"refill: a slot is lost: {exc}")
            raise LostSlot from None


def check_quiet(where, expect_open=LIMIT):
    s = pool.stats()
    if s.waiting or s.connecting or s.open != expect_open or s.in_use + s.idle != s.open:
        problems.append(f"{where}: {s}")
    return s


def interrupt_waiters():
    # (a) a plain gevent.Timeout while the pool is saturated: no ghost waiter may stay queued.
    before = pool.stats()
    g = gevent.spawn(interruptible, 0.1)
    g.join(10)
    plain = {"outcome": g.value if g.successful() else repr(g.exception)}
    s = check_quiet("after a plain gevent.Timeout")
    plain["waiting_after"] = s.waiting
    plain["timeouts_delta"] = s.timeouts - before.timeouts
    pool.release(lent.pop())  # must go idle, not to the interrupted waiter
    plain["idle_after_release"] = pool.stats().idle
    refill()
    summary["gevent_timeout"] = plain

    # (b) gevent.Timeout racing a release around the same moment.
    race = {"got": 0, "interrupted": 0, "other": []}
    for n in range(24):
        delay = 0.02
        jitter = (n % 8 - 4) * 0.0005  # the release lands from 2 ms before to 1.5 ms after
        victim = lent.pop()
        g = gevent.spawn(interruptible, delay)
        r = gevent.spawn_later(delay + jitter, pool.release, victim)
        gevent.joinall([g, r], timeout=10)
        outcome = g.value if g.successful() else repr(g.exception)
        if outcome in race:
            race[outcome] += 1
        else:
            race["other"].append(outcome)
        check_quiet(f"race round {n}")
        refill()
    summary["race"] = race

    # (c) killed with gevent.Timeout after the hand-off, before the waiter ran again: the
    # connection (or the fresh slot) it was handed must come back to the pool.
    handoff = {}
    for what in ("connection", "slot"):
        outcomes = {"got": 0, "interrupted": 0, "other": []}
        for kill_first in (True, False) * 5:
            g = gevent.spawn(interruptible, 30)
            gevent.sleep(0.01)
            if pool.stats().waiting != 1:
                problems.append(f"hand-off {what}: the waiter is not queued: {pool.stats()}")
            victim = lent.pop()
            if kill_first:  # the kill is scheduled first, so it lands after the hand-off
                g.kill(gevent.Timeout, block=False)
            if what == "connection":
                pool.release(victim)  # handed to the waiter, which has not run yet
            else:
                victim.invalidate()  # a fresh slot is handed to the waiter
            if not kill_first:
                g.kill(gevent.Timeout, block=False)
            g.join(10)
            outcome = g.value if g.successful() else repr(g.exception)
            if outcome in outcomes:
                outcomes[outcome] += 1
            else:
                outcomes["other"].append(outcome)
            if what == "slot" and outcome == "interrupted":
                # The slot comes back unused (one fewer open), or, if the kill landed after
                # the connection was opened, as a new idle connection: nothing may be lost.
                s = pool.stats()
                shape = (s.open, s.idle, s.in_use, s.waiting, s.connecting)
                if shape not in {(LIMIT - 1, 0, LIMIT - 1, 0, 0), (LIMIT, 1, LIMIT - 1, 0, 0)}:
                    problems.append(f"hand-off slot kill_first={kill_first}: {s}")
            else:
                s = check_quiet(f"hand-off {what} kill_first={kill_first}")
            if what == "connection" and s.idle != 1:
                problems.append(f"hand-off connection: the handed connection is not idle: {s}")
            refill()
        handoff[what] = outcomes
    summary["handoff"] = handoff


try:
    interrupt_waiters()
except LostSlot:
    pass  # recorded in problems; the final checks below still run

for conn in lent:
    pool.release(conn)
lent.clear()

# (d) gevent.Timeout interrupting a connect in progress (server backends yield while
# connecting; SQLite connects without yielding, so there it always gets the connection).
small = Pool(url, pool_size=1, max_overflow=0, timeout=5)
# Known bug, kept out of this test so that it stays deterministic: the first connection a
# pool opens starts its maintenance thread (Pool._nudge -> Thread.start(), which switches
# greenlets) after the new connection is accounted for but before it is lent, so a
# gevent.Timeout landing there orphans the slot. Open (and drop) one connection first.
small.acquire().invalidate()
connect = {"got": 0, "interrupted": 0, "other": []}
for n in range(12):
    try:
        with gevent.Timeout(0.0002 * 1.5**n):  # 0.2 ms to 17 ms: mid-connect and after
            conn = small.acquire()
    except gevent.Timeout:
        connect["interrupted"] += 1
    else:
        connect["got"] += 1
        conn.invalidate()  # the next round has to connect again
    s = small.stats()
    if s.open != s.idle or s.connecting or s.waiting:
        problems.append(f"connect round {n}: {s}")
try:
    with small.connection(timeout=5) as conn:
        conn.cursor().close()
except Exception as exc:
    problems.append(f"connect: the slot is lost: {exc!r}")
small.close()
connect["final"] = small.stats().as_dict()
summary["connect"] = connect

# ---------------------------------------------------------------- final state

pool.run_maintenance()  # sees the overflow connections idle...
gevent.sleep(GRACE * 2)
pool.run_maintenance()  # ...and retires them
final = pool.stats()
summary["final"] = final.as_dict()
again = []
try:
    for _ in range(LIMIT):
        again.append(pool.acquire(timeout=2))
except PoolTimeout as exc:
    problems.append(f"final: cannot check out {LIMIT} at once: {exc}")
summary["final_checkout"] = len(again)
for conn in again:
    pool.release(conn)
pool.close()
summary["closed"] = pool.stats().as_dict()
summary["problems"] = problems
print("SUMMARY " + json.dumps(summary))
'''


@pytest.fixture(scope="module")
def gevent_available() -> None:
    """Skip unless the interpreter that runs the script can import gevent."""
    probe = subprocess.run(
        [sys.executable, "-c", "import gevent, gevent.monkey"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    if probe.returncode != 0:
        lines = (probe.stderr or probe.stdout).strip().splitlines() or ["(no output)"]
        reason = f"gevent cannot be imported by {sys.executable}: {lines[-1]}"
        print(reason)
        pytest.skip(reason)


def _with_scheme(url: str, scheme: str) -> str:
    return f"{scheme}://{url.partition('://')[2]}"


def run_script(tmp_path: Path, backend: str, url: str, **env: str) -> dict[str, Any]:
    script = tmp_path / "gevent_pool_run.py"
    script.write_text(SCRIPT)
    environ = {k: v for k, v in os.environ.items() if k != "PSYCOPG_WAIT_FUNC"}
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(SRC), environ.get("PYTHONPATH", "")) if p
    )
    environ.update(env)
    args = [str(a) for a in (GREENLETS, CHECKOUTS, HOLD, POOL_SIZE, MAX_OVERFLOW)]
    try:
        proc = subprocess.run(
            [sys.executable, str(script), backend, url, *args],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            cwd=tmp_path,
            env=environ,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"the gevent script hung for {SUBPROCESS_TIMEOUT} s (a driver blocking the hub, "
            f"or a lost wake-up)\nstdout:\n{exc.stdout!r}\nstderr:\n{exc.stderr!r}"
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY ")]
    assert proc.returncode == 0 and lines, (
        f"script exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    summary: dict[str, Any] = json.loads(lines[-1][len("SUMMARY ") :])
    summary["stderr"] = proc.stderr
    return summary


def check_summary(s: dict[str, Any]) -> None:
    report = json.dumps({k: v for k, v in s.items() if k != "stderr"}, indent=1)
    report += f"\nstderr:\n{s['stderr']}"
    # The script really ran patched, against this checkout's pool.
    assert s["patched"] == {"threading": True, "socket": True, "select": True}, report
    assert s["lock_type"].startswith("gevent"), report
    assert Path(s["flask_dbpool"]).is_relative_to(SRC), report
    assert s["problems"] == [], report

    load = s["load"]
    assert load["finished"] == load["successful"] == GREENLETS, report
    assert load["errors"] == [] and load["still_running"] == 0, report
    assert load["checkouts"] == GREENLETS * CHECKOUTS, report
    peaks = load["peaks"]
    assert peaks["open"] <= LIMIT and peaks["in_use"] <= LIMIT, report
    # Saturated: every slot was in use at once and greenlets queued for them.
    assert peaks["held"] == LIMIT, report
    assert peaks["waiting"] > 0, report
    # Concurrency: the holds overlapped, so the run took well under their sum. A driver that
    # blocked the hub would serialize them (ratio close to 1). Generous on purpose.
    assert load["wall"] < 0.5 * load["serial"], report
    after = s["after_load"]
    assert after["open"] == after["idle"] and after["waiting"] == 0, report

    timeout = s["pool_timeout"]
    assert timeout["raised"] == "PoolTimeout", report
    assert 0.25 <= timeout["elapsed"] < 5, report
    assert timeout["waiting_during"] == 1 and timeout["waiting_after"] == 0, report
    assert timeout["timeouts_delta"] == 1 and timeout["open_after"] == LIMIT, report
    assert timeout["ticks"] >= 10, report  # other greenlets ran during the wait

    plain = s["gevent_timeout"]
    assert plain["outcome"] == "interrupted", report
    assert plain["waiting_after"] == 0 and plain["timeouts_delta"] == 0, report
    assert plain["idle_after_release"] == 1, report

    race = s["race"]
    assert race["other"] == [] and race["got"] + race["interrupted"] == 24, report
    for what, outcomes in s["handoff"].items():
        assert outcomes["other"] == [], (what, report)
        # Killed before it ran again: interrupted at least when the kill came first.
        assert outcomes["interrupted"] >= 5, (what, report)
    connect = s["connect"]
    assert connect["other"] == [] and connect["got"] + connect["interrupted"] == 12, report
    assert connect["final"]["open"] == 0, report

    final = s["final"]
    assert final["open"] == final["idle"] <= POOL_SIZE, report
    assert final["in_use"] == final["waiting"] == final["connecting"] == 0, report
    assert s["final_checkout"] == LIMIT, report
    assert s["closed"]["open"] == 0, report


def summarize(s: dict[str, Any]) -> str:
    """One line for ``pytest -s``: driver, timings and how the interruptions played out."""
    load = s["load"]
    driver = s["driver_module"]
    if "psycopg_wait" in s:
        driver += f", psycopg {s['psycopg_version']} wait={s['psycopg_wait']}"
    ratio = load["wall"] / load["serial"] if load["serial"] else float("nan")
    return (
        f"{s['backend']} ({driver}): {load['checkouts']} checkouts in {load['wall']:.2f} s, "
        f"holds summed {load['serial']:.2f} s (ratio {ratio:.2f}); race {s.get('race')}; "
        f"hand-off {s.get('handoff')}; connect {s.get('connect', {}).get('interrupted')}/12 "
        "interrupted"
    )


def test_gevent_sqlite(gevent_available: None, sqlite_url: str, tmp_path: Path) -> None:
    summary = run_script(tmp_path, "sqlite", sqlite_url)
    print(summarize(summary))
    assert summary["driver_module"] == "sqlite3"
    check_summary(summary)


def test_gevent_postgres(gevent_available: None, postgres_url: str, tmp_path: Path) -> None:
    summary = run_script(tmp_path, "postgres", _with_scheme(postgres_url, "postgresql"))
    print(summarize(summary))
    # psycopg 3 ("psycopg", "psycopg.connection"...), not psycopg2 ("psycopg2.extensions").
    assert summary["driver_module"].split(".")[0] == "psycopg", summary
    # wait_c (the C wait loop) would block the hub; after monkey-patching psycopg picks a
    # pure-Python wait over the patched select.
    assert summary["psycopg_wait"] != "wait_c", summary
    check_summary(summary)


def test_gevent_mysql(gevent_available: None, mysql_url: str, tmp_path: Path) -> None:
    summary = run_script(tmp_path, "mysql", _with_scheme(mysql_url, "mysql+pymysql"))
    print(summarize(summary))
    assert summary["driver_module"].startswith("pymysql."), summary
    check_summary(summary)
