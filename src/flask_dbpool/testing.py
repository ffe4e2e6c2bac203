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

__all__ = ["leaked_since"]

_STARTED = pytest.StashKey[float]()


def leaked_since(moment: float) -> list[str]:
    """One line per connection checked out after ``moment`` (``time.monotonic()``) and not
    returned, in every open pool of the process: still out, or dropped and already
    reclaimed by the pool's maintenance (:meth:`~flask_dbpool.Pool.reclaimed`)."""
    lines = []
    for pool in live_pools():
        if pool.closed:
            continue
        found = [(c, "was not returned") for c in pool.checkouts()]
        found += [
            (c, "was dropped without being returned (the pool reclaimed it)")
            for c in pool.reclaimed()
        ]
        # Read after the calls: ``now - held_seconds`` is then never earlier than the
        # checkout (a test's first statement may check out within microseconds of its start).
        now = time.monotonic()
        for checkout, fate in found:
            if now - checkout.held_seconds < moment:
                continue
            where = (
                f" at {checkout.site}"
                if checkout.site
                else " (give the pool a leak_threshold to see the line that checked it out)"
            )
            request = " ".join(part for part in (checkout.label, checkout.caller) if part)
            lines.append(
                f"pool {pool.name!r}: a connection checked out by thread {checkout.thread!r}"
                f"{' for ' + request if request else ''}, held {checkout.held_seconds:.2f} s, "
                f"{fate}{where}"
            )
    return lines


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_STARTED] = time.monotonic()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: Any) -> Generator[None, None, None]:
    result = yield  # the test's fixtures are torn down: what they returned is back
    started = item.stash.get(_STARTED, None)
    lines = leaked_since(started) if started is not None else []
    if lines:
        pytest.fail(
            "flask-dbpool: the test left connection(s) checked out:\n  " + "\n  ".join(lines),
            pytrace=False,
        )
    return result
