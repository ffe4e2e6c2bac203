"""Running the user's connection hooks and session resets, the same way on every path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask_dbpool import messages
from flask_dbpool.drivers import BROKEN, FAILED, IDLE, Driver
from flask_dbpool.errors import PoolError

__all__ = ["reset_session", "run_on_connect"]

Hook = Callable[[Any], object]


def run_on_connect(hook: Hook, pool: str, raw: Any, driver: type[Driver]) -> None:
    """Run ``on_connect`` on ``raw``; commit what it left open; close ``raw`` if it fails."""
    try:
        hook(raw)
        state = driver.transaction_state(raw)
        if state in (BROKEN, FAILED):
            # Committing an aborted transaction would silently roll the hook's work back.
            raise PoolError(messages.on_connect_left(pool, broken=state == BROKEN))
        if state != IDLE:
            raw.commit()  # so that SET / PRAGMA statements outlive the first reset
    except BaseException:
        try:
            driver.close(raw)
        except Exception:
            pass
        raise


def reset_session(
    style: str | Hook, on_connect: Hook | None, pool: str, raw: Any, driver: type[Driver]
) -> None:
    """The full reset of ``reset_on_return="discard"`` or a callable; raises on failure."""
    if style == "discard":
        if not driver.supports_session_reset:
            raise PoolError(messages.session_reset_unsupported(driver.name))
        driver.reset_session(raw)
        if on_connect is not None:
            run_on_connect(on_connect, pool, raw, driver)  # the reset wiped what it had set
    elif callable(style):
        style(raw)
        if driver.transaction_state(raw) != IDLE:
            raw.commit()  # e.g. SET ROLE NONE issued inside an implicit transaction
