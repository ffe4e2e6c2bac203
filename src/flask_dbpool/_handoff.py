"""Waiting callers and what is handed to them (see :meth:`Pool._wait`)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from flask_dbpool.entry import Entry

__all__ = ["CLOSED", "NEW_SLOT", "Refusal", "Token", "Waiter"]


class Token:
    """A marker handed to a waiter instead of a connection."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Handed to a waiter: "a slot is yours, open a new connection in it".
NEW_SLOT: Final = Token("NEW_SLOT")
#: Handed to a waiter: "the pool was closed".
CLOSED: Final = Token("CLOSED")


class Refusal(Token):
    """Handed to a waiter: "the database rejected the connection (wrong credentials, unknown
    database …) and nothing is open to wait for": it raises ``error`` at once."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        super().__init__("REFUSAL")
        self.error = error


class Waiter:
    """One caller waiting for a connection. Created only when a caller must wait."""

    __slots__ = ("item", "wake")

    def __init__(self) -> None:
        self.item: Entry | Token | None = None
        # A lock created held works as a one-shot event, cheaper than threading.Event.
        # Looked up at call time so gevent's monkey-patching applies.
        self.wake = threading.Lock()
        self.wake.acquire()
