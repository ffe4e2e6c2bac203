"""A pytest plugin for your test suite: a test that leaves a pooled connection checked out
fails, naming where it was checked out.

Turn it on with ``pytest -p flask_dbpool.testing`` (or ``addopts = "-p flask_dbpool.testing"``
in your pytest configuration). After each test (its fixtures torn down) it looks at every
:class:`~flask_dbpool.Pool` of the process that is still open and reports the connections
checked out during that test and not returned: the test then errors in teardown with the
thread, how long it was held, the Flask request that took it, and, when the pool has a
``leak_threshold`` (any value, e.g. ``DBPOOL_LEAK_THRESHOLD = 3600`` in your test config), the
line that checked it out. Connections checked out before the test (a session-wide fixture's)
are not its doing and are left alone. A handle the test dropped without returning it, which
the pool's maintenance reclaimed before the test ended, is reported too (by pool and
count). A connection held across tests on purpose can be returned in the fixture's
teardown, or its pool closed.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import pytest

from flask_dbpool.pool import live_pools

__all__ = ["leaked_since", "reclaimed_counts", "reclaimed_since"]

_STARTED = pytest.StashKey[float]()
_RECLAIMED = pytest.StashKey[dict[int, int]]()


def leaked_since(moment: float) -> list[str]:
    """One line per connection checked out after ``moment`` (``time.monotonic()``) and not
    returned, in every open pool of the process."""
    now = time.monotonic()
    lines = []
    for pool in live_pools():
        if pool.closed:
            continue
        for checkout in pool.checkouts():
            if now - checkout.held_seconds < moment:
                continue
            where = (
                f" at {checkout.site}"
                if checkout.site
                else (" (give the pool a leak_threshold to see the line that checked it out)")
            )
            request = " ".join(part for part in (checkout.label, checkout.caller) if part)
            lines.append(
                f"pool {pool.name!r}: a connection checked out by thread {checkout.thread!r}"
                f"{' for ' + request if request else ''}, held {checkout.held_seconds:.2f} s, "
                f"was not returned{where}"
            )
    return lines


def reclaimed_counts() -> dict[int, int]:
    """How many dropped handles each open pool has reclaimed so far, by ``id(pool)``."""
    return {id(pool): pool.stats().reclaimed for pool in live_pools() if not pool.closed}


def reclaimed_since(before: dict[int, int]) -> list[str]:
    """One line per open pool that reclaimed dropped handles since ``before`` (see
    :func:`reclaimed_counts`): connections checked out and dropped without being returned,
    which the pool's maintenance found before the test ended."""
    lines = []
    for pool in live_pools():
        if pool.closed or id(pool) not in before:
            continue
        count = pool.stats().reclaimed - before[id(pool)]
        if count > 0:
            where = (
                "the pool's warning log names the line that checked them out"
                if pool.config.leak_threshold is not None
                else "give the pool a leak_threshold to see the line that checked it out"
            )
            lines.append(
                f"pool {pool.name!r}: {count} connection(s) were dropped without being "
                f"returned (the pool reclaimed them; {where})"
            )
    return lines


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_STARTED] = time.monotonic()
    item.stash[_RECLAIMED] = reclaimed_counts()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: Any) -> Generator[None, None, None]:
    result = yield  # the test's fixtures are torn down: what they returned is back
    started = item.stash.get(_STARTED, None)
    lines = leaked_since(started) if started is not None else []
    # A handle dropped without being returned may have been reclaimed by the pool's
    # maintenance before now: still this test's leak.
    lines += reclaimed_since(item.stash.get(_RECLAIMED, {}))
    if lines:
        pytest.fail(
            "flask-dbpool: the test left connection(s) checked out:\n  " + "\n  ".join(lines),
            pytrace=False,
        )
    return result
