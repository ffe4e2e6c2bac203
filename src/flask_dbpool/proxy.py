"""The handle given to callers for one checkout."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from flask_dbpool import messages
from flask_dbpool.drivers.base import IDLE, Driver
from flask_dbpool.errors import ConnectionReturned, PoolError

if TYPE_CHECKING:
    from flask_dbpool.entry import Entry

__all__ = ["PooledConnection", "handle_class_for"]

_RETURNED = messages.returned_handle()


class PooledConnection:
    """A checked-out connection: a thin proxy to the driver connection.

    Every attribute of the driver connection works through it (``cursor()``, ``execute()``,
    ``commit()``, ``autocommit = True`` …). ``close()`` returns it to the pool (idempotent),
    ``invalidate()`` discards it. ``with conn:`` behaves like the driver's own connection:
    the block's transaction is committed when it ends normally and rolled back when it
    raises; then the connection goes back to the pool (unless the checkout is pinned, like
    Flask's per-request ``db.connection``, which stays until teardown). Once returned, any
    use raises :class:`~flask_dbpool.ConnectionReturned` (a ``PoolError`` that is also the
    driver's own closed-connection error, e.g. ``sqlite3.ProgrammingError``; reading
    ``closed`` gives ``True``): a handle is good for one checkout only. Cursors obtained
    from it are the driver's own objects and must not be used after the connection is
    returned.

    Client-side settings changed through the handle (``conn.autocommit = True``,
    ``conn.row_factory = …``, and methods the driver watches, such as PyMySQL's
    ``autocommit(True)``) are put back to what the pool set up when the connection returns.
    """

    __slots__ = ("_entry",)
    if TYPE_CHECKING:
        _entry: Entry | None
    #: What a returned handle raises (per driver: see :func:`handle_class_for`).
    _returned_error: ClassVar[type[PoolError]] = ConnectionReturned

    def __init__(self) -> None:
        # The pool builds handles without __init__; one made by hand is born returned.
        set_entry(self, None)

    def __getattr__(self, name: str) -> Any:
        # Called only for names the proxy itself lacks: forward to the driver connection.
        # Special names are never forwarded (copy, pickle and friends probe for them).
        if name[:2] == "__" or name == "_entry":
            raise AttributeError(name)
        entry = self._entry
        if entry is None:
            if name == "closed":
                return True  # psycopg-style `if not conn.closed: conn.close()` keeps working
            raise self._returned_error(_RETURNED)
        if name in entry.watched:  # e.g. PyMySQL's autocommit(): may change a setting
            return entry.watched_value(name)
        return getattr(entry.raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        entry = self._entry
        if entry is None:
            raise self._returned_error(_RETURNED)
        entry.mark_changed()  # before the write: a write that half-failed is restored too
        setattr(entry.raw, name, value)

    @property
    def driver_connection(self) -> Any:
        """The underlying driver connection (for ``isinstance`` checks and driver-only APIs).

        Do not close it or keep it beyond the checkout. Raises
        :class:`~flask_dbpool.ConnectionReturned` once returned.
        """
        entry = self._entry
        if entry is None:
            raise self._returned_error(_RETURNED)
        return entry.raw

    @property
    def returned(self) -> bool:
        """Whether this handle was returned to the pool (and is now unusable)."""
        return self._entry is None

    def close(self) -> None:
        """Return the connection to the pool; does nothing if it was already returned."""
        _give_back(self, None)

    def invalidate(self) -> None:
        """Close the driver connection and free its slot instead of returning it for reuse.

        Use it when you know the session is unusable or carries state nobody else should see.
        Does nothing if the handle was already returned.
        """
        entry = self._entry
        if entry is not None:
            entry.pool.invalidate(self)

    def __reduce_ex__(self, protocol: object) -> Any:
        # A copy would be a second handle to one checkout: refuse copy, deepcopy and pickle.
        raise TypeError("a pooled connection cannot be copied or pickled")

    def __enter__(self) -> PooledConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # As the drivers' own ``with conn:`` (sqlite3, psycopg2, psycopg 3): commit when the
        # block ended normally, roll back when it raised. Then give the connection back,
        # unless the checkout is pinned (it is returned later, by its owner).
        entry = self._entry
        if entry is None:
            return
        pinned = entry.pinned_for == entry.lent_at
        if exc is None:
            raw = entry.raw
            if entry.driver.transaction_state(raw) != IDLE:
                try:
                    raw.commit()
                except BaseException as error:
                    if not pinned:
                        _give_back(self, error)
                    raise
            if pinned:
                return
            try:
                entry.pool.release(self)
            except PoolError:
                if self._entry is not None:  # not a racing return: a real error
                    raise
        elif pinned:
            try:
                entry.driver.rollback(entry.raw)
            except Exception:  # as the drivers do: the block's own error matters more; a
                pass  # connection this leaves broken is discarded when it is returned
        else:
            _give_back(self, exc)

    def __repr__(self) -> str:
        entry = self._entry
        if entry is None:
            return "<PooledConnection (returned)>"
        return f"<PooledConnection {type(entry.raw).__qualname__} pool={entry.pool.name!r}>"


def _give_back(conn: PooledConnection, error: BaseException | None) -> None:
    """Return ``conn`` through the pool's public ``release``; a handle returned already (or
    by a racing ``close()``) is fine, as ``close()`` promises."""
    entry = entry_of(conn)
    if entry is None:
        return
    try:
        entry.pool.release(conn, error)
    except PoolError:
        if entry_of(conn) is not None:  # not a racing return: a real error
            raise


# The pool fills the slot through its descriptor, bypassing the forwarding __setattr__...
set_entry: Callable[[PooledConnection, Entry | None], None] = vars(PooledConnection)[
    "_entry"
].__set__
#: ...and reads it the same way off its hot path (the hot path reads ``conn._entry`` itself:
#: an attribute load is cheaper than this call). ``conn`` must be a PooledConnection.
entry_of: Callable[[PooledConnection], Entry | None] = vars(PooledConnection)["_entry"].__get__


def handle_for(entry: Entry) -> PooledConnection:
    """A new handle lending ``entry`` (without ``__init__``, which makes a returned one)."""
    conn: PooledConnection = _new_handle(entry.handle_class)
    set_entry(conn, entry)
    return conn


_new_handle = object.__new__


_handle_classes: dict[type[Driver], type[PooledConnection]] = {}


def handle_class_for(driver: type[Driver]) -> type[PooledConnection]:
    """The handle class for connections of ``driver``: a :class:`PooledConnection` whose
    returned handles raise a :class:`~flask_dbpool.ConnectionReturned` that is also the
    driver's own closed-connection error (plain :class:`PooledConnection` for a driver
    without one). Made once per driver; the class the pool's hot path instantiates."""
    handle_class = _handle_classes.get(driver)
    if handle_class is None:
        bases = driver.closed_errors()
        if not bases:
            handle_class = PooledConnection
        else:
            error = type(
                "ConnectionReturned",
                (ConnectionReturned, *bases),
                {"__module__": "flask_dbpool.errors", "__doc__": ConnectionReturned.__doc__},
            )
            handle_class = type(
                "PooledConnection",
                (PooledConnection,),
                {
                    "__slots__": (),
                    "__module__": __name__,
                    "__doc__": PooledConnection.__doc__,
                    "_returned_error": error,
                },
            )
        handle_class = _handle_classes.setdefault(driver, handle_class)
    return handle_class
