"""Unit tests of :class:`flask_dbpool.state.PoolState` alone: no database, no threads, no
sleeps. Time is a plain float passed as ``now``; items and waiters are fakes that record what
the rules did to them. The last part drives random sequences of calls through a hypothesis
state machine that models the threaded shell (``pool.py``) and checks the module's rules
after every step."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from flask_dbpool.config import PoolConfig
from flask_dbpool.errors import PoolClosed, TooManyWaiters
from flask_dbpool.leaks import Holder, TimeoutReport
from flask_dbpool.state import (
    CLOSED,
    CONNECT,
    FOREVER,
    MAX_SLEEP,
    NEW_SLOT,
    PROBE,
    PoolState,
    Refusal,
    Token,
)

# ---------------------------------------------------------------------------- fakes


class Item:
    """A :class:`~flask_dbpool.state.Lendable` with plain attributes (as ``Entry`` sets them
    up) that records the calls the rules make on it."""

    def __init__(self, created: float, *, lifetime: float | None = None, name: str = "") -> None:
        self.name = name
        self.created = created
        self.lent_at = created
        self.holder = 0
        self.checked_at = created
        self.used_at = created
        self.expires_at = FOREVER if lifetime is None else created + lifetime
        self.retire = ""
        self.idle_since = created
        self.seen_lent_at = -1.0
        self.warned_for = -1.0
        self.label: str | None = None
        self.label_for = -1.0
        self.thread_name: str | None = None
        self.caller: str | None = None
        self.site: Any = None
        self.calls: list[str] = []

    def mark_slow_return(self) -> None:
        self.calls.append("slow")

    def allow_fast_return(self) -> None:
        self.calls.append("fast")

    def __repr__(self) -> str:
        return f"<Item {self.name or id(self)}>"


class FakeWaiter:
    """A :class:`~flask_dbpool.state.Waiting` that counts its wake-ups."""

    def __init__(self) -> None:
        self.item: object = None
        self.connect_at = FOREVER
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


def backoff(failures: int) -> float:
    """Deterministic back-off: 10 s per consecutive failure."""
    return 10.0 * failures


BASE_OPTIONS: dict[str, Any] = {
    "pool_size": 2,
    "max_overflow": 1,
    "max_lifetime": None,
    "idle_timeout": None,
    # Overflow items closed on return unless a test sets a grace period (see the
    # overflow_idle_timeout tests).
    "overflow_idle_timeout": 0,
}


def expected_keep(config: PoolConfig) -> int:
    """What ``keep`` is while the pool is open and under its maximum."""
    return config.max_open if config.overflow_idle_timeout > 0 else config.pool_size


def make_config(**options: Any) -> PoolConfig:
    return PoolConfig.from_options({**BASE_OPTIONS, **options})


class Drained:
    """An ``on_drained`` callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def make_state(
    *,
    closed: bool = False,
    on_drained: Callable[[], object] | None = None,
    recovery: float = 100.0,
    **options: Any,
) -> PoolState[Item]:
    """A state with the deterministic back-off, and ``recovery`` seconds from a failure to
    the next attempt while callers wait (by default later than any back-off here: off)."""
    return PoolState(
        make_config(**options),
        target="db://test",
        closed=closed,
        backoff=backoff,
        recovery=lambda: recovery,
        on_drained=on_drained or (lambda: None),
    )


def connect(state: PoolState[Item], now: float, *, created: float | None = None) -> Item:
    """Reserve a slot and open an item in it (accounted for, not lent)."""
    assert state.reserve()
    item = Item(now if created is None else created)
    state.connected(item, now, now, False)
    return item


def add_idle(state: PoolState[Item], now: float, count: int = 1) -> list[Item]:
    items = [connect(state, now) for _ in range(count)]
    for item in items:
        assert state.check_in(item) is None
    return items


def lend_new(state: PoolState[Item], now: float, ident: int = 1) -> Item:
    """A new item opened in a reserved slot and lent (as after CONNECT)."""
    assert state.reserve()
    item = Item(now)
    state.connected(item, now, now, False)
    return state.lend(item, now, ident)


def fill(state: PoolState[Item], now: float) -> list[Item]:
    """Lend items until every slot is taken."""
    return [lend_new(state, now, ident=i + 1) for i in range(state.max_open)]


def wait(state: PoolState[Item], now: float, timeout: float = 30.0, ident: int = 99) -> FakeWaiter:
    got = state.request(now, ident, now, now + timeout, FakeWaiter)
    assert isinstance(got, FakeWaiter)
    return got


def fail(
    state: PoolState[Item],
    now: float,
    *,
    rejected: bool = False,
    probe: bool = False,
    error: BaseException | None = None,
) -> tuple[int, float]:
    """Reserve a slot and fail to connect in it."""
    if not probe:
        assert state.reserve()
    return state.connect_failed(error or OSError("down"), rejected, now, now, probe)


def assert_books(state: PoolState[Item]) -> None:
    """The module's accounting rule, outside a reserved-but-unconnected slot."""
    assert state.open == len(state.entries) + state.connecting
    assert not set(state.idle) & state.checking
    assert set(state.idle) <= state.entries
    assert state.checking <= state.entries
    assert not (state.waiters and state.idle)


# ---------------------------------------------------------------------------- request


def test_request_lends_an_idle_item() -> None:
    state = make_state()
    (item,) = add_idle(state, 0.0)
    got = state.request(5.0, 42, 5.0, 35.0, FakeWaiter)
    assert got is item
    assert (item.lent_at, item.holder) == (5.0, 42)
    assert state.acquired == 1
    assert not state.idle
    assert state.in_use() == 1
    assert_books(state)


@pytest.mark.parametrize(("lifo", "expected"), [(True, 1), (False, 0)])
def test_request_takes_idle_lifo_or_fifo(lifo: bool, expected: int) -> None:
    state = make_state(lifo=lifo)
    items = add_idle(state, 0.0, 2)
    assert state.request(1.0, 1, 1.0, 2.0, FakeWaiter) is items[expected]


def test_request_reserves_a_slot_to_connect_in() -> None:
    state = make_state()
    assert state.request(0.0, 1, 0.0, 30.0, FakeWaiter) is CONNECT
    assert (state.open, state.connecting, state.acquired) == (1, 1, 0)
    item = Item(0.5)
    assert state.connected(item, 0.0, 0.5, False) == 0
    assert (state.open, state.connecting, state.created) == (1, 0, 1)
    assert state.lend(item, 0.5, 1) is item
    assert state.acquired == 1
    assert_books(state)


def test_request_queues_a_waiter_when_every_slot_is_taken() -> None:
    state = make_state()
    fill(state, 0.0)
    made: list[FakeWaiter] = []

    def new_waiter() -> FakeWaiter:
        made.append(FakeWaiter())
        return made[-1]

    got = state.request(1.0, 7, 1.0, 31.0, new_waiter)
    assert isinstance(got, FakeWaiter) and made == [got]
    assert list(state.waiters) == [got]
    assert state.open == 3
    assert got.item is None and got.wakes == 0


def test_request_probes_once_while_failing_after_retry_at() -> None:
    state = make_state()
    assert fail(state, 0.0) == (1, 10.0)
    assert state.retry_at == 10.0
    # Before retry_at: wait for the outcome of the next attempt.
    early = wait(state, 5.0)
    # Once the back-off has passed, one caller probes...
    assert state.request(10.0, 1, 10.0, 40.0, FakeWaiter) is PROBE
    assert state.probing
    assert (state.open, state.connecting) == (1, 1)
    # ...and the others wait for its outcome.
    later = wait(state, 10.5)
    assert list(state.waiters) == [early, later]


def test_request_refuses_at_once_when_rejected_and_nothing_is_open() -> None:
    state = make_state()
    error = PermissionError("password authentication failed")
    fail(state, 0.0, rejected=True, error=error)
    got = state.request(1.0, 1, 1.0, 31.0, FakeWaiter)
    assert isinstance(got, Refusal)
    assert got.error is error
    assert not state.waiters
    # The back-off still spaces the attempts: once due, the caller probes...
    assert state.request(10.0, 1, 10.0, 40.0, FakeWaiter) is PROBE
    # ...and the others are refused while it runs.
    assert isinstance(state.request(10.1, 2, 10.1, 40.1, FakeWaiter), Refusal)


def test_request_does_not_refuse_while_something_is_open() -> None:
    state = make_state(pool_size=1, max_overflow=0)
    lend_new(state, 0.0)
    state.rejection = PermissionError("rejected")  # as a refused login would leave it
    state.connect_failures = 1
    state.retry_at = 100.0
    assert isinstance(state.request(1.0, 2, 1.0, 31.0, FakeWaiter), FakeWaiter)


def test_request_raises_too_many_waiters() -> None:
    state = make_state(max_waiting=1)
    fill(state, 0.0)
    wait(state, 1.0)
    with pytest.raises(TooManyWaiters, match="max_waiting=1"):
        state.request(1.0, 2, 1.0, 31.0, FakeWaiter)
    assert state.rejected == 1
    assert len(state.waiters) == 1


def test_request_reports_a_timeout_at_the_deadline() -> None:
    state = make_state()
    lent = fill(state, 0.0)
    report = state.request(3.0, 9, 1.0, 3.0, FakeWaiter)
    assert isinstance(report, TimeoutReport)
    assert report.waited == 2.0
    assert state.timeouts == 1
    assert not state.waiters  # left the queue again
    assert "waiting=1" in report.state  # described with this caller counted as waiting
    assert "open=3" in report.state
    assert (report.failures, report.cause, report.rejected) == (0, None, False)
    assert sorted(h.ident for h in report.holders) == sorted(i.holder for i in lent)


def test_request_raises_when_closed() -> None:
    state = make_state()
    state.close()
    with pytest.raises(PoolClosed):
        state.request(0.0, 1, 0.0, 30.0, FakeWaiter)
    with pytest.raises(PoolClosed):
        make_state(closed=True).request(0.0, 1, 0.0, 30.0, FakeWaiter)


def test_dry_check_due_at_most_once_a_second_and_only_when_exhausted() -> None:
    state = make_state()
    lend_new(state, 0.0)
    assert not state.dry_check_due(0.0)  # callers can still connect: nothing to look for
    while state.reserve():
        state.connected(Item(0.0), 0.0, 0.0, False)
    assert state.dry_check_due(0.0)
    assert not state.dry_check_due(0.9)
    assert state.dry_check_due(1.0)


# ---------------------------------------------------------------------------- woken


def test_woken_with_an_item_lends_and_counts_it() -> None:
    state = make_state()
    lent = fill(state, 0.0)
    waiter = wait(state, 1.0)
    observed: list[tuple[str, float]] = []
    state.observers = (lambda event, seconds: observed.append((event, seconds)),)
    assert state.check_in(lent[0]) is None
    assert waiter.item is lent[0] and waiter.wakes == 1
    assert not state.waiters
    acquired = state.acquired
    got = state.woken(waiter, 4.0, 77, 3.0, 31.0)
    assert got is lent[0]
    assert (got.lent_at, got.holder) == (4.0, 77)
    assert state.acquired == acquired + 1
    assert (state.waits, state.wait_total, state.wait_max) == (1, 3.0, 3.0)
    assert state.wait_time.snapshot().count == 1
    assert observed == [("wait", 3.0)]


def test_woken_with_new_slot() -> None:
    state = make_state()
    lent = fill(state, 0.0)
    waiter = wait(state, 1.0)
    state.discarded(lent[0], "broken", disconnect=False, now=2.0)
    assert state.slot_freed() is False
    assert waiter.item is NEW_SLOT
    assert (state.open, state.connecting) == (3, 1)
    assert state.woken(waiter, 2.0, 1, 1.0, 31.0) is NEW_SLOT
    assert state.waits == 1
    assert state.acquired == 3  # not a checkout yet
    assert_books(state)


def test_woken_with_closed() -> None:
    state = make_state()
    fill(state, 0.0)
    waiter = wait(state, 1.0)
    state.close()
    assert waiter.item is CLOSED and waiter.wakes == 1
    assert state.woken(waiter, 2.0, 1, 1.0, 31.0) is CLOSED


def test_woken_with_a_refusal() -> None:
    state = make_state(pool_size=1, max_overflow=0)
    assert state.request(0.0, 1, 0.0, 30.0, FakeWaiter) is CONNECT
    waiter = wait(state, 0.5)
    error = PermissionError("rejected")
    state.connect_failed(error, True, 0.0, 1.0, False)
    assert isinstance(waiter.item, Refusal)
    got = state.woken(waiter, 1.0, 2, 0.5, 30.5)
    assert isinstance(got, Refusal) and got.error is error


def test_woken_leaves_the_queue_to_reconnect_when_due() -> None:
    state = make_state()
    fail(state, 0.0)
    waiter = wait(state, 1.0)
    assert not state.reconnect_due(9.0)
    assert state.woken(waiter, 9.0, 1, 8.0, 31.0) is None
    assert state.reconnect_due(10.0)
    assert state.woken(waiter, 10.0, 1, 9.0, 31.0) is CONNECT
    assert not state.waiters
    assert state.open == 0  # no slot reserved: the caller asks again
    assert state.request(10.0, 1, 1.0, 31.0, FakeWaiter) is PROBE
    assert not state.reconnect_due(10.0)  # someone is trying


def test_woken_reports_a_timeout_and_leaves_the_queue() -> None:
    state = make_state()
    fill(state, 0.0)
    first = wait(state, 1.0)
    second = wait(state, 1.5)
    assert state.woken(first, 10.0, 1, 9.0, 31.0) is None  # nothing yet: keep waiting
    assert state.waits == 0
    report = state.woken(first, 31.0, 1, 30.0, 31.0)
    assert isinstance(report, TimeoutReport)
    assert report.waited == 30.0
    assert "waiting=2" in report.state
    assert state.timeouts == 1 and state.waits == 1
    assert list(state.waiters) == [second]


def test_woken_takes_a_handed_item_even_at_the_deadline() -> None:
    state = make_state()
    lent = fill(state, 0.0)
    waiter = wait(state, 1.0)
    state.check_in(lent[1])
    assert state.woken(waiter, 40.0, 1, 39.0, 31.0) is lent[1]
    assert state.timeouts == 0


def test_wait_step() -> None:
    state = make_state()
    assert state.wait_step(0.0, 30.0) == 1.0
    assert state.wait_step(29.5, 30.0) == 0.5
    assert state.wait_step(31.0, 30.0) == 0.0
    fail(state, 0.0)  # retry_at 10
    assert state.wait_step(9.5, 30.0) == 0.5
    assert state.wait_step(10.0, 30.0) == 0.01
    state.probing = True
    assert state.wait_step(12.0, 30.0) == 0.25


# ---------------------------------------------------------------------------- abandon


def test_abandon_a_queued_waiter() -> None:
    state = make_state()
    lent = fill(state, 0.0)
    first = wait(state, 1.0)
    second = wait(state, 1.0)
    assert state.abandon(first) is None
    assert list(state.waiters) == [second]
    # Never handed anything afterwards.
    state.check_in(lent[0])
    assert first.item is None and first.wakes == 0
    assert second.item is lent[0]
    # Abandoning again (or after leaving) is harmless.
    assert state.abandon(first) is None


def test_abandon_after_being_handed_an_item_returns_it() -> None:
    state = make_state()
    lent = fill(state, 0.0)
    waiter = wait(state, 1.0)
    state.check_in(lent[0])
    assert state.abandon(waiter) is lent[0]
    assert waiter.item is None
    assert state.check_in(lent[0]) is None
    assert list(state.idle) == [lent[0]]
    assert_books(state)


def test_abandon_after_being_handed_a_slot_returns_it() -> None:
    state = make_state()
    lent = fill(state, 0.0)
    first = wait(state, 1.0)
    second = wait(state, 1.0)
    state.discarded(lent[0], "broken", disconnect=False, now=2.0)
    state.slot_freed()
    assert first.item is NEW_SLOT
    assert state.abandon(first) is NEW_SLOT
    assert state.slot_freed(connecting=True) is False  # passed on to the next waiter
    assert second.item is NEW_SLOT
    assert (state.open, state.connecting) == (3, 1)
    assert state.abandon(second) is NEW_SLOT
    state.slot_freed(connecting=True)
    assert (state.open, state.connecting) == (2, 0)
    assert_books(state)


# ---------------------------------------------------------------------------- connecting


def test_reserve() -> None:
    state = make_state()  # max_open 3
    assert state.reserve(limit=1)
    assert not state.reserve(limit=1)
    assert state.reserve() and state.reserve()
    assert not state.reserve()
    assert (state.open, state.connecting) == (3, 3)
    state.close()
    with pytest.raises(PoolClosed):
        state.reserve()


def test_connected_accounts_for_the_item() -> None:
    state = make_state()
    observed: list[tuple[str, float]] = []
    state.observers = (lambda event, seconds: observed.append((event, seconds)),)
    assert state.reserve()
    item = Item(2.5)
    assert state.connected(item, 2.0, 2.5, False) == 0
    assert item in state.entries
    assert (state.open, state.connecting, state.created) == (1, 0, 1)
    assert state.create_time.snapshot().count == 1
    assert observed == []  # observers are told by notify(), after the books are done
    state.notify("create", 0.5)
    assert observed == [("create", 0.5)]
    assert list(state.lent()) == [item]  # opened for a caller, not idle
    assert state.acquired == 0


def test_connected_after_failures_recovers_and_fills_waiters() -> None:
    state = make_state()  # max_open 3
    fail(state, 0.0, rejected=True)
    fail(state, 11.0)  # the second failure: retry_at 11 + 20
    assert state.connect_failures == 2 and state.rejection is None
    waiters = [wait(state, 12.0) for _ in range(3)]
    assert state.request(31.0, 1, 31.0, 61.0, FakeWaiter) is PROBE
    item = Item(32.0)
    assert state.connected(item, 31.0, 32.0, True) == 2
    assert (state.connect_failures, state.connect_error, state.rejection) == (0, None, None)
    assert not state.probing
    # Two free slots: the two oldest waiters get one each; the third waits.
    assert [w.item for w in waiters] == [NEW_SLOT, NEW_SLOT, None]
    assert list(state.waiters) == [waiters[2]]
    assert (state.open, state.connecting) == (3, 2)
    assert_books(state)


def test_connect_failed_counts_one_failure_per_outage_start() -> None:
    state = make_state()
    for _ in range(3):
        assert state.reserve()
    # Three attempts under way (started at 0, 1 and 5) when the first one fails at 2.
    assert state.connect_failed(OSError("a"), False, 0.0, 2.0, False) == (1, 10.0)
    # One that started before that failure fails too: the same outage, no new back-off.
    assert state.connect_failed(OSError("b"), False, 1.0, 3.0, False) == (1, 9.0)
    assert state.retry_at == 12.0
    # One that started after it did is a new failure.
    assert state.connect_failed(OSError("c"), False, 5.0, 6.0, False) == (2, 20.0)
    assert state.retry_at == 26.0
    assert state.connect_errors == 3
    assert str(state.connect_error) == "c"
    assert (state.open, state.connecting) == (0, 0)


def test_connect_failed_counts_a_probe_despite_a_late_stale_failure() -> None:
    state = make_state()
    assert state.reserve() and state.reserve()  # two attempts under way at 0
    assert state.connect_failed(OSError("a"), False, 0.0, 1.0, False) == (1, 10.0)
    assert state.request(11.0, 1, 11.0, 41.0, FakeWaiter) is PROBE  # after the back-off
    # The other attempt of 0 fails late (a connect timeout): the same outage, not counted.
    assert state.connect_failed(OSError("b"), False, 0.0, 12.0, False)[0] == 1
    # The probe of 11 fails: a new failure, with a longer back-off.
    assert state.connect_failed(OSError("c"), False, 11.0, 13.0, True) == (2, 20.0)


def test_connect_failed_clears_the_probe_and_keeps_waiters_on_an_outage() -> None:
    state = make_state()
    fail(state, 0.0)
    waiter = wait(state, 1.0)
    assert state.request(10.0, 1, 10.0, 40.0, FakeWaiter) is PROBE
    assert state.connect_failed(OSError("still down"), False, 10.0, 11.0, True) == (2, 20.0)
    assert not state.probing
    assert list(state.waiters) == [waiter] and waiter.item is None
    assert state.rejection is None


def test_connect_failed_rejection_refuses_waiters_when_nothing_is_open() -> None:
    state = make_state(pool_size=1, max_overflow=1)
    assert state.request(0.0, 1, 0.0, 30.0, FakeWaiter) is CONNECT
    assert state.request(0.0, 2, 0.0, 30.0, FakeWaiter) is CONNECT
    waiters = [wait(state, 0.5), wait(state, 0.6)]
    error = PermissionError("no such database")
    state.connect_failed(error, True, 0.0, 1.0, False)
    assert state.rejection is error
    for waiter in waiters:
        assert isinstance(waiter.item, Refusal) and waiter.item.error is error
        assert waiter.wakes == 1
    assert not state.waiters


def test_connect_failed_rejection_keeps_waiters_while_something_is_open() -> None:
    state = make_state(pool_size=1, max_overflow=1)
    lend_new(state, 0.0)
    assert state.request(0.0, 2, 0.0, 0.0, FakeWaiter) is CONNECT  # timeout=0: no waiting
    waiter = wait(state, 0.5)
    state.connect_failed(PermissionError("no"), True, 0.0, 1.0, False)
    assert list(state.waiters) == [waiter] and waiter.item is None


def test_slot_freed_hands_a_new_slot_to_the_oldest_waiter() -> None:
    state = make_state()
    lent = fill(state, 0.0)
    first, second = wait(state, 1.0), wait(state, 1.0)
    state.discarded(lent[0], "invalidated", disconnect=False, now=2.0)
    assert state.slot_freed() is False
    assert first.item is NEW_SLOT and first.wakes == 1
    assert second.item is None
    assert (state.open, state.connecting) == (3, 1)


def test_slot_freed_releases_the_slot_without_waiters() -> None:
    state = make_state()
    lent = fill(state, 0.0)
    state.discarded(lent[0], "invalidated", disconnect=False, now=2.0)
    assert state.slot_freed() is False
    assert state.open == 2
    assert_books(state)


def test_slot_freed_while_failing_asks_for_a_reconnection() -> None:
    state = make_state(pool_size=1, max_overflow=0)
    (item,) = fill(state, 0.0)
    state.connect_failures = 1  # an outage began meanwhile
    state.retry_at = 5.0
    waiter = wait(state, 1.0)
    state.discarded(item, "broken", disconnect=True, now=2.0)
    assert state.slot_freed() is True  # maintenance should reconnect for the waiter
    assert waiter.item is None
    assert state.open == 0


def test_slot_freed_connecting_and_probe_flags() -> None:
    state = make_state()
    fail(state, 0.0)
    assert state.request(10.0, 1, 10.0, 40.0, FakeWaiter) is PROBE
    assert state.slot_freed(connecting=True, probe=True) is False
    assert (state.open, state.connecting, state.probing) == (0, 0, False)


def test_refill_failed_backs_off() -> None:
    state = make_state(min_idle=1)
    assert state.refill_failed(0.0) == 10.0
    assert state.refill_failed(10.0) == 20.0
    assert state.refill_at == 30.0
    assert state.refill_failures == 2


# ---------------------------------------------------------------------------- returning


def test_check_in_hands_the_item_to_the_oldest_waiter() -> None:
    state = make_state()
    lent = fill(state, 0.0)
    first, second = wait(state, 1.0), wait(state, 1.0)
    assert state.check_in(lent[2]) is None
    assert first.item is lent[2] and first.wakes == 1
    assert second.item is None and list(state.waiters) == [second]
    assert not state.idle


def test_check_in_keeps_up_to_pool_size_idle_then_closes_overflow() -> None:
    state = make_state()  # pool_size 2, max_overflow 1
    lent = fill(state, 0.0)
    assert state.check_in(lent[0]) is None
    assert state.check_in(lent[1], fast=True) is None
    assert lent[1].calls == ["fast"]
    assert state.check_in(lent[2]) is lent[2]  # surplus: its slot is released
    assert list(state.idle) == lent[:2]
    assert state.open == 2
    assert state.closed_by == {"overflow": 1}
    assert lent[2] not in state.entries
    assert_books(state)


def test_check_in_after_close_closes_it() -> None:
    state = make_state()
    item = fill(state, 0.0)[0]
    state.close()
    assert state.check_in(item) is item
    assert state.closed_by == {"pool_closed": 1}


def test_check_in_from_a_check() -> None:
    state = make_state()
    (item,) = add_idle(state, 0.0)
    state.discarded(connect(state, 1.0), "broken", disconnect=True, now=2.0)
    state.slot_freed()
    assert item in state.checking
    assert state.to_check == [item]
    state.to_check.clear()  # picked up by a sweep
    assert state.check_in(item, checked=True) is None
    assert item not in state.checking
    assert list(state.idle) == [item]


def test_claim_reports_a_leak_warning_once() -> None:
    state = make_state()
    item = lend_new(state, 0.0)
    assert state.claim(item) is False
    assert item.warned_for == item.lent_at
    item = lend_new(state, 1.0, ident=2)
    item.warned_for = item.lent_at  # a sweep warned about this checkout
    assert state.claim(item) is True
    assert state.claim(item) is True  # still this checkout


# A checkout is told apart by its lent_at stamp (claim() sets warned_for = lent_at, sweep
# warns while warned_for != lent_at): when the clock has not advanced between two checkouts
# of one item (a coarse clock, such as time.monotonic() on Windows before Python 3.13), the
# second one must not look claimed or warned already (check_in clears the mark).


def test_claim_at_an_unchanged_clock() -> None:
    state = make_state(leak_threshold=5.0)
    item = lend_new(state, 0.0)
    assert state.claim(item) is False
    state.check_in(item)
    assert state.request(0.0, 2, 0.0, 30.0, FakeWaiter) is item  # the clock did not tick
    assert state.claim(item) is False  # no warning was given for this checkout


def test_leak_of_a_checkout_at_an_unchanged_clock() -> None:
    state = make_state(leak_threshold=5.0)
    item = lend_new(state, 0.0)
    state.claim(item)
    state.check_in(item)
    assert state.request(0.0, 2, 0.0, 30.0, FakeWaiter) is item  # the clock did not tick
    assert [h.ident for h in state.sweep(5.0, no_orphans).leaks] == [2]


def test_forget_takes_the_item_off_the_books() -> None:
    state = make_state()
    (item,) = add_idle(state, 0.0)
    state.idle.clear()
    state.checking.add(item)
    state.forget(item, "lifetime")
    assert item not in state.entries and item not in state.checking
    assert state.open == 0
    assert (state.closed_count, state.closed_by) == (1, {"lifetime": 1})


# ---------------------------------------------------------------------------- discarding


def test_discarded_disconnect_makes_older_items_suspect() -> None:
    state = make_state(pool_size=3, max_overflow=1)
    old_idle, fresh_idle = add_idle(state, 0.0, 2)
    fresh_idle.checked_at = 5.0
    old_lent = lend_new(state, 0.0, ident=1)
    dead = lend_new(state, 0.0, ident=2)
    assert state.check_on_acquire is False
    news = state.discarded(dead, "broken", disconnect=True, now=4.0)
    assert news is True
    assert state.disconnect_at == 4.0
    assert state.suspects and state.check_on_acquire
    assert dead not in state.entries
    assert state.open == 4  # the slot stays taken until slot_freed
    # Idle ones checked before the disconnect go to maintenance; later ones stay.
    assert list(state.idle) == [fresh_idle]
    assert state.checking == {old_idle}
    assert state.to_check == [old_idle]
    # Lent ones are checked when returned.
    assert old_lent.calls == ["slow"]
    assert state.suspect(old_lent) and not state.suspect(fresh_idle)
    assert state.closed_by == {"broken": 1}
    assert state.pings_failed == 0
    state.slot_freed()
    assert_books(state)


def test_discarded_suspect_is_no_news() -> None:
    state = make_state()
    first = lend_new(state, 0.0, ident=1)
    second = lend_new(state, 0.0, ident=2)
    assert state.discarded(first, "broken", disconnect=True, now=4.0) is True
    state.slot_freed()
    assert state.discarded(second, "ping_failed", disconnect=True, now=5.0) is False
    state.slot_freed()
    assert state.disconnect_at == 4.0
    assert state.pings_failed == 1
    assert state.closed_by == {"broken": 1, "ping_failed": 1}


def test_discarded_without_disconnect_is_no_news() -> None:
    state = make_state()
    item = lend_new(state, 0.0)
    assert state.discarded(item, "invalidated", disconnect=False, now=1.0) is False
    assert not state.suspects and state.disconnect_at == -FOREVER


def test_send_to_check_and_passed_check() -> None:
    state = make_state()
    item = lend_new(state, 0.0)
    assert state.send_to_check(item) is True
    assert item in state.checking and state.to_check == [item]
    assert state.in_use() == 0
    state.to_check.clear()
    assert state.passed_check(item, 7.0) is None
    assert item.checked_at == 7.0
    assert item.calls == ["fast"]
    assert list(state.idle) == [item] and not state.checking
    other = lend_new(state, 8.0)
    state.close()
    assert state.send_to_check(other) is False  # closed: check it in, which closes it
    assert not state.checking and not state.to_check


def test_passed_check_hands_to_a_waiter_or_closes_surplus() -> None:
    state = make_state(pool_size=1, max_overflow=1)
    a, b = fill(state, 0.0)
    waiter = wait(state, 1.0)
    assert state.send_to_check(a)
    assert state.passed_check(a, 2.0) is None
    assert waiter.item is a
    state.check_in(state.woken(waiter, 2.0, 5, 1.0, 31.0))  # type: ignore[arg-type]
    assert state.send_to_check(b)
    assert state.passed_check(b, 3.0) is b  # one is idle already: surplus
    assert state.closed_by == {"overflow": 1}
    assert not state.checking


# ---------------------------------------------------------------------------- sweep


def no_orphans(entries: set[Item], not_lent: list[Item]) -> list[Item]:
    return []


def test_sweep_closes_idle_items_past_their_lifetime() -> None:
    state = make_state(max_lifetime=100.0)
    old = Item(0.0, lifetime=100.0)
    young = Item(50.0, lifetime=100.0)
    for item in (old, young):
        assert state.reserve()
        state.connected(item, item.created, item.created, False)
        state.check_in(item)
    sweep = state.sweep(99.0, no_orphans)
    assert sweep.to_close == [] and sweep.next_run == 100.0  # when the old one expires
    sweep = state.sweep(100.0, no_orphans)
    assert sweep.to_close == [(old, "lifetime")]
    assert list(state.idle) == [young]
    assert state.open == 1
    assert state.closed_by == {"lifetime": 1}
    assert sweep.next_run == 100.0 + MAX_SLEEP  # young expires at 150
    assert state.sweep(148.0, no_orphans).next_run == 150.0
    assert_books(state)


def test_sweep_idle_timeout_keeps_min_idle() -> None:
    state = make_state(pool_size=3, max_overflow=0, idle_timeout=10.0, min_idle=1)
    items = add_idle(state, 0.0, 3)  # never lent: idle since they were opened
    sweep = state.sweep(7.0, no_orphans)
    assert sweep.to_close == []
    assert sweep.next_run == 10.0  # when the first may go
    sweep = state.sweep(10.0, no_orphans)
    # The least recently returned go first, and min_idle stay.
    assert sweep.to_close == [(items[0], "idle"), (items[1], "idle")]
    assert list(state.idle) == [items[2]]
    assert state.closed_by == {"idle": 2}
    assert state.open == 1
    assert state.sweep(100.0, no_orphans).to_close == []


def test_sweep_idle_timeout_counts_from_when_it_was_first_seen_idle() -> None:
    state = make_state(idle_timeout=10.0)
    item = lend_new(state, 0.0)
    item.lent_at = 1.0  # lent after it was opened
    state.check_in(item)
    state.sweep(20.0, no_orphans)  # first seen idle now
    assert item.idle_since == 20.0
    assert state.sweep(29.0, no_orphans).to_close == []
    assert state.sweep(30.0, no_orphans).to_close == [(item, "idle")]


def test_sweep_keepalive_pings_idle_items() -> None:
    state = make_state(keepalive_interval=30.0)
    stale, recent = add_idle(state, 0.0, 2)
    recent.checked_at = 20.0
    sweep = state.sweep(29.0, no_orphans)
    assert sweep.to_ping == [] and sweep.next_run == 30.0
    sweep = state.sweep(30.0, no_orphans)
    assert sweep.to_ping == [stale]
    assert state.checking == {stale}
    assert list(state.idle) == [recent]
    assert sweep.next_run == 30.0 + MAX_SLEEP  # recent is due at 50
    assert state.passed_check(stale, 31.0) is None
    assert state.sweep(31.0, no_orphans).next_run == 36.0
    assert state.sweep(49.0, no_orphans).next_run == 50.0
    assert_books(state)


def test_sweep_picks_up_items_queued_for_a_check() -> None:
    state = make_state()
    item = lend_new(state, 0.0)
    state.send_to_check(item)
    sweep = state.sweep(1.0, no_orphans)
    assert sweep.to_ping == [item]
    assert state.to_check == [] and state.checking == {item}


def test_sweep_detects_leaks_once_per_checkout() -> None:
    state = make_state(leak_threshold=5.0)
    assert state.check_on_acquire  # leak tracking checks every checkout
    item = lend_new(state, 0.0, ident=11)
    item.thread_name = "worker-1"
    sweep = state.sweep(4.0, no_orphans)
    assert sweep.leaks == [] and sweep.next_run == 5.0
    sweep = state.sweep(5.0, no_orphans)
    assert sweep.leaks == [Holder(0.0, 11, "worker-1", None, None)]
    assert state.leaks_detected == 1
    assert item.warned_for == 0.0 and item.calls == ["slow"]
    assert state.sweep(6.0, no_orphans).leaks == []  # once per checkout
    assert state.claim(item) is True
    state.check_in(item)
    assert state.request(7.0, 12, 7.0, 37.0, FakeWaiter) is item
    assert state.sweep(11.0, no_orphans).leaks == []
    assert [h.ident for h in state.sweep(12.0, no_orphans).leaks] == [12]
    assert state.leaks_detected == 2


def test_sweep_marks_lent_items_past_their_lifetime_to_retire() -> None:
    state = make_state(max_lifetime=100.0)
    assert state.request(0.0, 1, 0.0, 30.0, FakeWaiter) is CONNECT
    item = Item(0.0, lifetime=100.0)
    state.connected(item, 0.0, 0.0, False)
    state.lend(item, 0.0, 1)
    assert state.sweep(96.0, no_orphans).next_run == 100.0
    assert not item.retire
    state.sweep(100.0, no_orphans)
    assert item.retire and item.calls == ["slow"]
    state.sweep(101.0, no_orphans)
    assert item.calls == ["slow"]  # marked once
    assert item in state.entries  # never closed while lent


def test_sweep_reclaims_orphans() -> None:
    state = make_state(pool_size=3)
    (idle,) = add_idle(state, 0.0)
    dropped = lend_new(state, 0.0, ident=5)
    kept = lend_new(state, 0.0, ident=6)
    state.send_to_check(kept)
    seen: list[tuple[set[Item], list[Item]]] = []

    def find_orphans(entries: set[Item], not_lent: list[Item]) -> list[Item]:
        seen.append((set(entries), list(not_lent)))
        return [dropped]

    sweep = state.sweep(1.0, find_orphans)
    assert seen == [({idle, dropped, kept}, [idle, kept])]
    assert sweep.orphans == [dropped]
    assert [h.ident for h in sweep.orphan_holders] == [5]
    assert dropped not in state.entries
    assert state.reclaimed == 1
    assert state.closed_by == {"leaked": 1}
    assert state.open == 3  # until the shell frees the slot
    state.slot_freed()
    assert_books(state)


def test_sweep_next_run() -> None:
    state = make_state(idle_timeout=40.0, keepalive_interval=30.0)
    assert state.sweep(0.0, no_orphans).next_run == MAX_SLEEP
    fill(state, 0.0)
    assert state.sweep(0.0, no_orphans).next_run == MAX_SLEEP  # a quarter of idle_timeout: 10
    state.resize(make_config(idle_timeout=8.0, keepalive_interval=30.0))
    assert state.sweep(0.0, no_orphans).next_run == 2.0  # lent: look within idle_timeout / 4
    state.resize(make_config(idle_timeout=None, keepalive_interval=1.5))
    assert state.sweep(0.0, no_orphans).next_run == 1.5  # ...and within keepalive_interval
    state.resize(make_config())
    assert state.sweep(0.0, no_orphans).next_run == MAX_SLEEP


def test_sweep_next_run_with_waiters() -> None:
    state = make_state()
    fill(state, 0.0)
    wait(state, 0.0)
    assert state.sweep(10.0, no_orphans).next_run == 11.0


def test_sweep_clears_suspects_once_all_are_checked() -> None:
    state = make_state()
    (idle,) = add_idle(state, 0.0)
    dead = lend_new(state, 0.0)
    state.discarded(dead, "broken", disconnect=True, now=1.0)
    state.slot_freed()
    assert state.suspects and state.check_on_acquire
    sweep = state.sweep(2.0, no_orphans)
    assert sweep.to_ping == [idle]
    assert state.suspects  # still being checked
    state.passed_check(idle, 2.5)
    state.sweep(3.0, no_orphans)
    assert not state.suspects
    assert state.check_on_acquire is False  # nothing else needs checked checkouts


def test_sweep_keeps_checked_checkouts_when_configured() -> None:
    state = make_state(pre_ping=True)
    dead = lend_new(state, 0.0)
    state.discarded(dead, "broken", disconnect=True, now=1.0)
    state.slot_freed()
    state.sweep(2.0, no_orphans)
    assert not state.suspects and state.check_on_acquire is True


# ---------------------------------------------------------------------------- plan_connect


def test_plan_connect_refills_min_idle() -> None:
    state = make_state(min_idle=2)
    assert state.plan_connect(0.0) == (CONNECT, FOREVER)
    assert state.plan_connect(0.0) == (CONNECT, FOREVER)  # the first is still connecting
    assert state.plan_connect(0.0) == (None, FOREVER)
    assert (state.open, state.connecting) == (2, 2)


def test_plan_connect_refill_backs_off() -> None:
    state = make_state(min_idle=1)
    assert state.plan_connect(0.0) == (CONNECT, FOREVER)
    state.slot_freed(connecting=True)  # on_connect raised
    assert state.refill_failed(0.0) == 10.0
    assert state.plan_connect(5.0) == (None, 10.0)
    assert state.open == 0
    assert state.plan_connect(10.0) == (CONNECT, FOREVER)


def test_plan_connect_probes_for_waiters_while_failing() -> None:
    state = make_state()
    fail(state, 0.0)
    assert state.plan_connect(1.0) == (None, FOREVER)  # nobody needs a connection
    wait(state, 1.0)
    assert state.plan_connect(1.0) == (None, 10.0)
    token, due = state.plan_connect(9.99)
    assert token is None and due == pytest.approx(10.04)  # at least 50 ms on
    assert state.plan_connect(10.0) == (PROBE, FOREVER)
    assert state.probing and state.open == 1
    token, due = state.plan_connect(10.0)
    assert token is None and due == pytest.approx(10.05)  # one probe at a time


def test_plan_connect_probes_for_min_idle_while_failing() -> None:
    state = make_state(min_idle=1)
    fail(state, 0.0)
    assert state.plan_connect(10.0) == (PROBE, FOREVER)


def test_plan_connect_nothing_when_closed_or_full() -> None:
    state = make_state(min_idle=1)
    fill(state, 0.0)
    assert state.plan_connect(0.0) == (None, FOREVER)
    state = make_state(min_idle=1)
    state.close()
    assert state.plan_connect(0.0) == (None, FOREVER)


# ---------------------------------------------------------------------------- resize


def test_resize_growing_hands_slots_to_waiters() -> None:
    state = make_state(pool_size=1, max_overflow=0)
    fill(state, 0.0)
    waiters = [wait(state, 1.0) for _ in range(3)]
    assert state.resize(make_config(pool_size=3, max_overflow=0)) == []
    assert [w.item for w in waiters] == [NEW_SLOT, NEW_SLOT, None]
    assert (state.open, state.connecting, state.max_open, state.keep) == (3, 2, 3, 3)


def test_resize_shrinking_closes_surplus_idle_least_recently_used_first() -> None:
    state = make_state(pool_size=4, max_overflow=0)
    items = add_idle(state, 0.0, 4)
    surplus = state.resize(make_config(pool_size=2, max_overflow=0))
    assert surplus == items[:2]
    assert list(state.idle) == items[2:]
    assert state.closed_by == {"resized": 2}
    assert (state.open, state.keep) == (2, 2)
    assert_books(state)


def test_resize_below_open_closes_returns_until_back_under() -> None:
    state = make_state(pool_size=2, max_overflow=2)
    lent = fill(state, 0.0)  # 4 open
    waiter = wait(state, 1.0)
    assert state.resize(make_config(pool_size=1, max_overflow=1)) == []
    assert (state.max_open, state.keep) == (2, 0)
    # Above the new maximum: returns are closed, waiters not served.
    assert state.check_in(lent[0]) is lent[0]
    assert waiter.item is None and state.keep == 0
    assert state.check_in(lent[1]) is lent[1]
    # Back at the maximum: idle connections are kept again.
    assert (state.open, state.keep) == (2, 1)
    assert state.closed_by == {"overflow": 2}
    assert state.check_in(lent[2]) is None
    assert waiter.item is lent[2]
    assert_books(state)


def test_resize_below_open_releases_freed_slots_until_back_under() -> None:
    state = make_state(pool_size=2, max_overflow=1)
    lent = fill(state, 0.0)  # 3 open
    waiter = wait(state, 1.0)
    state.resize(make_config(pool_size=1, max_overflow=0))
    state.discarded(lent[0], "broken", disconnect=False, now=2.0)
    assert state.slot_freed() is False
    assert waiter.item is None  # 2 open, the maximum is 1: not handed on
    assert (state.open, state.connecting, state.keep) == (2, 0, 0)
    state.discarded(lent[1], "broken", disconnect=False, now=2.0)
    state.slot_freed()
    assert waiter.item is None and (state.open, state.keep) == (1, 1)
    state.discarded(lent[2], "broken", disconnect=False, now=2.0)
    state.slot_freed()
    assert waiter.item is NEW_SLOT and (state.open, state.connecting) == (1, 1)
    assert_books(state)


def test_resize_keeps_zero_then_restores_when_idle_surplus_suffices() -> None:
    state = make_state(pool_size=3, max_overflow=0)
    items = add_idle(state, 0.0, 3)
    lent = state.request(0.0, 1, 0.0, 30.0, FakeWaiter)
    assert lent is items[2]
    surplus = state.resize(make_config(pool_size=1, max_overflow=0))
    # Both idle ones go: the lent one takes the only slot. Back under the maximum, keep is
    # restored (and ends the loop).
    assert surplus == items[:2]
    assert (state.open, state.keep) == (1, 1)


def test_resize_when_closed_raises() -> None:
    state = make_state()
    state.close()
    with pytest.raises(PoolClosed):
        state.resize(make_config())


# ---------------------------------------------------------------------------- close


def test_close_wakes_waiters_and_returns_idle_items() -> None:
    drained = Drained()
    state = make_state(pool_size=2, max_overflow=2, on_drained=drained)
    idle = add_idle(state, 0.0, 2)
    lent = lend_new(state, 0.0)
    queued = lend_new(state, 0.0)
    state.send_to_check(queued)  # waiting for a check
    first, items = state.close()
    assert first is True
    assert items == [*idle, queued]
    assert not state.idle and not state.to_check and not state.checking
    assert state.entries == {lent}
    assert state.closed_by == {"pool_closed": 3}
    assert (state.open, state.keep) == (1, 0)
    assert drained.calls == 0
    assert state.close() == (False, [])
    assert state.check_in(lent) is lent
    assert state.open == 0
    assert drained.calls >= 1


def test_close_hands_closed_to_every_waiter() -> None:
    state = make_state()
    fill(state, 0.0)
    waiters = [wait(state, 1.0) for _ in range(2)]
    state.close()
    assert [w.item for w in waiters] == [CLOSED, CLOSED]
    assert [w.wakes for w in waiters] == [1, 1]
    assert not state.waiters


def test_close_drains_when_the_last_slot_is_released() -> None:
    drained = Drained()
    state = make_state(on_drained=drained)
    assert state.request(0.0, 1, 0.0, 30.0, FakeWaiter) is CONNECT  # connecting
    state.close()
    assert drained.calls == 0
    state.connect_failed(OSError("down"), False, 0.0, 1.0, False)
    assert drained.calls == 1


def test_close_drains_at_once_when_nothing_is_open() -> None:
    drained = Drained()
    state = make_state(on_drained=drained)
    state.close()
    assert drained.calls == 1


def test_on_drained_is_called_once() -> None:
    drained = Drained()
    state = make_state(on_drained=drained)
    add_idle(state, 0.0)
    state.close()
    state.close()
    assert drained.calls == 1


# ---------------------------------------------------------------------------- reading


def test_stats_describe_and_in_use() -> None:
    state = make_state(pool_size=3, max_overflow=2, name="main")
    add_idle(state, 0.0, 2)
    lent = lend_new(state, 0.0, ident=1)
    other = lend_new(state, 0.0, ident=2)
    state.send_to_check(other)
    assert state.reserve()  # connecting
    assert state.in_use() == 1
    stats = state.stats()
    assert stats.name == "main"
    assert (stats.pool_size, stats.max_overflow, stats.min_idle) == (3, 2, 0)
    assert (stats.open, stats.idle, stats.in_use, stats.connecting, stats.checking) == (
        5,
        2,
        1,
        1,
        1,
    )
    assert (stats.waiting, stats.acquired, stats.created) == (0, 2, 4)
    assert state.describe() == (
        "pool_size=3, max_overflow=2, open=5, in_use=1, idle=2, connecting=1, checking=1, waiting=0"
    )
    assert state.holders() == [Holder(0.0, 1, None, None, None)]
    assert list(state.lent()) == [lent]
    lent.label, lent.label_for = "GET /x", 0.0
    assert state.holders()[0].label == "GET /x"
    lent.label_for = -1.0  # a label of an earlier checkout
    assert state.holders()[0].label is None
    state.count_closed("broken")
    stats = state.stats()
    assert stats.closed == 1 and stats.closed_by_reason == {"broken": 1}
    assert stats.closed_by_reason is not state.closed_by  # a copy


def test_tokens() -> None:
    assert repr(NEW_SLOT) == "NEW_SLOT" and repr(CLOSED) == "CLOSED"
    assert repr(CONNECT) == "CONNECT" and repr(PROBE) == "PROBE"
    error = ValueError("x")
    refusal = Refusal(error)
    assert isinstance(refusal, Token) and refusal.error is error and repr(refusal) == "REFUSAL"


# ---------------------------------------------------------------------------- state machine


@dataclasses.dataclass(eq=False)
class Slot:
    """A slot reserved by ``request``, ``plan_connect``, ``reserve`` or handed to a waiter,
    not connected in yet. ``owner``: who carries the attempt out (a caller lends the item,
    maintenance and warm-up check it in)."""

    owner: str
    probe: bool
    started: float
    ident: int = 0


@dataclasses.dataclass(eq=False)
class Caller:
    """A caller that got a waiter from ``request``."""

    waiter: FakeWaiter
    ident: int
    start: float
    deadline: float


#: Places of the model where an item is not lent in the state's eyes.
_NOT_LENT = ("idle", "to_check", "pinging", "closed")


def config_options(config: PoolConfig) -> dict[str, Any]:
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}


class PoolStateMachine(RuleBasedStateMachine):
    """Random sequences of what the threaded shell does, checked against the rules.

    The model knows where each item is: ``idle``, ``to_check`` (queued for a check),
    ``pinging`` (taken by a sweep), ``lent`` (to a caller), ``dropped`` (lent, its handle
    garbage-collected), ``fresh`` (connected, not yet lent or checked in), ``handed`` (given
    to a waiter not yet woken) or ``closed``. ``returning`` marks an item while it is being
    checked in. As in ``pool.py``, a reserved slot (:class:`Slot`, or ``NEW_SLOT`` in a
    waiter's hands) counts in ``open`` and ``connecting`` until ``connected()``,
    ``connect_failed()`` or ``slot_freed(connecting=True)``; the rules that carry out several
    calls (a discard and its ``slot_freed``, a sweep and the orphans' slots) make them in one
    step, so the invariants hold between steps.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.where: dict[Item, str] = {}
        self.holder: dict[Item, int] = {}
        self.fresh: list[tuple[Item, Slot]] = []
        self.slots: list[Slot] = []
        self.queued: list[Caller] = []
        self.handed: list[Caller] = []
        self.departed: list[tuple[FakeWaiter, int]] = []
        self.warned: set[tuple[Item, float]] = set()
        self.checkouts: dict[Item, list[float]] = {}
        self.idents = 0
        self.lends = 0
        self.prev_acquired = 0
        self.above_max = False
        self.prev_open = 0
        self.drained = Drained()

    # -------------------------------------------------------------- helpers

    def ident(self) -> int:
        self.idents += 1
        return self.idents

    def in_place(self, place: str) -> list[Item]:
        return [item for item, where in self.where.items() if where == place]

    def move(self, item: Item, old: str | tuple[str, ...], new: str) -> None:
        olds = (old,) if isinstance(old, str) else old
        assert self.where[item] in olds, (item, self.where[item], olds)
        self.where[item] = new

    def sync(self) -> None:
        """Waiters the state handed something: first come, first served."""
        handed = [caller for caller in self.queued if caller.waiter.item is not None]
        assert self.queued[: len(handed)] == handed, "served out of order"
        for caller in handed:
            waiter = caller.waiter
            assert waiter.wakes == 1
            if waiter.item is not CLOSED:  # an item or a slot: only while under the maximum
                assert self.state.open <= self.state.max_open
            if isinstance(waiter.item, Refusal):  # only while nothing is open
                assert not self.state.entries
            self.queued.remove(caller)
            self.handed.append(caller)
            if isinstance(waiter.item, Item):
                self.move(waiter.item, "returning", "handed")
            else:
                assert (
                    waiter.item is NEW_SLOT
                    or waiter.item is CLOSED
                    or isinstance(waiter.item, Refusal)
                )
        for caller in self.queued:
            assert caller.waiter.wakes == 0

    def placed(self, item: Item, surplus: Item | None) -> None:
        """``item`` was checked in (``where`` is ``returning``): see where it went."""
        assert self.where[item] == "returning"
        if surplus is not None:
            assert surplus is item
            assert item not in self.state.entries
            self.where[item] = "closed"
        elif item in self.state.idle:
            self.where[item] = "idle"
        self.sync()  # a waiter got it otherwise
        assert self.where[item] != "returning"

    def check_in(self, item: Item, **kwargs: bool) -> None:
        self.where[item] = "returning"
        self.placed(item, self.state.check_in(item, **kwargs))

    def depart(self, caller: Caller) -> None:
        if caller in self.queued:
            self.queued.remove(caller)
        if caller in self.handed:
            self.handed.remove(caller)
        assert caller.waiter not in self.state.waiters
        assert caller.waiter.item is None
        self.departed.append((caller.waiter, caller.waiter.wakes))

    def free_slot(self, **kwargs: bool) -> bool:
        reconnect = self.state.slot_freed(**kwargs)
        self.sync()
        return reconnect

    def discard(self, item: Item, reason: str, *, disconnect: bool) -> None:
        """The shell's ``_discard``: off the books, then the slot is freed."""
        state, now = self.state, self.now
        news = disconnect and item.checked_at >= state.disconnect_at
        slow = {other: other.calls.count("slow") for other in state.lent()}
        pings_failed = state.pings_failed
        assert state.discarded(item, reason, disconnect=disconnect, now=now) == news
        assert state.pings_failed == pings_failed + (reason == "ping_failed")
        self.move(item, ("lent", "pinging"), "closed")
        assert item not in state.entries and item not in state.checking
        if news:  # idle ones opened before now go to maintenance; lent ones are checked later
            assert state.disconnect_at == now and state.suspects and state.check_on_acquire
            for other in self.in_place("idle"):
                if other.checked_at < now:
                    self.move(other, "idle", "to_check")
            for other, count in slow.items():
                if other is not item and other.checked_at < now:
                    assert other.calls.count("slow") == count + 1
        self.free_slot()

    def lend(self, item: Item, ident: int) -> None:
        self.checkouts.setdefault(item, []).append(self.now)
        self.holder[item] = ident
        self.lends += 1
        assert (item.lent_at, item.holder) == (self.now, ident)

    # -------------------------------------------------------------- rules

    @initialize(
        pool_size=st.integers(1, 3),
        max_overflow=st.integers(0, 2),
        max_waiting=st.sampled_from([0, 0, 1, 3]),
        min_idle=st.integers(0, 3),
        max_lifetime=st.sampled_from([None, 40.0, 200.0]),
        idle_timeout=st.sampled_from([None, 20.0]),
        keepalive=st.sampled_from([None, 15.0]),
        leak_threshold=st.sampled_from([None, 10.0]),
        overflow_idle_timeout=st.sampled_from([0.0, 3.0]),
        lifo=st.booleans(),
        pre_ping=st.booleans(),
        warm=st.integers(0, 4),
        lent=st.integers(0, 5),
    )
    def setup(
        self,
        pool_size: int,
        max_overflow: int,
        max_waiting: int,
        min_idle: int,
        max_lifetime: float | None,
        idle_timeout: float | None,
        keepalive: float | None,
        leak_threshold: float | None,
        overflow_idle_timeout: float,
        lifo: bool,
        pre_ping: bool,
        warm: int,
        lent: int,
    ) -> None:
        config = PoolConfig.from_options(
            {
                "pool_size": pool_size,
                "max_overflow": max_overflow,
                "max_waiting": max_waiting,
                "min_idle": min(min_idle, pool_size),
                "max_lifetime": max_lifetime,
                "idle_timeout": idle_timeout,
                "keepalive_interval": keepalive,
                "leak_threshold": leak_threshold,
                "overflow_idle_timeout": overflow_idle_timeout,
                "lifo": lifo,
                "pre_ping": pre_ping,
            }
        )
        # A recovery step shorter than the back-off (10 s per failure) and than most time
        # steps: the fast-recovery path is taken, deterministically.
        self.state: PoolState[Item] = PoolState(
            config,
            target="db://test",
            backoff=backoff,
            recovery=lambda: 0.4,
            on_drained=self.drained,
        )
        # Start from a pool in use: some idle (warmed up), some lent.
        for _ in range(warm):
            self.reserve("warm_up")
        while self.slots:
            self.connect(0, "ok")
        for _ in range(lent):
            self.request(30.0, connect=True)

    @rule(dt=st.sampled_from([0.5, 1.0, 5.0, 10.0, 30.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(timeout=st.sampled_from([0.0, 1.0, 5.0, 30.0]), connect=st.booleans())
    def request(self, timeout: float, connect: bool) -> None:
        """A caller asks (``connect``: if given a slot, it connects in it at once)."""
        state, now = self.state, self.now
        ident = self.ident()
        idle_before = list(state.idle)
        waiting_before = len(state.waiters)
        open_before = state.open
        lent_before = open_before - state.connecting - len(state.checking) - len(idle_before)
        failing = state.connect_failures
        timeouts = state.timeouts
        made: list[FakeWaiter] = []

        def new_waiter() -> FakeWaiter:
            made.append(FakeWaiter())
            return made[-1]

        if state.closed:
            with pytest.raises(PoolClosed):
                state.request(now, ident, now, now + timeout, new_waiter)
            return
        try:
            got = state.request(now, ident, now, now + timeout, new_waiter)
        except TooManyWaiters:
            free = state.max_open - state.open if not failing else 0
            assert 0 < state.config.max_waiting <= waiting_before - free
            assert not made
            return
        if isinstance(got, Item):
            assert got in idle_before and not waiting_before
            self.move(got, "idle", "lent")
            self.lend(got, ident)
        elif got is CONNECT or got is PROBE:
            assert open_before < state.max_open
            assert (got is PROBE) == bool(failing)
            if not failing:  # nothing lent could come back to it first, or it will not wait
                assert not waiting_before
                assert lent_before == 0 or timeout == 0.0 or state.connect_estimate == 0.0
            self.slots.append(Slot("caller", got is PROBE, now, ident))
            if connect:
                self.connect(len(self.slots) - 1, "ok")
        elif isinstance(got, Refusal):
            assert state.rejection is not None and got.error is state.rejection
            assert not state.entries
        elif isinstance(got, TimeoutReport):
            assert timeout == 0.0
            assert state.timeouts == timeouts + 1
            (waiter,) = made
            assert waiter not in state.waiters
            self.departed.append((waiter, 0))
        else:
            assert isinstance(got, FakeWaiter) and made == [got]
            assert not idle_before or waiting_before
            if not failing:  # queued behind others, every slot taken, or some lent
                assert waiting_before or open_before >= state.max_open or lent_before > 0
                # Below the maximum it waits only a while for a lent one to come back.
                assert (got.connect_at == FOREVER) == (open_before >= state.max_open)
                if got.connect_at < FOREVER:
                    assert now <= got.connect_at <= now + timeout / 2
            self.queued.append(Caller(got, ident, now, now + timeout))
            assert list(state.waiters)[-1] is got

    @rule(how=st.sampled_from(["plan_connect", "plan_connect", "warm_up"]))
    def reserve(self, how: str) -> None:
        """Maintenance's plan_connect, or warm_up's reserve(pool_size)."""
        state = self.state
        if how == "warm_up":
            if state.closed:
                with pytest.raises(PoolClosed):
                    state.reserve(state.config.pool_size)
            elif state.reserve(state.config.pool_size):
                self.slots.append(Slot("warm_up", False, self.now))
            return
        token, due = state.plan_connect(self.now)
        if state.closed:
            assert token is None
        if token is None:
            assert due > self.now
        else:
            assert due == FOREVER
            if token is CONNECT:  # a refill: not before its back-off
                assert self.now >= state.refill_at and not state.connect_failures
            self.slots.append(Slot("maintenance", token is PROBE, self.now))

    @precondition(lambda self: self.slots)
    @rule(
        index=st.integers(0, 10),
        outcome=st.sampled_from(
            ["ok", "ok", "ok", "ok_pending", "fail", "fail", "rejected", "raised"]
        ),
    )
    def connect(self, index: int, outcome: str) -> None:
        """A reserved slot's attempt ends: connected (and lent or checked in at once, or
        later: ``ok_pending``), failed (``rejected``: the login refused for good), or
        on_connect raised / the caller was interrupted."""
        state = self.state
        slot = self.slots.pop(index % len(self.slots))
        if outcome in ("ok", "ok_pending"):
            item = Item(self.now, lifetime=state.config.max_lifetime, name=f"c{len(self.where)}")
            self.where[item] = "fresh"
            failures = state.connect_failures
            # Every connect takes 0.4 s at least, so that callers below the maximum wait a
            # while (PoolState.patience) and the model reaches the end of that wait.
            started = min(slot.started, self.now - 0.4)
            assert state.connected(item, started, self.now, slot.probe) == failures
            assert not state.connect_failures and state.rejection is None
            self.fresh.append((item, slot))
            self.sync()  # a recovery gives waiters slots
            if outcome == "ok":
                self.finish_connect(len(self.fresh) - 1)
        elif outcome == "raised":
            self.free_slot(connecting=True, probe=slot.probe)
            if slot.owner == "maintenance":
                assert state.refill_failed(self.now) > 0
        else:
            rejected = outcome == "rejected"
            error = PermissionError("rejected") if rejected else OSError("unreachable")
            before = state.connect_failures
            failures, delay = state.connect_failed(
                error, rejected, slot.started, self.now, slot.probe
            )
            assert failures in (before, before + 1) and failures >= 1
            assert delay >= 0.0
            assert state.rejection is (error if rejected else None)
            self.sync()
            if rejected and not state.entries:
                assert not state.waiters  # refused at once

    @precondition(lambda self: self.fresh)
    @rule(index=st.integers(0, 10))
    def finish_connect(self, index: int) -> None:
        """After connect: a caller lends the item, maintenance and warm_up check it in."""
        state = self.state
        item, slot = self.fresh.pop(index % len(self.fresh))
        if slot.owner == "caller":
            if not state.closed:
                assert state.lend(item, self.now, slot.ident) is item
                self.move(item, "fresh", "lent")
                self.lend(item, slot.ident)
            else:
                state.forget(item, "pool_closed")
                self.move(item, "fresh", "closed")
        else:
            if slot.owner == "maintenance":
                state.refill_failures = 0
            self.move(item, "fresh", "returning")
            self.placed(item, state.check_in(item))

    @precondition(lambda self: self.holder)
    @rule(
        index=st.integers(0, 10),
        how=st.sampled_from(["ok", "ok", "ok", "broken", "invalidated", "ping_failed", "drop"]),
    )
    def release(self, index: int, how: str) -> None:
        """The holder returns its item (or it is discarded, or its handle dropped)."""
        state = self.state
        items = list(self.holder)
        item = items[index % len(items)]
        del self.holder[item]
        if how == "drop":  # garbage-collected: a sweep's find_orphans reports it
            self.move(item, "lent", "dropped")
            return
        reported = state.claim(item)
        if self.checkouts[item].count(item.lent_at) == 1:
            # (Checkouts are told apart by lent_at: see test_claim_at_an_unchanged_clock.)
            assert reported == ((item, item.lent_at) in self.warned)
        if how == "ok" and not item.retire:
            if state.suspect(item) and state.send_to_check(item):
                self.move(item, "lent", "to_check")
            else:
                self.move(item, "lent", "returning")
                self.placed(item, state.check_in(item, fast=True))
            return
        reason = (item.retire or "lifetime") if how == "ok" else how
        self.discard(item, reason, disconnect=how in ("broken", "ping_failed"))

    @precondition(lambda self: self.queued or self.handed)
    @rule(index=st.integers(0, 10), interrupt=st.booleans())
    def wake(self, index: int, interrupt: bool) -> None:
        state, now = self.state, self.now
        callers = self.queued + self.handed
        caller = callers[index % len(callers)]
        waiter = caller.waiter
        handed = waiter.item
        due = state.reconnect_due(now)
        connect_due = handed is None and now < caller.deadline and state.connect_due(waiter, now)
        acquired = state.acquired
        open_before = state.open
        got = state.woken(waiter, now, caller.ident, now - caller.start, caller.deadline)
        if got is None:
            assert handed is None and now < caller.deadline and not due and not connect_due
            assert caller in self.queued and waiter in state.waiters
            return
        if isinstance(got, TimeoutReport):
            assert handed is None and now >= caller.deadline
        elif got is CONNECT:
            assert handed is None and due  # leaves the queue to try; asks again later
        elif isinstance(got, Item):
            assert got is handed
            assert state.acquired == acquired + 1
            self.move(got, "handed", "lent")
            self.lend(got, caller.ident)
            if interrupt:  # before the handle was made: the shell gives the item back
                assert state.abandon(waiter) is got
                del self.holder[got]
                self.move(got, "lent", "returning")
                self.placed(got, state.check_in(got))
            else:
                waiter.item = None
        elif got is NEW_SLOT:
            if handed is None:  # its patience ran out: a slot of its own, off the queue
                assert connect_due and not due and waiter not in state.waiters
                assert state.open == open_before + 1 <= state.max_open
                self.queued.remove(caller)  # as if handed the slot
                self.handed.append(caller)
            else:
                assert handed is NEW_SLOT
            if interrupt:
                assert state.abandon(waiter) is NEW_SLOT
                self.free_slot(connecting=True)
            else:
                waiter.item = None  # the caller connects in the slot
                self.slots.append(Slot("caller", False, now, caller.ident))
        else:
            assert got is handed and (got is CLOSED or isinstance(got, Refusal))
            assert state.abandon(waiter) is got  # the shell raises, and gives up the wait
        self.depart(caller)

    @precondition(lambda self: self.queued or self.handed)
    @rule(index=st.integers(0, 10))
    def abandon(self, index: int) -> None:
        state = self.state
        callers = self.queued + self.handed
        caller = callers[index % len(callers)]
        was_queued = caller in self.queued
        handed = caller.waiter.item
        got = state.abandon(caller.waiter)
        assert got is handed
        if was_queued:
            assert got is None
        elif isinstance(got, Item):
            self.move(got, "handed", "returning")
            self.placed(got, state.check_in(got))
        elif got is NEW_SLOT:
            self.free_slot(connecting=True)
        self.depart(caller)

    @precondition(lambda self: not self.state.closed and self.state.entries)
    @rule(dt=st.sampled_from([0.0, 1.0, 5.0, 12.0, 30.0]))
    def sweep(self, dt: float) -> None:
        state = self.state
        self.now += dt
        now = self.now
        config = state.config
        idle_before = list(state.idle)
        lent_before = [item for item in state.entries if self.where[item] not in _NOT_LENT]
        warned_before = {item: item.warned_for for item in lent_before}
        leaks_detected = state.leaks_detected
        calls: list[tuple[set[Item], list[Item]]] = []

        def find_orphans(entries: set[Item], not_lent: list[Item]) -> list[Item]:
            calls.append((entries, not_lent))
            assert entries is state.entries
            assert sorted(map(id, not_lent)) == sorted(map(id, [*state.idle, *state.checking]))
            return [item for item in self.in_place("dropped") if item in entries]

        sweep = state.sweep(now, find_orphans)
        assert len(calls) == 1
        for item in sweep.orphans:
            self.move(item, "dropped", "closed")
            assert item not in state.entries
        assert len(sweep.orphan_holders) == len(sweep.orphans)
        for _ in sweep.orphans:  # the shell closes them and frees their slots
            self.free_slot()
        closed = [item for item, _ in sweep.to_close]
        assert closed == [item for item in idle_before if item in closed]  # oldest first
        for item, reason in sweep.to_close:
            self.move(item, "idle", "closed")
            if reason == "lifetime":
                assert item.expires_at <= now
            elif reason == "overflow":
                assert config.overflow_idle_timeout > 0
                assert now - item.idle_since >= config.overflow_idle_timeout
            else:
                assert reason == "idle" and config.idle_timeout is not None
                assert now - item.idle_since >= config.idle_timeout
        if any(r in ("idle", "overflow") for _, r in sweep.to_close):
            assert len(state.idle) >= config.min_idle
        if any(r == "overflow" for _, r in sweep.to_close):
            assert state.open >= config.pool_size  # only overflow items go for that
        for item in sweep.to_ping:
            self.move(item, ("to_check", "idle"), "pinging")
        assert not state.to_check
        # What stays idle needs nothing.
        for item in state.idle:
            assert item.expires_at > now and not state.suspect(item)
            if config.keepalive_interval is not None:
                assert now - max(item.lent_at, item.checked_at) < config.keepalive_interval
        # Leaks: once per checkout.
        new_leaks = [
            item
            for item in lent_before
            if item in state.entries
            and warned_before[item] != item.lent_at
            and item.warned_for == item.lent_at
        ]
        assert len(sweep.leaks) == len(new_leaks) == state.leaks_detected - leaks_detected
        for item in new_leaks:
            assert config.leak_threshold is not None
            assert now - item.lent_at >= config.leak_threshold
            assert (item, item.lent_at) not in self.warned
            self.warned.add((item, item.lent_at))
            assert "slow" in item.calls
        for item in state.lent():
            if item.expires_at <= now:
                assert item.retire
        assert now < sweep.next_run <= now + MAX_SLEEP
        if state.waiters:
            assert sweep.next_run <= now + 1.0
        if not any(state.suspect(item) for item in state.entries):
            assert not state.suspects
        self.sync()

    @precondition(lambda self: self.in_place("pinging"))
    @rule(index=st.integers(0, 10), outcome=st.sampled_from(["ok", "ok", "fail", "interrupted"]))
    def ping(self, index: int, outcome: str) -> None:
        state = self.state
        pinging = self.in_place("pinging")
        item = pinging[index % len(pinging)]
        if outcome == "ok":
            self.move(item, "pinging", "returning")
            self.placed(item, state.passed_check(item, self.now))
            assert item.checked_at == self.now
        elif outcome == "fail":
            self.discard(item, "ping_failed", disconnect=True)
        elif state.send_to_check(item):  # the run was interrupted: the next run checks it
            self.move(item, "pinging", "to_check")
        else:
            self.move(item, "pinging", "returning")
            self.placed(item, state.check_in(item))

    @rule(pool_size=st.integers(1, 3), max_overflow=st.integers(0, 2), chance=st.integers(0, 3))
    def resize(self, pool_size: int, max_overflow: int, chance: int) -> None:
        if chance != 3:  # now and then
            return
        state = self.state
        options = config_options(state.config)
        options.update(pool_size=max(pool_size, options["min_idle"]), max_overflow=max_overflow)
        config = PoolConfig.from_options(options)
        if state.closed:
            with pytest.raises(PoolClosed):
                state.resize(config)
            return
        idle_before = list(state.idle)
        surplus = state.resize(config)
        assert state.max_open == config.max_open
        assert surplus == idle_before[: len(surplus)]  # least recently used first
        for item in surplus:
            self.move(item, "idle", "closed")
        self.sync()
        if state.open > state.max_open:
            assert state.keep == 0
            self.above_max = True
        else:
            assert state.keep == expected_keep(config)

    @rule(chance=st.integers(0, 5))
    def drain(self, chance: int) -> None:
        """Retire everything open now (a failover): idle and queued ones closed at once,
        the rest marked, and the freed slots handed to waiters."""
        if chance != 5 or self.state.closed:  # now and then; Pool.drain refuses a closed pool
            return
        state = self.state
        now_idle = set(self.in_place("idle")) | set(self.in_place("to_check"))
        drained = state.closed_by.get("drained", 0)
        to_close, marked = state.drain(self.now)
        assert set(to_close) == now_idle and len(to_close) == len(now_idle)
        for item in to_close:
            self.move(item, ("idle", "to_check"), "closed")
        assert state.closed_by.get("drained", 0) == drained + len(to_close)
        assert all(item.retire for item in state.entries)
        assert marked <= len(state.entries)
        self.sync()

    @rule(chance=st.integers(0, 7))
    def close(self, chance: int) -> None:
        if chance != 7:  # rarely: a closed pool has little left to do
            return
        state = self.state
        was_closed = state.closed
        queued = list(self.queued)
        first, items = state.close()
        assert first is not was_closed
        for item in items:
            self.move(item, ("idle", "to_check"), "closed")
        self.sync()
        assert all(caller.waiter.item is CLOSED for caller in queued)
        assert not state.idle and not state.waiters and state.keep == 0

    # -------------------------------------------------------------- invariants

    @invariant()
    def books_balance(self) -> None:
        state = self.state
        assert state.open == len(state.entries) + state.connecting
        new_slots = sum(1 for caller in self.handed if caller.waiter.item is NEW_SLOT)
        assert state.connecting == len(self.slots) + new_slots
        assert state.in_use() >= 0
        assert sum(state.closed_by.values()) == state.closed_count
        assert state.closed_count == len(self.in_place("closed"))
        assert state.created == len(self.where)

    @invariant()
    def waiters_only_while_nothing_is_idle(self) -> None:
        state = self.state
        assert list(state.waiters) == [caller.waiter for caller in self.queued]
        assert not (state.waiters and state.idle)
        if state.waiters and not state.connect_failures:
            # Not failing: a queued caller waits for something lent, being opened or being
            # checked (never on an empty pool); below the maximum, the pool grows for it.
            assert state.open > 0
            if state.open < state.max_open:
                # ...and each will connect once its patience runs out: none is stuck with
                # a free slot.
                assert all(waiter.connect_at < FOREVER for waiter in state.waiters)

    @invariant()
    def never_above_max_open_but_after_a_shrink(self) -> None:
        state = self.state
        if state.open > state.max_open:
            assert self.above_max and state.keep == 0
            assert state.open <= self.prev_open  # only goes down until back under
        else:
            self.above_max = False
            if not state.closed:  # back under: idle ones are kept again
                assert state.keep == expected_keep(state.config)
        self.prev_open = state.open

    @invariant()
    def each_item_in_one_place(self) -> None:
        state = self.state
        assert "returning" not in self.where.values()
        assert len(state.idle) == len(set(state.idle))
        assert set(state.idle) == set(self.in_place("idle"))
        assert len(state.to_check) == len(set(state.to_check))
        assert set(state.to_check) == set(self.in_place("to_check"))
        assert state.checking == {*self.in_place("to_check"), *self.in_place("pinging")}
        assert state.entries == {item for item, where in self.where.items() if where != "closed"}
        assert set(self.holder) == set(self.in_place("lent"))
        for item, ident in self.holder.items():
            assert item.holder == ident
        assert {item for item, _ in self.fresh} == set(self.in_place("fresh"))
        handed = [c.waiter.item for c in self.handed if isinstance(c.waiter.item, Item)]
        assert len(handed) == len(set(handed))
        assert set(handed) == set(self.in_place("handed"))

    @invariant()
    def departed_waiters_get_nothing(self) -> None:
        for waiter, wakes in self.departed:
            assert waiter.item is None and waiter.wakes == wakes

    @invariant()
    def acquired_never_decreases(self) -> None:
        state = self.state
        assert state.acquired == self.lends >= self.prev_acquired
        self.prev_acquired = state.acquired

    @invariant()
    def one_probe_at_a_time(self) -> None:
        state = self.state
        probes = sum(1 for slot in self.slots if slot.probe)
        assert probes <= 1
        assert state.probing == (probes == 1)
        if state.rejection is not None:
            assert state.connect_failures

    @invariant()
    def closed_pool(self) -> None:
        state = self.state
        if state.closed:
            assert state.keep == 0 and not state.waiters and not state.idle
            assert not state.to_check
            if state.open == 0:
                assert self.drained.calls >= 1
        else:
            assert self.drained.calls == 0

    @invariant()
    def stats_agree(self) -> None:
        state = self.state
        stats = state.stats()
        assert (stats.open, stats.idle, stats.connecting, stats.checking, stats.waiting) == (
            state.open,
            len(state.idle),
            state.connecting,
            len(state.checking),
            len(state.waiters),
        )
        assert stats.in_use == len(state.entries) - len(state.idle) - len(state.checking)


PoolStateMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None
)
TestPoolStateMachine = PoolStateMachine.TestCase


def test_wait_step_does_not_poll_when_no_attempt_can_be_made() -> None:
    """Failing, retry due, no probe, but every slot taken: nobody can try, so waiters look
    again at the normal pace instead of every 10 ms."""
    state = make_state(pool_size=1, max_overflow=0)
    lend_new(state, 0.0)
    fail_time = 1.0
    assert state.reserve(limit=2)  # a slot above the maximum, for a failed attempt
    state.connect_failed(RuntimeError("down"), False, fail_time, fail_time, False)
    assert state.open == state.max_open and state.connect_failures == 1
    assert state.wait_step(fail_time + 20.0, fail_time + 30.0) == 1.0


def test_an_observer_raising_on_wait_finds_the_books_done() -> None:
    state = make_state(pool_size=1, max_overflow=0)
    held = lend_new(state, 0.0)
    waiter = state.request(1.0, 2, 1.0, 30.0, FakeWaiter)
    assert isinstance(waiter, FakeWaiter)
    state.check_in(held)  # handed to the waiter

    def observer(event: str, seconds: float) -> None:
        raise RuntimeError(event)

    state.observers = (observer,)
    with pytest.raises(RuntimeError, match="wait"):
        state.woken(waiter, 2.0, 2, 1.0, 30.0)
    assert state.acquired == 2 and state.waits == 1  # lent and counted before the observer
    assert held.holder == 2 and held.lent_at == 2.0


def test_no_leak_reported_for_an_item_handed_to_a_waiter_not_yet_awake() -> None:
    """Between the hand-off and the waiter's wake-up nobody holds the item: the previous
    holder's stamp must not read as a leak, and the new checkout is watched as usual."""
    state = make_state(pool_size=1, max_overflow=0, leak_threshold=5.0)
    held = lend_new(state, 0.0)
    waiter = state.request(1.0, 2, 1.0, 300.0, FakeWaiter)
    assert isinstance(waiter, FakeWaiter)
    assert state.check_in(held) is None and waiter.item is held
    assert state.sweep(100.0, lambda entries, not_lent: []).leaks == []
    assert state.woken(waiter, 100.0, 2, 99.0, 300.0) is held
    leaks = state.sweep(106.0, lambda entries, not_lent: []).leaks
    assert [(leak.ident, leak.lent_at) for leak in leaks] == [(2, 100.0)]


# ---------------------------------------------------------------- overflow_idle_timeout


def test_overflow_items_stay_idle_on_return_with_a_grace_period() -> None:
    state = make_state(pool_size=1, max_overflow=2, overflow_idle_timeout=3.0)
    items = [lend_new(state, 0.0, ident) for ident in (1, 2, 3)]
    for item in items:
        assert state.check_in(item) is None  # none closed on return
    assert (len(state.idle), state.open, state.closed_count) == (3, 3, 0)
    assert state.keep == state.max_open == 3
    # Reused while demand lasts: no new connection needed.
    assert state.request(1.0, 4, 1.0, 30.0, FakeWaiter) in items


def test_sweep_closes_overflow_items_idle_for_the_grace_period() -> None:
    state = make_state(pool_size=1, max_overflow=3, overflow_idle_timeout=3.0, min_idle=1)
    a, b, c, d = (lend_new(state, 0.0, ident) for ident in (1, 2, 3, 4))
    for item in (a, b, c):
        state.check_in(item)  # d stays lent
    first = state.sweep(1.0, no_orphans)  # first seen idle at 1.0
    assert first.to_close == []
    assert first.next_run == 2.5  # within half the grace while overflow items are open
    assert state.sweep(2.0, no_orphans).next_run == 3.0
    swept = state.sweep(4.0, no_orphans)
    # Open 4 for pool_size 1: 3 above it, all idle long enough, but min_idle keeps 1 idle.
    assert swept.to_close == [(a, "overflow"), (b, "overflow")]  # least recently returned
    assert list(state.idle) == [c] and state.open == 2
    assert state.closed_by == {"overflow": 2}
    state.check_in(d)
    swept = state.sweep(5.0, no_orphans)  # d first seen idle; c idle for 4 s
    assert swept.to_close == [(c, "overflow")]  # down to pool_size, never below
    assert list(state.idle) == [d] and state.open == 1
    assert state.sweep(20.0, no_orphans).to_close == []


def test_resize_closes_idle_beyond_the_new_pool_size_at_once_despite_the_grace() -> None:
    state = make_state(pool_size=3, max_overflow=1, overflow_idle_timeout=3.0)
    items = [lend_new(state, 0.0, ident) for ident in (1, 2, 3, 4)]
    for item in items:
        state.check_in(item)
    surplus = state.resize(make_config(pool_size=1, max_overflow=3, overflow_idle_timeout=3.0))
    assert surplus == items[:3] and list(state.idle) == items[3:]
    assert state.keep == 4


def test_returns_to_a_closed_pool_are_closed_despite_the_grace() -> None:
    state = make_state(pool_size=1, max_overflow=1, overflow_idle_timeout=3.0)
    held = lend_new(state, 0.0)
    state.close()
    assert state.check_in(held) is held and state.closed_by == {"pool_closed": 1}



# ---------------------------------------------------------------------------- patience


def lend_timed(state: PoolState[Item], started: float, now: float, ident: int = 1) -> Item:
    """An item whose connect took ``now - started``, lent."""
    assert state.reserve()
    item = Item(now)
    state.connected(item, started, now, False)
    return state.lend(item, now, ident)


def test_a_cold_pool_caller_connects_itself() -> None:
    """Nothing lent could come back to it: it connects (and gets any error itself)."""
    state = make_state()
    assert state.request(0.0, 1, 0.0, 30.0, FakeWaiter) is CONNECT


def test_below_the_maximum_a_caller_waits_half_a_connect_for_a_returned_item() -> None:
    state = make_state()  # max_open 3
    lent = lend_timed(state, 0.0, 0.2)  # connecting took 0.2 s
    waiter = wait(state, 1.0)
    assert waiter.connect_at == pytest.approx(1.1)  # PATIENCE (0.5) x 0.2 s
    assert state.open == 1 and list(state.waiters) == [waiter]
    assert state.wait_step(1.0, 31.0, waiter.connect_at) == pytest.approx(0.1)
    assert state.woken(waiter, 1.05, 2, 0.05, 31.0) is None
    # It comes back in time: the waiter takes it, no connect.
    assert state.check_in(lent) is None
    assert waiter.item is lent
    assert state.woken(waiter, 1.06, 2, 0.06, 31.0) is lent
    assert state.open == 1 and state.connecting == 0


def test_when_nothing_comes_back_in_time_the_waiter_connects_in_a_slot_of_its_own() -> None:
    state = make_state()
    lend_timed(state, 0.0, 0.2)
    waiter = wait(state, 1.0)
    assert state.woken(waiter, 1.1, 2, 0.1, 31.0) is NEW_SLOT
    assert waiter.item is NEW_SLOT  # as if handed: an interrupt gives the slot back
    assert not state.waiters and (state.open, state.connecting) == (2, 1)
    assert state.waits == 1  # it did wait
    assert state.abandon(waiter) is NEW_SLOT


def test_patience_is_at_most_half_the_time_left() -> None:
    state = make_state()
    lend_timed(state, 0.0, 10.0)  # a very slow connect
    waiter = wait(state, 20.0, timeout=4.0)
    assert waiter.connect_at == pytest.approx(22.0)


def test_timeout_zero_connects_at_once_while_items_are_lent() -> None:
    state = make_state()
    lend_timed(state, 0.0, 0.2)
    assert state.request(1.0, 2, 1.0, 1.0, FakeWaiter) is CONNECT


def test_a_full_pool_waiter_never_connects_on_its_own() -> None:
    state = make_state(pool_size=1, max_overflow=0)
    lend_timed(state, 0.0, 0.2)
    waiter = wait(state, 1.0)
    assert waiter.connect_at == FOREVER
    assert state.wait_step(1.0, 31.0, waiter.connect_at) == 1.0
    assert state.woken(waiter, 5.0, 2, 4.0, 31.0) is None


def test_a_patient_waiter_waits_on_once_the_pool_filled_up() -> None:
    state = make_state()  # max_open 3
    lend_timed(state, 0.0, 0.2)
    waiter = wait(state, 1.0)
    lend_timed(state, 1.0, 1.0, ident=2)
    lend_timed(state, 1.0, 1.0, ident=3)  # others connected meanwhile: every slot taken
    assert not state.connect_due(waiter, 2.0)
    assert state.wait_step(2.0, 31.0, waiter.connect_at) == 1.0  # no busy loop
    assert state.woken(waiter, 2.0, 4, 1.0, 31.0) is None


def test_max_waiting_does_not_count_callers_the_free_slots_will_take() -> None:
    state = make_state(pool_size=1, max_overflow=2, max_waiting=1)  # max_open 3
    lend_timed(state, 0.0, 0.2)
    # Two free slots: two callers will connect if nothing comes back; one more may wait.
    waiters = [wait(state, 1.0) for _ in range(3)]
    assert all(w.connect_at < FOREVER for w in waiters)
    with pytest.raises(TooManyWaiters):
        state.request(1.0, 9, 1.0, 31.0, FakeWaiter)
    assert state.woken(waiters[0], 1.2, 2, 0.2, 31.0) is NEW_SLOT
    waiters[0].item = None
    state.connected(Item(1.3), 1.2, 1.3, False)
    with pytest.raises(TooManyWaiters):  # one free slot for two waiters: full
        state.request(1.3, 9, 1.3, 31.3, FakeWaiter)


def test_connect_estimate_forgets_one_slow_connect() -> None:
    state = make_state(pool_size=7, max_overflow=0)
    lend_timed(state, 0.0, 10.0)  # the first connect took 10 s
    for _ in range(6):
        lend_timed(state, 10.0, 10.1)  # then 0.1 s each
    assert state.connect_estimate < 1.5


# ---------------------------------------------------------------------------- recovery


def test_waiting_callers_retry_within_the_recovery_step_whatever_the_back_off() -> None:
    """After many failures the back-off is long (50 s here), but while callers wait the
    next attempt is due ``recovery`` after the last failure: they are served within moments
    of the database's return. One attempt at a time, one per step."""
    state = make_state(recovery=0.15)
    for failure in range(5):
        fail(state, float(failure))
    assert state.connect_failures == 5 and state.retry_at == 4.0 + 50.0
    assert state.next_attempt() == 54.0  # nobody waits: the back-off
    assert not state.reconnect_due(4.2)
    waiter = wait(state, 4.05)
    assert state.next_attempt() == pytest.approx(4.15)
    assert state.wait_step(4.05, 34.05) == pytest.approx(0.10)
    assert state.woken(waiter, 4.1, 99, 0.05, 34.05) is None
    assert state.woken(waiter, 4.15, 99, 0.1, 34.05) is CONNECT
    assert state.request(4.15, 99, 4.05, 34.05, FakeWaiter) is PROBE
    other = wait(state, 4.16)  # someone is trying: a later caller waits for it
    assert not state.reconnect_due(4.5)  # ...and nobody else tries
    assert state.wait_step(4.5, 34.16) == pytest.approx(0.25)  # looks again soon
    state.connect_failed(OSError("down"), False, 4.15, 4.2, True)
    assert state.next_attempt() == pytest.approx(4.35)  # the next step, from this failure
    assert state.woken(other, 4.36, 98, 0.2, 34.16) is CONNECT
    assert_books(state)


def test_maintenance_also_retries_sooner_for_waiting_callers() -> None:
    state = make_state(recovery=0.15, min_idle=1)
    for failure in range(3):
        fail(state, float(failure))
    # Only min_idle to refill: the back-off's time.
    assert state.plan_connect(2.1) == (None, 2.0 + 30.0)
    wait(state, 2.1)
    assert state.plan_connect(2.1) == (None, pytest.approx(2.15))
    assert state.plan_connect(2.15) == (PROBE, FOREVER)


def test_a_refused_login_keeps_its_back_off_while_callers_wait() -> None:
    """A wrong password is not an outage: retrying it every moment would only flood the
    server's log (and may lock the account)."""
    state = make_state(recovery=0.15)
    kept = connect(state, 0.0)
    state.lend(kept, 0.0, 1)  # open and lent: callers wait for it, not a refusal
    fail(state, 1.0, rejected=True)
    fail(state, 2.0, rejected=True)
    wait(state, 2.1)
    assert state.next_attempt() == state.retry_at == 2.0 + 20.0


# ---------------------------------------------------------------------------- drain


def test_drain_retires_every_item_open_now() -> None:
    state = make_state(pool_size=3, max_overflow=1)
    lent, checked, queued, idle = fill(state, 0.0)
    for item in (checked, queued, idle):
        assert state.check_in(item) is None
    # One being checked by maintenance, one queued for a check, one idle, one lent.
    state.idle.remove(checked)
    state.checking.add(checked)
    state.idle.remove(queued)
    state.send_to_check(queued)
    to_close, marked = state.drain(0.5)
    assert to_close == [idle, queued] and marked == 2
    assert not state.idle and not state.to_check
    assert lent.retire == checked.retire == "drained" and "slow" in lent.calls
    assert state.open == 2 and state.closed_by == {"drained": 2}
    assert_books(state)
    # The one being checked passes its check: closed, not back in circulation.
    assert state.passed_check(checked, 1.0) is checked
    assert state.open == 1 and state.closed_by == {"drained": 3}
    # A new connection is kept; the lent one retires when it comes back (the shell's slow
    # path discards it by its reason).
    fresh = lend_new(state, 2.0)
    assert not fresh.retire
    assert_books(state)


def test_drain_gives_the_freed_slots_to_waiters() -> None:
    state = make_state(pool_size=1, max_overflow=0)
    (item,) = fill(state, 0.0)
    state.check_in(item)
    state.idle.remove(item)
    state.send_to_check(item)  # queued for a check: nothing idle, so callers wait
    waiter = wait(state, 1.0)
    to_close, _ = state.drain(1.5)
    assert to_close == [item]
    assert waiter.item is NEW_SLOT and state.open == 1  # connects in the freed slot
    assert_books(state)


def test_a_connect_begun_before_a_drain_is_retired_when_it_ends() -> None:
    """A connection being opened when drain() runs may reach the old server or use the old
    credentials: it serves the caller that opened it once, and a refill is closed at once."""
    state = make_state(pool_size=2, max_overflow=0)
    assert state.reserve() and state.reserve()
    state.drain(0.5)
    for_caller, refill = Item(0.6), Item(0.6)
    state.connected(for_caller, 0.4, 0.6, False)
    state.connected(refill, 0.4, 0.6, False)
    assert for_caller.retire == refill.retire == "drained" and "slow" in for_caller.calls
    state.lend(for_caller, 0.6, 1)
    assert state.check_in(refill) is refill  # maintenance's refill: closed, not kept
    assert state.closed_by == {"drained": 1} and not state.idle
    later = Item(0.7)
    assert state.reserve()
    state.connected(later, 0.6, 0.7, False)  # begun after the drain: kept
    assert not later.retire and state.check_in(later) is None
    assert_books(state)


def test_a_lone_waiter_makes_the_attempt_itself_at_the_recovery_step() -> None:
    """The only caller waiting leaves the queue when the attempt is due and is given it
    (PROBE), not queued again until the back-off: no spinning, no waiting for maintenance."""
    state = make_state(recovery=0.15)
    for failure in range(3):
        fail(state, float(failure))
    waiter = wait(state, 2.05)
    assert state.woken(waiter, 2.15, 99, 0.1, 32.05) is CONNECT and not state.waiters
    assert state.request(2.15, 99, 2.05, 32.05, FakeWaiter) is PROBE
    assert_books(state)
