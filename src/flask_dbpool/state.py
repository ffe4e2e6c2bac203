"""The pool's rules as a state machine: every decision, no I/O.

:class:`PoolState` holds every mutable field of a pool (idle items, open items, waiters, slot
counts, health, counters) and makes every transition. It does no I/O, no logging, starts no
thread and never reads the clock: ``now`` is an argument. The caller holds its lock around
every call (the state has none of its own) and carries out what the call returns outside
it: lend this item, wait, open a connection in this reserved slot, close these, ping those.

It is generic over the item it lends (:class:`Lendable`): the threaded pool lends its
:class:`~flask_dbpool.entry.Entry` records, and another shell (an asyncio pool, a pool under
SQLAlchemy) can lend its own by the same rules. Waiters are anything with an ``item`` slot
and a non-blocking ``wake()`` (:class:`Waiting`); handing over sets ``item`` and wakes.

Rules the methods keep (checked by ``tests/test_state.py``):

- ``open == len(entries) + connecting`` outside the moments a shell holds a reserved slot
  it has not connected in yet (``connecting`` counts those too);
- waiters queue only while nothing is idle, served first come, first served;
- below the maximum, a caller that finds nothing idle while connections are lent first
  waits a little (half the pool's mean connect time, at most half its timeout) in the queue
  for one to come back, then connects itself: in a spike, a query usually ends long before a
  connect would, so the connections already open serve it (:meth:`PoolState.patience`);
- never more than ``max_open`` open, except transiently after ``resize()`` shrank it;
- each item is idle, lent, or being checked, exactly one;
- a waiter that left the queue is never handed anything.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, Generic, NamedTuple, Protocol, TypeVar

from flask_dbpool import messages
from flask_dbpool.config import PoolConfig
from flask_dbpool.errors import PoolClosed, TooManyWaiters
from flask_dbpool.leaks import Holder, TimeoutReport, holder_of
from flask_dbpool.policy import backoff_delay, recovery_delay
from flask_dbpool.stats import Histogram, PoolStats

__all__ = [
    "CLOSED",
    "CONNECT",
    "FOREVER",
    "NEW_SLOT",
    "PROBE",
    "Lendable",
    "PoolState",
    "Refusal",
    "Sweep",
    "Token",
    "Waiting",
]

FOREVER = float("inf")

#: How long maintenance may sleep at most, so that dropped handles and leaks are noticed.
MAX_SLEEP = 5.0

#: Below the maximum, a caller that finds nothing idle while connections are lent waits this
#: fraction of the pool's mean connect time for one to come back before connecting itself.
PATIENCE = 0.5


class Lendable(Protocol):
    """What the rules read and stamp on an item they lend (times from the caller's clock)."""

    created: float
    lent_at: float
    holder: int
    checked_at: float
    used_at: float
    expires_at: float
    retire: str  # "" while kept; else why it is closed when it comes back (a close reason)
    idle_since: float
    seen_lent_at: float
    warned_for: float
    label: str | None
    label_for: float
    thread_name: str | None
    caller: str | None
    site: Any

    def mark_slow_return(self) -> None:
        """Route this item's next return through the shell's slow path."""

    def allow_fast_return(self) -> None:
        """Let this item's returns take the fast path again, if nothing else needs the slow
        one."""


class Token:
    """A marker handed to a waiter, or returned to the caller, instead of an item."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Handed to a waiter: "a slot is yours, open a new connection in it".
NEW_SLOT: Final = Token("NEW_SLOT")
#: Handed to a waiter: "the pool was closed".
CLOSED: Final = Token("CLOSED")
#: Returned to the caller: "a slot is reserved for you: open a connection in it".
CONNECT: Final = Token("CONNECT")
#: As :data:`CONNECT`, as the one attempt allowed while the database is unreachable.
PROBE: Final = Token("PROBE")


class Refusal(Token):
    """Handed to a waiter, or returned to the caller: "the database rejected the connection
    (wrong credentials, unknown database …) and nothing is open to wait for": raise ``error``
    (a copy of it) at once."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        super().__init__("REFUSAL")
        self.error = error


class Waiting(Protocol):
    """A caller waiting for an item: what it was handed, and how to wake it (must not
    block: it runs under the caller's lock)."""

    item: object
    #: When it stops waiting for a returned item and connects itself (set by the state).
    connect_at: float

    def wake(self) -> None:
        """Tell the waiter that ``item`` was set."""


T = TypeVar("T", bound=Lendable)
W = TypeVar("W", bound=Waiting)


class Sweep(NamedTuple, Generic[T]):
    """What one maintenance sweep decided; the items are already off the books unless said."""

    orphans: list[T]
    """Lent items whose handle is gone: removed and counted, to close, each freeing a slot."""
    orphan_holders: list[Holder]
    """Who held them, for the warning."""
    to_close: list[tuple[T, str]]
    """Idle items to close (with the reason), their slots already released."""
    to_ping: list[T]
    """Items taken out of circulation for a check: ping, then :meth:`PoolState.passed_check`
    or :meth:`PoolState.discarded`."""
    leaks: list[Holder]
    """Checkouts that just passed ``leak_threshold``, to warn about."""
    next_run: float
    """When the state wants to be looked at again (same clock as ``now``)."""


def _nothing() -> None:
    pass


def _keep_for(config: PoolConfig) -> int:
    """How many idle items a return may leave: every open one, when overflow items wait
    for the sweep to retire them; only ``pool_size`` when they are closed on return."""
    return config.max_open if config.overflow_idle_timeout > 0 else config.pool_size


class PoolState(Generic[T]):
    """Every mutable field of one pool and every transition on it. See the module docstring.

    ``target`` names the database in messages (redacted); ``backoff`` gives the delay after
    ``n`` consecutive failed connection attempts; ``on_drained`` is called (under the lock,
    must not block) once the pool is closed and every slot is free; ``observers`` get
    ``(event, seconds)`` for each wait and each connect.
    """

    __slots__ = (
        "acquired",
        "backoff",
        "check_on_acquire",
        "checked_checkouts",
        "checking",
        "closed",
        "closed_by",
        "closed_count",
        "config",
        "connect_error",
        "connect_errors",
        "connect_estimate",
        "connect_failures",
        "connecting",
        "create_time",
        "created",
        "disconnect_at",
        "drained_at",
        "entries",
        "failed_at",
        "idle",
        "keep",
        "leaks_detected",
        "max_open",
        "next_dry_check",
        "observers",
        "on_drained",
        "open",
        "pings_failed",
        "probing",
        "reclaimed",
        "recover_at",
        "recovery",
        "refill_at",
        "refill_failures",
        "rejected",
        "rejection",
        "retry_at",
        "suspects",
        "take_idle",
        "target",
        "timeouts",
        "to_check",
        "track_use",
        "transaction_retries",
        "use_time",
        "wait_max",
        "wait_time",
        "wait_total",
        "waiters",
        "waits",
    )

    def __init__(
        self,
        config: PoolConfig,
        *,
        target: str = "",
        closed: bool = False,
        backoff: Callable[[int], float] = backoff_delay,
        recovery: Callable[[], float] = recovery_delay,
        on_drained: Callable[[], object] = _nothing,
    ) -> None:
        self.config = config
        self.target = target  # for messages: the redacted URL or the callable's name
        self.backoff = backoff
        self.recovery = recovery
        self.on_drained = on_drained
        self.closed = closed
        # The books. An item is in ``entries`` from its connect to its close, and in at most
        # one of ``idle`` and ``checking``; lent otherwise. The shell's hot path reads and
        # writes ``idle``, ``take_idle``, ``waiters``, ``open``, ``max_open``, ``keep``,
        # ``acquired``, ``track_use``, ``use_time`` and ``check_on_acquire`` directly.
        self.entries: set[T] = set()
        self.idle: deque[T] = deque()
        self.take_idle: Callable[[], T] = self.idle.pop if config.lifo else self.idle.popleft
        self.waiters: deque[Waiting] = deque()
        self.open = 0  # slots taken: open connections plus those being opened
        self.connecting = 0
        self.checking: set[T] = set()  # out of circulation while maintenance pings them
        self.to_check: list[T] = []  # ...of which not picked up for a ping yet
        self.max_open = config.max_open
        self.keep = 0 if closed else _keep_for(config)  # most idle ones kept on return
        # Checkouts with work to do (pre_ping, on_checkout, leak tracking, suspects).
        self.checked_checkouts = (
            config.pre_ping or config.on_checkout is not None or config.leak_threshold is not None
        )
        self.check_on_acquire = self.checked_checkouts
        self.track_use = False
        self.observers: tuple[Callable[[str, float], object], ...] = ()
        # Health.
        self.disconnect_at = -FOREVER  # items last checked before this are suspect
        self.suspects = False  # whether some may still be lent or idle unchecked
        self.connect_failures = 0  # consecutive; > 0 means "the database is unreachable"
        self.connect_error: BaseException | None = None
        # How long a connect takes: a moving average that forgets an unusually slow one
        # within a few connects.
        self.connect_estimate = 0.0
        # The last attempt's error when the server refused the login for good: callers
        # get it at once instead of waiting out an "outage".
        self.rejection: BaseException | None = None
        self.drained_at = -FOREVER  # connects begun before the last drain() are retired
        self.retry_at = 0.0  # when the next attempt to connect is due (the back-off)
        self.recover_at = 0.0  # ...or this, sooner, while callers wait (see next_attempt)
        self.failed_at = 0.0  # when the last attempt failed
        self.probing = False  # an attempt to reconnect is under way
        self.refill_at = 0.0  # min_idle refills back off after on_connect errors
        self.refill_failures = 0
        self.next_dry_check = 0.0
        # Counters and histograms.
        self.acquired = 0
        self.created = 0
        self.closed_count = 0
        self.timeouts = 0
        self.rejected = 0
        self.waits = 0
        self.wait_total = 0.0
        self.wait_max = 0.0
        self.connect_errors = 0
        self.pings_failed = 0
        self.leaks_detected = 0
        self.reclaimed = 0
        self.transaction_retries = 0
        self.closed_by: dict[str, int] = {}
        self.wait_time = Histogram()
        self.create_time = Histogram()
        self.use_time = Histogram()

    # ------------------------------------------------------------------ checkout

    def lend(self, item: T, now: float, ident: int) -> T:
        """Stamp ``item`` as lent to thread ``ident`` at ``now`` and count the checkout.
        (The shells' fast paths write the same three lines inline.)"""
        item.lent_at = now
        item.holder = ident
        self.acquired += 1
        return item

    def request(
        self, now: float, ident: int, start: float, deadline: float, new_waiter: Callable[[], W]
    ) -> T | Token | W | TimeoutReport:
        """A caller wants an item.

        Returns the item (lent), :data:`CONNECT` or :data:`PROBE` (a slot is reserved:
        connect, then :meth:`connected` or :meth:`connect_failed`), a :class:`Refusal`, a
        waiter from ``new_waiter`` (queued: wait for it to be handed something, then call
        :meth:`woken`), or a :class:`TimeoutReport` (``deadline`` has passed; ``start``:
        when the caller asked). Raises :class:`~flask_dbpool.PoolClosed` and
        :class:`~flask_dbpool.TooManyWaiters`.
        """
        return _request(self, now, ident, start, deadline, new_waiter)

    def patience(self, now: float, deadline: float) -> float:
        """When a caller that finds nothing idle, below the maximum, should stop waiting for
        a returned item and connect itself: at once if nothing is lent (a cold pool: its
        errors, a refused login or ``on_connect``'s, reach it directly) or it will not wait
        (``timeout=0``); else after :data:`PATIENCE` times the recent connect time, and
        at most half of what is left of its timeout. In a spike, a query usually ends long
        before a connect would, so the connections already open serve the queue (HikariCP
        and psycopg_pool grow in the background for the same reason); when nothing comes
        back, callers still connect in parallel, each at most that much later."""
        if now >= deadline or self.open <= self.connecting + len(self.checking) + len(self.idle):
            return now
        return now + min(PATIENCE * self.connect_estimate, (deadline - now) / 2)

    def dry_check_due(self, now: float) -> bool:
        """A caller must wait for an exhausted pool: should maintenance look for dropped
        handles (whose slots may be what is missing)? At most once a second."""
        if self.open >= self.max_open and now >= self.next_dry_check:
            self.next_dry_check = now + 1.0
            return True
        return False

    def woken(
        self, waiter: W, now: float, ident: int, waited: float, deadline: float
    ) -> T | Token | TimeoutReport | None:
        """A waiter woke up (handed something, or its wait ran out).

        Returns what it was handed (an item, lent; :data:`NEW_SLOT`; :data:`CLOSED`; a
        :class:`Refusal`), :data:`CONNECT` (it left the queue to make a due attempt to
        reconnect), a :class:`TimeoutReport` (it left the queue at ``deadline``), or
        ``None`` (keep waiting). ``waited``: since the caller asked. A waiter past its
        ``connect_at`` below the maximum leaves the queue with :data:`NEW_SLOT` (reserved).
        """
        return _woken(self, waiter, now, ident, waited, deadline)

    def reconnect_due(self, now: float) -> bool:
        """Whether a waiter should leave the queue and try to reconnect itself: the
        database was unreachable, the back-off has passed and nobody is trying."""
        return bool(
            self.connect_failures
            and now >= self.next_attempt()
            and not self.probing
            and self.open < self.max_open
        )

    def next_attempt(self, *, waiting: bool = False) -> float:
        """When the next attempt to reach an unreachable database is due: at the back-off's
        time, or, while callers wait (or, ``waiting``, the one asking would), sooner
        (``recovery``, at most :data:`~flask_dbpool.policy.RECOVERY_STEP` after the last
        failure), so that they are served within moments of its return. A refused login
        keeps its back-off."""
        if (self.waiters or waiting) and self.rejection is None:
            return min(self.retry_at, self.recover_at)
        return self.retry_at

    def connect_due(self, waiter: W, now: float) -> bool:
        """Whether ``waiter`` should stop waiting for a returned item and connect (see
        :meth:`patience`): its time has come and a slot is free."""
        return (
            now >= waiter.connect_at
            and self.open < self.max_open
            and not self.connect_failures
            and not self.closed
        )

    def wait_step(self, now: float, deadline: float, connect_at: float = FOREVER) -> float:
        """How long a waiter may sleep before looking again: at least once a second (an
        outage may begin meanwhile), until its ``connect_at`` while a slot is free and,
        while the database is unreachable, until an attempt is due in case nobody else
        makes it."""
        wait = min(deadline - now, 1.0)
        if connect_at < FOREVER and self.open < self.max_open and not self.connect_failures:
            wait = min(wait, max(connect_at - now, 0.0))
        if self.connect_failures and (self.probing or self.open < self.max_open):
            due = now + 0.25 if self.probing else self.next_attempt()
            wait = min(wait, max(due - now, 0.01))
        return max(wait, 0.0)

    def abandon(self, waiter: W) -> T | Token | None:
        """A waiter gave up (interrupted, or its caller failed before using what it got):
        it leaves the queue. Returns what it was handed and did not use: give an item back
        with :meth:`check_in`, a :data:`NEW_SLOT` with :meth:`slot_freed`."""
        item = waiter.item
        waiter.item = None
        if item is None:
            if waiter in self.waiters:
                self.waiters.remove(waiter)
            return None
        return item  # type: ignore[return-value]

    def count_wait(self, waited: float) -> None:
        """Count one wait of ``waited`` seconds (served or timed out)."""
        self.waits += 1
        self.wait_total += waited
        if waited > self.wait_max:
            self.wait_max = waited
        self.wait_time.record(waited)

    # ------------------------------------------------------------------ connecting

    def reserve(self, limit: int | None = None) -> bool:
        """Reserve a slot to open a connection in, if fewer than ``limit`` (default: the
        maximum) are open. The caller then connects and reports :meth:`connected` or
        :meth:`connect_failed`. Raises :class:`~flask_dbpool.PoolClosed`."""
        if self.closed:
            raise PoolClosed(messages.closed(self.config.name))
        if self.open >= (self.max_open if limit is None else limit):
            return False
        self.open += 1
        self.connecting += 1
        return True

    def connected(self, item: T, started: float, now: float, probe: bool) -> int:
        """A connection was opened in a reserved slot: account for it (not lent yet).

        Returns how many attempts had failed in a row before it (``0`` normally): the
        database is back, and waiters are given slots to connect in too. Observers are not
        called here (see :meth:`notify`): one that raised must not cut the books short.
        """
        self.entries.add(item)
        self.connecting -= 1
        if started < self.drained_at:
            # Opened across a drain (from the old server, with the old credentials): it
            # serves the caller that opened it once, or is closed if checked in.
            item.retire = "drained"
            item.mark_slow_return()
        took = now - started
        self.connect_estimate = (
            took if not self.created else 0.7 * self.connect_estimate + 0.3 * took
        )
        self.created += 1
        self.create_time.record(took)
        if probe:
            self.probing = False
        recovered = self.connect_failures
        if recovered:
            self.connect_failures = 0
            self.connect_error = None
            self.rejection = None
            self.fill_waiters()
        return recovered

    def notify(self, event: str, seconds: float) -> None:
        """Tell the observers about ``event`` (after the books are done: they may raise)."""
        for observer in self.observers:
            observer(event, seconds)

    def connect_failed(
        self, error: BaseException, rejected: bool, started: float, now: float, probe: bool
    ) -> tuple[int, float]:
        """Opening a connection in a reserved slot failed with ``error`` (``rejected``: the
        server refused the login for good): release the slot and schedule the next attempt.

        Returns the consecutive failures and the delay before the next attempt. Attempts
        under way when the outage began fail together: one failure for the back-off.
        """
        return _connect_failed(self, error, rejected, started, now, probe)

    def slot_freed(self, *, connecting: bool = False, probe: bool = False) -> bool:
        """A slot's connection is gone (closed, or never opened): hand the slot to the
        oldest waiter, or release it. Returns whether maintenance should run (waiters need
        a reconnection attempt)."""
        if connecting:
            self.connecting -= 1
        if probe:
            self.probing = False
        if (
            self.waiters
            and not self.closed
            and not self.connect_failures
            and self.open <= self.max_open
        ):
            self.hand_off(NEW_SLOT)
            return False
        self.open -= 1
        _after_shrink(self)
        return bool(self.waiters and self.connect_failures and not self.closed)

    def refill_failed(self, now: float) -> float:
        """Opening a ``min_idle`` connection failed in ``on_connect``: back off (returns the
        delay)."""
        self.refill_failures += 1
        delay = self.backoff(self.refill_failures)
        self.refill_at = now + delay
        return delay

    # ------------------------------------------------------------------ returning

    def hand_off(self, item: T | Token) -> None:
        """Give ``item`` to the oldest waiter (there is one)."""
        waiter = self.waiters.popleft()
        waiter.item = item
        if item is NEW_SLOT:
            self.connecting += 1
        elif not isinstance(item, Token):
            # Nobody holds it until the waiter wakes and stamps its checkout (holder 0: not
            # lent), so no leak is reported on the previous holder's stamp meanwhile.
            item.holder = 0
        waiter.wake()

    def fill_waiters(self) -> None:
        """Give free slots to waiters (unless the database is unreachable: maintenance
        reconnects then, and hands the connection over)."""
        if self.connect_failures or self.closed:
            return
        while self.waiters and self.open < self.max_open:
            self.open += 1
            self.hand_off(NEW_SLOT)

    def check_in(self, item: T, *, checked: bool = False, fast: bool = False) -> T | None:
        """Put a reset, healthy ``item`` back: to the oldest waiter, or idle. Returns it if
        it is surplus or retired instead (close it; its slot is released already). ``checked``: it
        comes back from a check. ``fast``: its next return may take the fast path again.
        (The shells' fast release writes the same rule inline.)"""
        if checked:
            self.checking.discard(item)
        if item.retire:
            # Retired while it was away (a drain, or past its lifetime while handed to a
            # waiter that gave up): closed, and its slot goes to a waiter.
            self.forget(item, item.retire)
            self.fill_waiters()
            return item
        if fast:
            item.allow_fast_return()
        # Its next checkout may get the same lent_at on a coarse clock: no leftover mark.
        item.warned_for = -1.0
        if self.waiters and self.open <= self.max_open:
            self.hand_off(item)
            return None
        if len(self.idle) < self.keep:
            self.idle.append(item)
            return None
        # The pool is closed or shrinking after resize(), or overflow_idle_timeout=0 and
        # pool_size items are idle already: this one is surplus. (Otherwise an overflow item
        # stays idle and the sweep closes it once idle for overflow_idle_timeout, so that it
        # is reused, not closed and reopened, while demand lasts.)
        self.forget(item, "pool_closed" if self.closed else "overflow")
        return item

    def claim(self, item: T) -> bool:
        """The holder is returning ``item``: whether a leak warning was given for this
        checkout. From now on no new one is (a slow reset is not the holder's doing)."""
        reported = item.warned_for == item.lent_at
        item.warned_for = item.lent_at
        return reported

    def forget(self, item: T, reason: str) -> None:
        """``item`` is about to be closed (``reason``: see ``stats.CLOSE_REASONS``): take it
        off the books and release its slot."""
        self.entries.discard(item)
        self.checking.discard(item)
        self.open -= 1
        self.count_closed(reason)
        _after_shrink(self)

    def discarded(self, item: T, reason: str, *, disconnect: bool, now: float) -> bool:
        """``item`` is being closed for good; its slot stays taken until :meth:`slot_freed`.
        ``disconnect``: it was found dead. Returns whether that is news (it was not suspect
        already): others opened before ``now`` are suspect then (see :meth:`note_disconnect`)
        and maintenance should run."""
        self.count_closed(reason)
        self.entries.discard(item)
        self.checking.discard(item)
        if reason == "ping_failed":
            self.pings_failed += 1
        # A suspect found dead confirms what is known: checking the ones that passed again
        # would only repeat the work (quadratically in an outage).
        news = disconnect and item.checked_at >= self.disconnect_at
        if news:
            self.note_disconnect(now)
        return news

    def count_closed(self, reason: str) -> None:
        """Count one connection closed for ``reason``."""
        self.closed_count += 1
        self.closed_by[reason] = self.closed_by.get(reason, 0) + 1

    def send_to_check(self, item: T) -> bool:
        """A returned ``item`` was lent across a disconnect: queue it for a check. Returns
        ``False`` if the pool is closed (check it in, which closes it)."""
        if self.closed:
            return False
        self.checking.add(item)
        self.to_check.append(item)
        return True

    def passed_check(self, item: T, now: float) -> T | None:
        """``item`` answered its check at ``now``: back in circulation (see
        :meth:`check_in`; returns it if surplus, or retired meanwhile by :meth:`drain`)."""
        item.checked_at = now
        return self.check_in(item, checked=True, fast=True)

    def suspect(self, item: T) -> bool:
        """Whether ``item`` was last checked before the latest disconnect."""
        return item.checked_at < self.disconnect_at

    # ------------------------------------------------------------------ health

    def note_disconnect(self, now: float) -> None:
        """A connection turned out dead: the server may have restarted, killing every
        session opened before now. Idle ones go to maintenance for a check; lent ones are
        checked when returned; meanwhile checkouts verify what they get."""
        self.disconnect_at = now
        suspects = [item for item in self.idle if item.checked_at < now]
        if suspects:
            for item in suspects:
                self.idle.remove(item)
            self.checking.update(suspects)
            self.to_check.extend(suspects)
        for item in self.lent():
            if item.checked_at < now:
                item.mark_slow_return()
        self.suspects = True
        self.check_on_acquire = True

    def sweep(self, now: float, find_orphans: Callable[[set[T], list[T]], list[T]]) -> Sweep[T]:
        """Maintenance's decisions at ``now``: reclaim the slots of dropped handles (found
        by ``find_orphans(entries, not_lent)``, which must see no other reference to them),
        retire idle items past their lifetime or idle timeout, queue checks (keepalive,
        suspects), mark lent ones to retire on return, find new leaks."""
        return _sweep(self, now, find_orphans)

    def plan_connect(self, now: float) -> tuple[Token | None, float]:
        """Maintenance's last decision: open a connection to reconnect (with back-off) for
        waiters, or to refill ``min_idle``? Returns :data:`PROBE` or :data:`CONNECT` (the
        slot is reserved) or ``None``, and when to look again if an attempt is not due
        yet (else ``FOREVER``)."""
        return _plan_connect(self, now)

    # ------------------------------------------------------------------ pool-wide changes

    def drain(self, now: float) -> tuple[list[T], int]:
        """Retire every item open at ``now`` (failover to another server, rotated
        credentials): returns the idle ones and those queued for a check, off the books, to
        close now, and how many others (lent, or being checked) are marked to be closed when
        they come back. Their freed slots go to waiters. An item whose connect began before
        ``now`` and ends after it is retired too (see :meth:`connected`)."""
        self.drained_at = now
        to_close = [*self.idle, *self.to_check]
        self.idle.clear()
        self.to_check.clear()
        for item in to_close:
            self.forget(item, "drained")
        marked = 0
        for item in self.entries:
            if not item.retire:
                item.retire = "drained"
                item.mark_slow_return()
                marked += 1
        self.fill_waiters()
        return to_close, marked

    def resize(self, config: PoolConfig) -> list[T]:
        """Take the validated ``config`` (new ``pool_size`` / ``max_overflow``). Returns the
        surplus idle items, off the books, to close. Raises
        :class:`~flask_dbpool.PoolClosed`."""
        if self.closed:
            raise PoolClosed(messages.closed(self.config.name))
        self.config = config
        self.max_open = config.max_open
        # While more are open than the new maximum, returned items are closed (keep 0)
        # until _after_shrink sees the pool back under it.
        self.keep = _keep_for(config) if self.open <= self.max_open else 0
        self.fill_waiters()
        surplus = []
        while len(self.idle) > min(self.keep, config.pool_size):
            item = self.idle.popleft()  # the least recently used go first
            self.forget(item, "resized")
            surplus.append(item)
        return surplus

    def close(self) -> tuple[bool, list[T]]:
        """Stop lending: waiters get :data:`CLOSED`. Returns whether this is the first
        close, and the idle items (and those waiting for a check), off the books, to close."""
        first = not self.closed
        self.closed = True
        self.keep = 0
        while self.waiters:
            self.hand_off(CLOSED)
        idle = [*self.idle, *self.to_check]
        self.idle.clear()
        self.to_check.clear()
        for item in idle:
            self.forget(item, "pool_closed")
        _after_shrink(self)
        return first, idle

    # ------------------------------------------------------------------ reading

    def lent(self) -> Iterable[T]:
        """The items checked out now (and those being opened for a caller)."""
        idle = set(self.idle)
        return [item for item in self.entries if item not in idle and item not in self.checking]

    def holders(self) -> list[Holder]:
        """Who holds the lent items."""
        return [holder_of(item) for item in self.lent()]

    def in_use(self) -> int:
        """Slots neither idle, nor connecting, nor being checked."""
        return self.open - len(self.idle) - self.connecting - len(self.checking)

    def describe(self) -> str:
        """The counts for error messages."""
        config = self.config
        return messages.pool_state(
            pool_size=config.pool_size,
            max_overflow=config.max_overflow,
            open=self.open,
            in_use=self.in_use(),
            idle=len(self.idle),
            connecting=self.connecting,
            checking=len(self.checking),
            waiting=len(self.waiters),
        )

    def stats(self) -> PoolStats:
        """A consistent snapshot of the gauges and totals."""
        return _snapshot(self)


def _plan_connect(state: PoolState[Any], now: float) -> tuple[Token | None, float]:
    """:meth:`PoolState.plan_connect`, written out of the class."""
    if state.closed or state.open >= state.max_open:
        return None, FOREVER
    min_idle = state.config.min_idle
    if state.connect_failures:
        if state.waiters or len(state.idle) < min_idle:
            due = state.next_attempt()
            if now >= due and not state.probing:
                state.probing = True
                state.open += 1
                state.connecting += 1
                return PROBE, FOREVER
            return None, max(due, now + 0.05)
    elif len(state.idle) + len(state.checking) + state.connecting < min_idle:
        if now < state.refill_at:
            return None, state.refill_at
        state.open += 1
        state.connecting += 1
        return CONNECT, FOREVER
    return None, FOREVER


def _connect_failed(
    state: PoolState[Any],
    error: BaseException,
    rejected: bool,
    started: float,
    now: float,
    probe: bool,
) -> tuple[int, float]:
    """:meth:`PoolState.connect_failed`, written out of the class."""
    state.connect_errors += 1
    state.connect_error = error
    state.rejection = error if rejected else None
    if started >= state.failed_at or not state.connect_failures:
        state.connect_failures += 1
        state.retry_at = now + state.backoff(state.connect_failures)
        state.recover_at = now + state.recovery()
        # Only a counted failure starts a new outage: an attempt from before it failing
        # late must not swallow the next probe's failure.
        state.failed_at = now
    if probe:
        state.probing = False
    state.connecting -= 1
    state.open -= 1
    if rejected and not state.entries:
        # Nothing open could come back to them: waiters get the refusal now.
        while state.waiters:
            state.hand_off(Refusal(error))
    _after_shrink(state)
    return state.connect_failures, max(0.0, state.next_attempt() - now)


def _after_shrink(state: PoolState[Any]) -> None:
    """A slot was released: signal a draining close, or finish a shrinking resize."""
    if state.closed:
        if state.open == 0:
            state.on_drained()
            state.on_drained = _nothing  # once: a shell may resolve a future there
    elif not state.keep and state.open <= state.max_open:
        # Back under the new maximum: keep idle connections again, fill free slots.
        state.keep = _keep_for(state.config)
        state.fill_waiters()


def _snapshot(state: PoolState[Any]) -> PoolStats:
    """:meth:`PoolState.stats`, written out of the class."""
    config = state.config
    return PoolStats(
        name=config.name,
        pool_size=config.pool_size,
        max_overflow=config.max_overflow,
        min_idle=config.min_idle,
        open=state.open,
        idle=len(state.idle),
        in_use=state.in_use(),
        connecting=state.connecting,
        checking=len(state.checking),
        waiting=len(state.waiters),
        acquired=state.acquired,
        created=state.created,
        closed=state.closed_count,
        timeouts=state.timeouts,
        rejected=state.rejected,
        waits=state.waits,
        wait_seconds_total=state.wait_total,
        wait_seconds_max=state.wait_max,
        connect_errors=state.connect_errors,
        pings_failed=state.pings_failed,
        leaks_detected=state.leaks_detected,
        reclaimed=state.reclaimed,
        transaction_retries=state.transaction_retries,
        closed_by_reason=dict(state.closed_by),
        wait_time=state.wait_time.snapshot(),
        create_time=state.create_time.snapshot(),
        use_time=state.use_time.snapshot(),
    )


def _retire_idle(
    survivors: list[T],
    up_to: int,
    timeout: float,
    reason: str,
    now: float,
    to_close: list[tuple[T, str]],
    next_run: float,
    min_idle: int,
) -> tuple[list[T], float]:
    """Move to ``to_close`` (with ``reason``) at most ``up_to`` of the idle ``survivors``
    (oldest first) idle for ``timeout``, keeping ``min_idle``; returns the rest and when to
    look again for the next one due."""
    excess = min(up_to, len(survivors) - min_idle)
    kept = []
    for item in survivors:
        if excess > 0 and now - item.idle_since >= timeout:
            to_close.append((item, reason))
            excess -= 1
        else:
            kept.append(item)
            if excess > 0:
                next_run = min(next_run, item.idle_since + timeout)
    return kept, next_run


def _sweep(
    state: PoolState[T], now: float, find_orphans: Callable[[set[T], list[T]], list[T]]
) -> Sweep[T]:
    """:meth:`PoolState.sweep`, written out of the class to keep it readable."""
    config = state.config
    next_run = now + MAX_SLEEP
    # Dropped handles first: their slots may be what waiters are waiting for.
    orphans = find_orphans(state.entries, [*state.idle, *state.checking])
    for item in orphans:
        state.entries.discard(item)
        state.reclaimed += 1
        state.count_closed("leaked")
    orphan_holders = [holder_of(item) for item in orphans]
    to_ping = state.to_check[:]
    state.to_check.clear()
    to_close: list[tuple[T, str]] = []

    # Idle items, least recently returned first.
    keepalive = config.keepalive_interval
    survivors = []
    for item in state.idle:
        if item.expires_at <= now:
            to_close.append((item, "lifetime"))
        elif item.checked_at < state.disconnect_at or (
            keepalive is not None and now - max(item.lent_at, item.checked_at) >= keepalive
        ):
            to_ping.append(item)
            state.checking.add(item)
        else:
            if item.seen_lent_at != item.lent_at:  # first seen idle since its checkout
                item.seen_lent_at = item.lent_at
                never_lent = item.lent_at == item.created
                item.idle_since = item.created if never_lent else now
            survivors.append(item)
    # Overflow items (above pool_size) idle for overflow_idle_timeout go first, then any
    # idle for idle_timeout; the least recently returned first, never below min_idle idle.
    grace = config.overflow_idle_timeout
    if grace > 0:
        over = state.open - len(to_close) - config.pool_size
        survivors, next_run = _retire_idle(
            survivors, over, grace, "overflow", now, to_close, next_run, config.min_idle
        )
        if state.open > config.pool_size:
            # Overflow items may come back at any time: see them idle soon after.
            next_run = min(next_run, now + grace / 2)
    idle_timeout = config.idle_timeout
    if idle_timeout is not None:
        survivors, next_run = _retire_idle(
            survivors,
            len(survivors),
            idle_timeout,
            "idle",
            now,
            to_close,
            next_run,
            config.min_idle,
        )
    state.idle.clear()
    state.idle.extend(survivors)
    for item in survivors:
        next_run = min(next_run, item.expires_at)
        if keepalive is not None:
            next_run = min(next_run, max(item.lent_at, item.checked_at) + keepalive)
    for item, reason in to_close:
        state.forget(item, reason)

    # Lent items: retire on return, warn about leaks. When they come back is unknown
    # (returns are not timed), so look again soon enough for idle_timeout (within a
    # quarter of it) and keepalive to act close to their settings.
    threshold = config.leak_threshold
    leaks = []
    lent_horizon = min(
        idle_timeout / 4 if idle_timeout is not None else FOREVER,
        keepalive if keepalive is not None else FOREVER,
    )
    suspects = any(item.checked_at < state.disconnect_at for item in state.entries)
    for item in state.lent():
        next_run = min(next_run, now + lent_horizon)
        if not item.retire:
            if item.expires_at <= now:
                item.retire = "lifetime"
                item.mark_slow_return()
            else:
                next_run = min(next_run, item.expires_at)
        if threshold is not None and item.holder and item.warned_for != item.lent_at:
            if now - item.lent_at >= threshold:
                item.warned_for = item.lent_at
                item.mark_slow_return()  # its return is logged
                state.leaks_detected += 1
                leaks.append(holder_of(item))
            else:
                next_run = min(next_run, item.lent_at + threshold)
    if state.suspects and not suspects:
        state.suspects = False
        state.check_on_acquire = state.checked_checkouts
    if state.waiters:
        # Callers are waiting: a handle dropped meanwhile should not keep them waiting.
        next_run = min(next_run, now + 1.0)
    return Sweep(orphans, orphan_holders, to_close, to_ping, leaks, next_run)


def _timeout_report(state: PoolState[Any], waited: float) -> TimeoutReport:
    """What a ``PoolTimeout`` for a caller that waited ``waited`` s (still queued) will
    say; counts the timeout. The message is built outside the lock."""
    state.timeouts += 1
    return TimeoutReport(
        waited,
        state.describe(),
        state.connect_failures,
        state.connect_error if state.connect_failures else None,
        state.rejection is not None,
        state.holders(),
    )


def _request(
    state: PoolState[T],
    now: float,
    ident: int,
    start: float,
    deadline: float,
    new_waiter: Callable[[], W],
) -> T | Token | W | TimeoutReport:
    """See :meth:`PoolState.request` (written out of the class to keep it short)."""
    if state.closed:
        raise PoolClosed(messages.closed(state.config.name))
    if not state.waiters and state.idle:
        return state.lend(state.take_idle(), now, ident)
    failing = state.connect_failures
    if (
        state.rejection is not None
        and not state.entries
        and (state.probing or now < state.retry_at)
    ):
        # The server refused the last login and nothing is open that could come back:
        # waiting would only wait out the timeout. Back-off still spaces the attempts.
        return Refusal(state.rejection)
    can_grow = state.open < state.max_open
    connect_at = state.patience(now, deadline) if can_grow and not failing else FOREVER
    if can_grow and (
        # Nothing lent could come back first (or the caller will not wait): connect.
        (not failing and not state.waiters and connect_at <= now)
        # The database was unreachable: one caller at a time tries again once the
        # back-off delay has passed; the others wait for its outcome.
        # (This caller counts as waiting: it would wait for the attempt otherwise.)
        or (failing and now >= state.next_attempt(waiting=True) and not state.probing)
    ):
        state.open += 1
        state.connecting += 1
        if failing:
            state.probing = True
            return PROBE
        return CONNECT
    max_waiting = state.config.max_waiting
    # A limit on callers waiting for an exhausted pool: those the free slots will take
    # (once their patience runs out) do not count.
    free = state.max_open - state.open if connect_at < FOREVER else 0
    if max_waiting and len(state.waiters) - free >= max_waiting:
        state.rejected += 1
        raise TooManyWaiters(
            messages.too_many_waiters(
                state.config.name, state.target, max_waiting, state.describe()
            )
        )
    waiter = new_waiter()
    waiter.connect_at = connect_at
    state.waiters.append(waiter)
    if now >= deadline:
        report = _timeout_report(state, now - start)  # with this caller counted as waiting
        state.waiters.pop()
        return report
    return waiter


def _woken(
    state: PoolState[T], waiter: W, now: float, ident: int, waited: float, deadline: float
) -> T | Token | TimeoutReport | None:
    """See :meth:`PoolState.woken` (written out of the class to keep it short)."""
    item = waiter.item
    if item is None and now < deadline:
        if state.reconnect_due(now):
            state.waiters.remove(waiter)
            return CONNECT
        if not state.connect_due(waiter, now):
            return None
        # Nothing came back in time: connect in a slot of its own.
        state.waiters.remove(waiter)
        state.open += 1
        state.connecting += 1
        item = waiter.item = NEW_SLOT  # as if handed: an interrupt gives it back
    elif item is None:
        # Timed out with nothing handed over: leave the queue.
        state.count_wait(waited)
        report = _timeout_report(state, waited)
        state.waiters.remove(waiter)
        state.notify("wait", waited)
        return report
    state.count_wait(waited)
    if not isinstance(item, Token):
        # Counted when taken, not when handed over: an acquisition counter must never go
        # down, even for a waiter interrupted right after.
        state.lend(item, now, ident)  # type: ignore[arg-type]
    state.notify("wait", waited)  # last: an observer that raises finds the books done
    return item  # type: ignore[return-value]
