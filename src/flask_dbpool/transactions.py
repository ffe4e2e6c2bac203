"""Retry logic done right: :func:`run_transaction`.

The naive retry (run the failed statement again on a new connection) loses the statements the
transaction ran before it, or runs a committed write twice. Here the unit of retry is the whole
transaction, and it is run again only when the error proves that nothing was committed:

* the server rolled the transaction back: a serialization failure or a deadlock (PostgreSQL
  40001, 40P01; MySQL 1213) or a lock wait timeout (MySQL 1205, after which the rest is
  rolled back here), raised by the work or by the ``COMMIT`` itself;
* the connection was lost (or the server changed) *before* the ``COMMIT`` was sent.

A connection lost while the ``COMMIT`` was in flight raises :class:`CommitOutcomeUnknown`: the
server may have committed, so running the work again could apply it twice. Any other error
rolls back and propagates at once. Between attempts: a pause doubling from 20 ms (jittered,
at most 1 s); each retry is logged at DEBUG with its cause.

``work`` must not commit itself, switch to autocommit, return the connection, or run
statements that commit implicitly (MySQL DDL, ``TRUNCATE``, ``LOCK TABLES``): a connection
lost after such a commit would have it run twice; a pool in autocommit mode is refused. It
may run more than once: keep side effects outside the database (emails, payments) out of it.

What an error means is the driver's classification (``Driver.classify``), or the pool's
``classify_error``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from flask_dbpool.drivers import DEAD, RETRYABLE, SERVER_CHANGED
from flask_dbpool.errors import CommitOutcomeUnknown, ConfigError, PoolError, one_line
from flask_dbpool.policy import retry_delay

__all__ = ["run_transaction"]

logger = logging.getLogger("flask_dbpool.transactions")

R = TypeVar("R")

_LOST = (DEAD, SERVER_CHANGED)


class _Pool(Protocol):
    @property
    def name(self) -> str: ...

    def acquire(self, timeout: float | None = None) -> Any: ...

    def release(self, conn: Any, error: BaseException | None = None) -> None: ...

    def classify(self, error: BaseException, conn: Any) -> str | None: ...

    def autocommit(self, conn: Any) -> bool: ...


def run_transaction(
    pool: _Pool,
    work: Callable[[Any], R],
    *,
    retries: int,
    timeout: float | None,
    count_retry: Callable[[], None],
    sleep: Callable[[float], object] = time.sleep,
) -> R:
    """See :meth:`flask_dbpool.Pool.run_transaction` (``count_retry`` is called once per
    retry, ``sleep`` pauses between attempts)."""
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ConfigError(f"retries must be an integer >= 0, got {retries!r}")
    attempt = 1
    while True:
        conn = pool.acquire(timeout)
        if pool.autocommit(conn):
            pool.release(conn)
            raise ConfigError(
                f"pool {pool.name!r}: run_transaction needs connections that do not commit "
                "each statement by themselves (autocommit is on: set by on_connect, the URL "
                "or the driver's defaults): a unit of work could not be run again safely"
            )
        try:
            result = work(conn)
        except BaseException as error:
            if conn.returned:  # work gave it back itself (rolled back then): its error counts
                raise
            kind = pool.classify(error, conn) if isinstance(error, Exception) else None
            pool.release(conn, error)  # rolled back; discarded if lost; drained if changed
            if kind not in (RETRYABLE, *_LOST) or attempt > retries:
                raise
            cause = error
        else:
            if conn.returned:
                raise PoolError(
                    f"pool {pool.name!r}: the unit of work returned its connection (close() "
                    "or release()), which rolled it back: nothing was committed. "
                    "run_transaction returns the connection itself"
                )
            try:
                conn.commit()
            except Exception as error:
                kind = pool.classify(error, conn)
                pool.release(conn, error)
                if kind in _LOST:
                    raise CommitOutcomeUnknown(
                        f"pool {pool.name!r}: the connection was lost while COMMIT was in "
                        f"flight ({one_line(error)}): the transaction may or may not have "
                        "been committed, so it is not run again"
                    ) from error
                if kind != RETRYABLE or attempt > retries:
                    raise
                cause = error
            except BaseException as error:  # interrupted: the connection is not lost
                pool.release(conn, error)
                raise
            else:
                pool.release(conn)
                return result
        attempt += 1
        count_retry()
        delay = retry_delay(attempt)
        logger.debug(
            "pool %r: running the transaction again (attempt %d of %d) in %.3f s: %s (%s)",
            pool.name,
            attempt,
            retries + 1,
            delay,
            one_line(cause),
            kind,
        )
        sleep(delay)
