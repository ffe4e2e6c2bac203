"""flask-dbpool's rules under SQLAlchemy: :class:`SQLAlchemyPool`.

``sqlalchemy.create_engine(url, poolclass=SQLAlchemyPool, pool_size=5, max_overflow=10,
pool_timeout=30)`` gives an engine whose connections are lent by the same state machine as
:class:`~flask_dbpool.Pool` (:class:`~flask_dbpool.state.PoolState`): first come, first served
(SQLAlchemy's ``QueuePool`` lets the thread that returns a connection take it back before a
woken waiter, so under contention some threads starve), slots accounted for under one lock,
overflow, a short wait for a returned connection before opening one, ``max_waiting``, and a
timeout that says what the pool was doing and who holds the connections.

The items lent are SQLAlchemy's own connection records, so everything SQLAlchemy does per
connection keeps working unchanged: pool events, ``pool_pre_ping``, ``pool_recycle``, reset on
return, invalidation (of one connection, or of the whole pool after a disconnect), and
``engine.dispose()`` / ``dispose(close=False)`` after a fork. This module imports SQLAlchemy:
install it with ``pip install 'flask-dbpool[sqlalchemy]'``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.pool import Pool as _SAPool

from flask_dbpool import messages
from flask_dbpool._handoff import Waiter
from flask_dbpool.config import PoolConfig
from flask_dbpool.errors import ConfigError, PoolClosed, PoolTimeout, one_line
from flask_dbpool.leaks import Checkout, Site, TimeoutReport, capture_site, checkouts_of
from flask_dbpool.maintenance import Maintenance
from flask_dbpool.policy import lifetime_jitter
from flask_dbpool.state import CLOSED, CONNECT, MAX_SLEEP, NEW_SLOT, PROBE, PoolState, Refusal
from flask_dbpool.stats import PoolStats
from flask_dbpool.url import redact

__all__ = [
    "EngineSource",
    "SQLAlchemyPool",
    "SQLAlchemyPoolTimeout",
    "create_engine",
    "engine_options",
    "engine_url",
]

_now = time.monotonic
_get_ident = threading.get_ident

logger = logging.getLogger("flask_dbpool.sqlalchemy")
leak_logger = logging.getLogger("flask_dbpool.leaks")


class SQLAlchemyPoolTimeout(PoolTimeout, sa_exc.TimeoutError):
    """No connection became available within ``pool_timeout``: both
    :class:`flask_dbpool.PoolTimeout` and ``sqlalchemy.exc.TimeoutError``, so code written for
    either catches it. The message is flask-dbpool's (the pool's state, the last connection
    error while the database cannot be reached, the longest holders)."""

    def __init__(self, message: str) -> None:
        PoolTimeout.__init__(self, message)
        self.code = None  # SQLAlchemy's error-code link: none for this one

    def __str__(self) -> str:
        return str(self.args[0])


class _OwnedLock:
    """The pool's lock, knowing which thread holds it. SQLAlchemy returns a connection
    dropped without ``close()`` from a ``weakref`` finalizer, which the garbage collector may
    run on a thread that holds this lock (at any allocation inside a critical section):
    such a return must not wait for the lock its own thread holds. The hot paths use
    :attr:`raw` and set :attr:`owner` themselves (a ``with`` costs two Python calls)."""

    __slots__ = ("owner", "raw")

    def __init__(self) -> None:
        self.raw = threading.Lock()
        self.owner = 0

    def __enter__(self) -> None:
        self.raw.acquire()
        self.owner = _get_ident()

    def __exit__(self, *exc: object) -> None:
        self.owner = 0
        self.raw.release()

    def held_here(self) -> bool:
        """Whether the calling thread holds it."""
        return self.owner == _get_ident()


class _Slot:
    """One SQLAlchemy connection record, as the state machine lends it (a
    :class:`~flask_dbpool.state.Lendable`). A record outlives its DB-API connection:
    SQLAlchemy reconnects an invalidated record in place, so a record is a slot."""

    __slots__ = (
        "caller",
        "checked_at",
        "created",
        "expires_at",
        "holder",
        "idle_since",
        "label",
        "label_for",
        "lent_at",
        "record",
        "retire",
        "seen_lent_at",
        "site",
        "thread_name",
        "used_at",
        "warned_for",
    )

    def __init__(self, record: ConnectionPoolEntry, now: float, lifetime: float | None) -> None:
        self.record = record
        self.created = self.lent_at = self.checked_at = self.used_at = now
        self.idle_since = now
        # max_lifetime retires the record (pool_recycle reconnects it in place, SQLAlchemy's).
        self.expires_at = float("inf") if lifetime is None else now + lifetime * lifetime_jitter()
        self.holder = 0
        self.retire = ""  # see Lendable.retire
        self.seen_lent_at = self.warned_for = self.label_for = -1.0
        self.label: str | None = None
        self.thread_name: str | None = None
        self.caller: str | None = None
        self.site: Site | None = None

    def mark_slow_return(self) -> None:
        """SQLAlchemy resets every returned connection itself: nothing to route."""

    def allow_fast_return(self) -> None:
        """See :meth:`mark_slow_return`."""


class SQLAlchemyPool(_SAPool):
    """A ``sqlalchemy.pool.Pool`` lending SQLAlchemy's connection records by flask-dbpool's
    rules (see the module docstring).

    ``pool_size`` (``create_engine(pool_size=…)``), ``max_overflow``, ``timeout``
    (``pool_timeout``) and ``use_lifo`` (``pool_use_lifo``) mean what they mean for
    ``QueuePool``, except that neither a ``pool_size`` of 0 nor a ``max_overflow`` of -1
    ("no limit") is accepted: a pool has a maximum. ``max_waiting``, ``name``,
    ``leak_threshold``, ``max_lifetime``, ``idle_timeout``, ``min_idle``,
    ``keepalive_interval`` and ``overflow_idle_timeout`` are flask-dbpool's
    (:class:`~flask_dbpool.config.PoolConfig`; here ``max_lifetime`` and ``idle_timeout``
    default to ``None`` and ``overflow_idle_timeout`` to 0, as ``QueuePool`` behaves); those
    that need it start a maintenance thread with the first connection. SQLAlchemy's own
    arguments
    (``recycle``, ``pre_ping``, ``reset_on_return``, ``echo``, ``logging_name``, ``events``,
    ``dialect``) pass through. Invalid values raise :class:`~flask_dbpool.ConfigError` naming
    the argument. A checkout that waits longer than ``timeout`` raises
    :class:`SQLAlchemyPoolTimeout`.
    """

    def __init__(
        self,
        creator: Any,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: float = 30.0,
        use_lifo: bool = False,
        max_waiting: int = 0,
        name: str | None = None,
        leak_threshold: float | None = None,
        max_lifetime: float | None = None,
        idle_timeout: float | None = None,
        min_idle: int = 0,
        keepalive_interval: float | None = None,
        overflow_idle_timeout: float = 0.0,
        **kw: Any,
    ) -> None:
        self._options: dict[str, Any] = {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "timeout": timeout,
            "use_lifo": use_lifo,
            "max_waiting": max_waiting,
            "name": name,
            "leak_threshold": leak_threshold,
            "max_lifetime": max_lifetime,
            "idle_timeout": idle_timeout,
            "min_idle": min_idle,
            "keepalive_interval": keepalive_interval,
            "overflow_idle_timeout": overflow_idle_timeout,
        }
        config = PoolConfig.from_options(
            {
                "pool_size": pool_size,
                "max_overflow": max_overflow,
                "timeout": timeout,
                "lifo": use_lifo,
                "max_waiting": max_waiting,
                "name": name or kw.get("logging_name") or "sqlalchemy",
                "leak_threshold": leak_threshold,
                "max_lifetime": max_lifetime,
                "idle_timeout": idle_timeout,
                "min_idle": min_idle,
                "keepalive_interval": keepalive_interval,
                "overflow_idle_timeout": overflow_idle_timeout,
            }
        )
        super().__init__(creator, **kw)
        self._config = config
        self.name = config.name
        self._lock = _OwnedLock()
        self._state: PoolState[_Slot] = PoolState(config, target=config.name)
        # Which slot holds which record (read and written under the lock).
        self._slots: dict[ConnectionPoolEntry, _Slot] = {}
        self._maintenance: Maintenance | None = None
        self._track_sites = leak_threshold is not None  # checkout sites, for leak reports
        self._maintained = (
            leak_threshold is not None
            or max_lifetime is not None
            or idle_timeout is not None
            or min_idle > 0
            or keepalive_interval is not None
            or overflow_idle_timeout > 0
        )

    # ------------------------------------------------------------------ SQLAlchemy's API

    def _do_get(self) -> ConnectionPoolEntry:
        state, owned = self._state, self._lock
        lock = owned.raw
        slot = None
        # The hot path: PoolState.request's first case (an idle record, lent to the caller)
        # written out, as in Pool.acquire.
        lock.acquire()
        owned.owner = ident = _get_ident()
        try:
            if state.idle:  # waiters exist only while nothing is idle: fair to take
                slot = state.take_idle()
                slot.lent_at = _now()
                slot.holder = ident
                state.acquired += 1
        finally:
            owned.owner = 0
            lock.release()
        if slot is None:
            return self._get_slow()
        if self._track_sites:
            return self._lent(slot)
        return slot.record

    def _get_slow(self) -> ConnectionPoolEntry:
        start = _now()
        deadline = start + self._config.timeout
        state, lock = self._state, self._lock
        while True:
            with lock:
                now = _now()
                got = state.request(now, _get_ident(), start, deadline, Waiter)
            if isinstance(got, _Slot):
                return self._lent(got)
            if got is CONNECT or got is PROBE:
                record = self._connect_in_slot(probe=got is PROBE)
            elif isinstance(got, Waiter):
                record = self._wait(got, start, deadline)
            elif isinstance(got, Refusal):
                raise got.error
            else:
                assert isinstance(got, TimeoutReport)
                raise self._timeout_error(got)
            if record is not None:
                return self._lent(self._slots[record])

    def _lent(self, slot: _Slot) -> ConnectionPoolEntry:
        """A checkout's bookkeeping outside the lock: where it came from, for leak reports
        (only with ``leak_threshold``)."""
        if self._track_sites:
            slot.site = capture_site(skip=("sqlalchemy",))
            slot.thread_name = threading.current_thread().name
        return slot.record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        state, owned = self._state, self._lock
        ident = _get_ident()
        if owned.owner != ident:
            # The hot path: PoolState.claim and check_in written out for a record that goes
            # back to a waiter or to the idle ones, with nothing to record or report.
            lock = owned.raw
            lock.acquire()
            owned.owner = ident
            try:
                slot = self._slots[record]
                if not state.track_use and not slot.retire and slot.warned_for != slot.lent_at:
                    slot.warned_for = -1.0
                    if state.waiters and state.open <= state.max_open:
                        state.hand_off(slot)
                        return
                    if len(state.idle) < state.keep:
                        state.idle.append(slot)
                        return
            finally:
                owned.owner = 0
                lock.release()
        self._return_slow(record)

    def _return_slow(self, record: ConnectionPoolEntry) -> None:
        if self._lock.held_here():
            # The garbage collector returns a dropped connection on a thread inside one of
            # this pool's critical sections: finish the return once the lock is free.
            threading.Thread(
                target=self._return_slow,
                args=(record,),
                name="flask-dbpool return",
                daemon=True,
            ).start()
            return
        state = self._state
        held = _now()
        with self._lock:
            slot = self._slots[record]
            held -= slot.lent_at
            reported = state.claim(slot)
            if state.track_use:
                state.use_time.record(held)
            if slot.retire:  # past max_lifetime while lent: closed, its slot freed
                state.discarded(slot, slot.retire, disconnect=False, now=_now())
                state.slot_freed()
                surplus: _Slot | None = slot
            else:
                surplus = state.check_in(slot)
            if surplus is not None:
                del self._slots[record]
            if state.track_use:  # last: an observer that raises finds the books done
                state.notify("use", held)
        if surplus is not None:
            record.close()
        if reported:
            leak_logger.warning(
                "pool %r: the connection held longer than leak_threshold=%g s by thread %r "
                "came back after %.1f s",
                self.name,
                self._config.leak_threshold,
                slot.thread_name,
                held,
            )

    def dispose(self) -> None:
        """Close the idle connections now. Checked-out ones stay with their holders and
        come back to this pool as usual (``engine.dispose()`` then replaces the pool)."""
        # An engine drops a disposed pool: its maintenance must not refill min_idle there
        # (a later checkout here starts it again). Stopped first, so that a connection it
        # was opening is among those closed below.
        with self._lock:
            maintenance, self._maintenance = self._maintenance, None
        if maintenance is not None:
            maintenance.stop(timeout=5.0)
        with self._lock:
            state = self._state
            idle = [*state.idle, *state.to_check]
            state.idle.clear()
            state.to_check.clear()
            for slot in idle:
                state.forget(slot, "pool_closed")
                del self._slots[slot.record]
        for slot in idle:
            slot.record.close()
        self.logger.info("Pool disposed. %s", self.status())

    def recreate(self) -> SQLAlchemyPool:
        """A new, empty pool with the same settings, event listeners and observers (the
        OpenTelemetry instruments follow the engine to it)."""
        self.logger.info("Pool recreating")
        options = dict(self._options)
        new = self.__class__(
            self._creator,
            options.pop("pool_size"),
            options.pop("max_overflow"),
            options.pop("timeout"),
            options.pop("use_lifo"),
            recycle=self._recycle,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            pre_ping=self._pre_ping,
            _dispatch=self.dispatch,
            dialect=self._dialect,
            **options,
        )
        with self._lock:
            observers, track_use = self._state.observers, self._state.track_use
        for observer in observers:
            new.add_observer(observer)
        if track_use:
            new.track_use_time()
        return new

    def status(self) -> str:
        """One line: size, idle, overflow, checked out and waiting."""
        return (
            f"Pool size: {self.size()}  Connections in pool: {self.checkedin()} "
            f"Current Overflow: {self.overflow()} Current Checked out connections: "
            f"{self.checkedout()} Waiting: {self.stats().waiting}"
        )

    def size(self) -> int:
        """``pool_size``."""
        return self._config.pool_size

    def timeout(self) -> float:
        """``pool_timeout``, in seconds."""
        return self._config.timeout

    def checkedin(self) -> int:
        """Connections idle in the pool."""
        with self._lock:
            return len(self._state.idle)

    def checkedout(self) -> int:
        """Connections lent (including those being opened for a caller)."""
        with self._lock:
            return self._state.open - len(self._state.idle)

    def overflow(self) -> int:
        """Connections open beyond ``pool_size`` (negative while fewer are open, as
        ``QueuePool`` counts)."""
        with self._lock:
            return self._state.open - self._config.pool_size

    def stats(self) -> PoolStats:
        """The same snapshot as :meth:`flask_dbpool.Pool.stats`."""
        with self._lock:
            return self._state.stats()

    # ------------------------------------------------------------------ observability

    @property
    def config(self) -> PoolConfig:
        """The validated flask-dbpool settings of this pool."""
        return self._config

    @property
    def closed(self) -> bool:
        """Always ``False``: a SQLAlchemy pool is disposed, not closed (for the exporters)."""
        return self._state.closed

    def track_use_time(self) -> None:
        """Record how long each checkout is held (``stats().use_time``, observers' ``"use"``
        events); the metrics exporters turn it on. Idempotent."""
        with self._lock:
            self._state.track_use = True

    def add_observer(self, observer: Callable[[str, float], object]) -> None:
        """As :meth:`flask_dbpool.Pool.add_observer`: ``observer(event, seconds)`` for each
        ``"wait"``, ``"create"`` and (with use time tracked) ``"use"``, under the pool's
        lock. Raises :class:`~flask_dbpool.ConfigError` if it is not callable."""
        if not callable(observer):
            raise ConfigError(messages.not_callable("observer", observer))
        with self._lock:
            self._state.observers = (*self._state.observers, observer)

    def checkouts(self) -> list[Checkout]:
        """The connections checked out now, longest-held first (see
        :meth:`flask_dbpool.Pool.checkouts`)."""
        with self._lock:
            holders = self._state.holders()
        return checkouts_of(holders, _now())

    # ------------------------------------------------------------------ lending

    def _connect_in_slot(self, *, probe: bool) -> ConnectionPoolEntry | None:
        """Open a connection record in a reserved slot and lend it. A connection error is
        recorded (back-off) and raised to this caller, as QueuePool does."""
        state, lock = self._state, self._lock
        started = _now()
        try:
            record = self._create_connection()
        except Exception as error:
            with lock:
                state.connect_failed(error, False, started, _now(), probe)
            raise
        except BaseException:
            with lock:
                state.slot_freed(connecting=True, probe=probe)
            raise
        with lock:
            now = _now()
            slot = _Slot(record, now, self._config.max_lifetime)
            state.connected(slot, started, now, probe)
            self._slots[record] = slot
            try:
                state.notify("create", now - started)
            except BaseException:  # the connection is the pool's already: keep it
                if state.check_in(slot) is not None:
                    del self._slots[record]
                    record.close()  # rare (an observer failed on an overflow connection)
                raise
            state.lend(slot, now, _get_ident())
        if self._maintained and self._maintenance is None:
            self._start_maintenance()
        return record

    # ------------------------------------------------------------------ maintenance

    def _ping(self, dbapi_connection: Any) -> None:
        """One round trip on ``dbapi_connection``, by the dialect's ``do_ping`` where it has
        one; raises if the connection is gone."""
        if dbapi_connection is None:
            raise ConnectionError("the connection was invalidated")
        ping = getattr(self._dialect, "do_ping", None)
        if ping is not None:
            if not ping(dbapi_connection):
                raise ConnectionError("the connection did not answer")
            return
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()

    def _start_maintenance(self) -> None:
        with self._lock:
            if self._maintenance is not None:
                return
            self._maintenance = maintenance = Maintenance(self)
        maintenance.start()

    def run_maintenance(self) -> float:
        """One maintenance run (the maintenance thread's; tests may call it): retire idle
        connections past ``max_lifetime`` / ``idle_timeout`` / ``overflow_idle_timeout``,
        ping idle ones every ``keepalive_interval``, warn about checkouts held past
        ``leak_threshold``, refill ``min_idle``. Returns the seconds until the next is due."""
        state, lock = self._state, self._lock
        with lock:
            now = _now()
            sweep = state.sweep(now, _no_orphans)  # SQLAlchemy returns dropped connections
            for slot, _reason in sweep.to_close:
                del self._slots[slot.record]
        next_run = sweep.next_run
        for slot, reason in sweep.to_close:
            logger.debug("pool %r: closing an idle connection (%s)", self.name, reason)
            slot.record.close()
        for slot in sweep.to_ping:
            try:
                if slot.record.dbapi_connection is not None:  # else invalidated: it
                    self._ping(slot.record.dbapi_connection)  # reconnects when lent

            except Exception as error:
                logger.info(
                    "pool %r: discarding a connection: its check failed (%s)",
                    self.name,
                    one_line(error),
                )
                with lock:
                    state.discarded(slot, "ping_failed", disconnect=True, now=_now())
                    state.slot_freed()
                    del self._slots[slot.record]
                slot.record.close()
                continue
            with lock:
                surplus = state.passed_check(slot, _now())
                if surplus is not None:
                    del self._slots[surplus.record]
            if surplus is not None:
                surplus.record.close()
        threshold = self._config.leak_threshold or 0.0
        for holder in sweep.leaks:
            leak_logger.warning("%s", messages.leak_report(self.name, holder, now, threshold))
        with lock:
            plan, due = state.plan_connect(_now())
        if plan is None:
            return max(0.0, min(next_run, due) - _now())
        started = _now()
        try:
            record = self._create_connection()
        except Exception as error:
            with lock:
                if plan is PROBE:
                    state.connect_failed(error, False, started, _now(), True)
                else:
                    state.slot_freed(connecting=True)
                    delay = state.refill_failed(_now())
            logger.warning(
                "pool %r: cannot open a connection for min_idle (%s)", self.name, one_line(error)
            )
            return MAX_SLEEP if plan is PROBE else delay
        with lock:
            slot = _Slot(record, _now(), self._config.max_lifetime)
            state.connected(slot, started, slot.created, plan is PROBE)
            self._slots[record] = slot
            state.refill_failures = 0
            surplus = state.check_in(slot)
            if surplus is not None:
                del self._slots[record]
            state.notify("create", slot.created - started)
        if surplus is not None:
            record.close()
        return 0.0  # there may be more to open

    def _wait(self, waiter: Waiter, start: float, deadline: float) -> ConnectionPoolEntry | None:
        """Wait for a returned connection or a slot; ``None``: ask again."""
        state, lock = self._state, self._lock
        try:
            while True:
                wait = state.wait_step(_now(), deadline, waiter.connect_at)
                waiter.signal.acquire(True, min(wait, threading.TIMEOUT_MAX))
                with lock:
                    now = _now()
                    got = state.woken(waiter, now, _get_ident(), now - start, deadline)
                if got is None:
                    continue
                if isinstance(got, TimeoutReport):
                    raise self._timeout_error(got)
                if got is CONNECT:
                    return None
                if got is CLOSED:
                    raise PoolClosed(messages.closed_while_waiting(self._config.name))
                if got is NEW_SLOT:
                    waiter.item = None  # from here on the connect owns the slot
                    return self._connect_in_slot(probe=False)
                if isinstance(got, Refusal):
                    raise got.error
                assert isinstance(got, _Slot)
                waiter.item = None
                return got.record  # _do_get stamps the checkout
        except BaseException:
            self._abandon(waiter)
            raise

    def _abandon(self, waiter: Waiter) -> None:
        """A waiter gave up: leave the queue, or pass on what it was handed and not used."""
        with self._lock:
            item = self._state.abandon(waiter)
            if isinstance(item, _Slot):
                surplus = self._state.check_in(item)
                if surplus is not None:
                    del self._slots[surplus.record]
            elif item is NEW_SLOT:
                surplus = None
                self._state.slot_freed(connecting=True)
            else:
                surplus = None
        if surplus is not None:
            surplus.record.close()

    def _timeout_error(self, report: TimeoutReport) -> SQLAlchemyPoolTimeout:
        error = messages.timeout_error(self._config.name, "SQLAlchemy engine", report, _now())
        timeout = SQLAlchemyPoolTimeout(str(error))
        timeout.__cause__ = error.__cause__
        return timeout


class EngineSource:
    """An engine on :class:`SQLAlchemyPool` as flask-dbpool's reports and exporters read a
    pool (a :class:`~flask_dbpool.report.ReportSource` and a
    :class:`~flask_dbpool.stats.MeteredPool`): the dashboard, ``flask dbpool …`` and the
    metrics endpoint show it through :func:`flask_dbpool.flask.monitor`.

    It reads ``engine.pool`` at each call, so it follows ``engine.dispose()`` to the new pool
    (which keeps the old one's observers and use-time tracking). ``name`` overrides the pool's
    name in reports (default: the pool's). ``target`` is the engine's URL without its
    password. Raises :class:`~flask_dbpool.ConfigError` if the engine's pool is not a
    :class:`SQLAlchemyPool`.
    """

    def __init__(self, engine: Engine, name: str | None = None) -> None:
        if not isinstance(engine.pool, SQLAlchemyPool):
            raise ConfigError(
                f"the engine for {redact(str(engine.url))} uses {type(engine.pool).__name__}, "
                "not flask_dbpool.sqlalchemy.SQLAlchemyPool: create it with "
                "flask_dbpool.sqlalchemy.create_engine(), engine_options() or "
                "poolclass=SQLAlchemyPool"
            )
        self.engine = engine
        self._name = name

    @property
    def pool(self) -> SQLAlchemyPool:
        """The engine's pool now (a new one after ``engine.dispose()``)."""
        pool = self.engine.pool
        assert isinstance(pool, SQLAlchemyPool)  # (dispose() recreates the same class)
        return pool

    @property
    def name(self) -> str:
        """The name reports and metrics use."""
        return self._name or self.pool.name

    @property
    def target(self) -> str:
        """The engine's URL, password hidden."""
        return redact(self.engine.url.render_as_string(hide_password=True))

    @property
    def closed(self) -> bool:
        """Whether the engine's pool is closed (it never is: engines dispose, not close)."""
        return self.pool.closed

    @property
    def config(self) -> PoolConfig:
        """The pool's flask-dbpool settings."""
        return self.pool.config

    def stats(self) -> PoolStats:
        """The pool's :class:`~flask_dbpool.PoolStats` now."""
        return self.pool.stats()

    def checkouts(self) -> list[Checkout]:
        """The connections checked out now, longest held first."""
        return self.pool.checkouts()

    def track_use_time(self) -> None:
        """Record how long each checkout is held (kept across ``dispose()``)."""
        self.pool.track_use_time()

    def add_observer(self, observer: Callable[[str, float], object]) -> None:
        """See :meth:`SQLAlchemyPool.add_observer` (kept across ``dispose()``)."""
        self.pool.add_observer(observer)

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        """A connection from the engine's pool for the duration of the block (SQLAlchemy's
        proxied DB-API connection; ``.driver_connection`` is the driver's). ``timeout`` is
        accepted for the :class:`~flask_dbpool.Pool` signature; the wait is the engine's
        ``pool_timeout`` (:class:`SQLAlchemyPoolTimeout` when it runs out)."""
        conn = self.engine.raw_connection()
        try:
            yield conn
        finally:
            conn.close()


def _no_orphans(entries: set[_Slot], not_lent: list[_Slot]) -> list[_Slot]:
    """SQLAlchemy returns a connection whose handle was garbage-collected itself."""
    return []


# ---------------------------------------------------------------------- helpers

#: The driver flask-dbpool picks for a URL that names none (SQLAlchemy's own defaults are
#: psycopg2 and mysqlclient).
_DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


def engine_url(url: str | URL) -> URL:
    """``url`` as a SQLAlchemy URL, with flask-dbpool's driver where it names none: a plain
    ``postgresql://`` (or ``postgres://``) uses psycopg 3, ``mysql://`` and ``mariadb://``
    PyMySQL. A URL that names its driver (``postgresql+psycopg2://``) is kept. Raises
    ``sqlalchemy.exc.ArgumentError`` for a string that is not a URL."""
    parsed = sqlalchemy.make_url(url)
    driver = _DEFAULT_DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


def engine_options(
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    timeout: float = 30.0,
    max_waiting: int = 0,
    name: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The ``create_engine`` keyword arguments for an engine on :class:`SQLAlchemyPool`.

    For Flask-SQLAlchemy: ``SQLAlchemy(engine_options=engine_options(pool_size=10))``,
    ``app.config["SQLALCHEMY_ENGINE_OPTIONS"]`` or a bind's dict; for Flask-SQLAlchemy-Lite:
    ``SQLALCHEMY_ENGINES = {"default": {"url": …, **engine_options(…)}}``. ``options`` are
    passed on to ``create_engine`` as they are (``pool_pre_ping=True``, ``echo=True`` …).
    Invalid pool settings raise :class:`~flask_dbpool.ConfigError` naming the argument now,
    not at the first request.
    """
    PoolConfig.from_options(
        {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "timeout": timeout,
            "max_waiting": max_waiting,
            "name": name or "sqlalchemy",
        }
    )
    result: dict[str, Any] = {
        "poolclass": SQLAlchemyPool,
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "pool_timeout": timeout,
        "max_waiting": max_waiting,
    }
    if name is not None:
        result["name"] = name
    result.update(options)
    return result


def create_engine(url: str | URL, **options: Any) -> Engine:
    """``sqlalchemy.create_engine`` on :class:`SQLAlchemyPool`: ``url`` as
    :func:`engine_url` reads it, ``options`` as :func:`engine_options` takes them. Raises
    :class:`~flask_dbpool.ConfigError` for a bad pool setting and SQLAlchemy's errors for the
    rest; connects lazily (the first ``engine.connect()`` opens the first connection)."""
    return sqlalchemy.create_engine(engine_url(url), **engine_options(**options))
