"""Whether an error is the environment's, not the request's: the database or Redis could not be reached, dropped the
connection, or gave up this attempt, so the same request can succeed later.

The services, the API and the workers all ask, so this module imports no driver: an error of redis's or asyncpg's
exists only once that library is loaded, and their classes are looked up among the loaded modules when an error is
classified."""

from __future__ import annotations

import sqlite3
import sys

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionRefusedError, ConnectionResetError, and the built-in TimeoutError
    OperationalError,  # SQLAlchemy's wrapper for a connection that failed (and SQLite's "database is locked")
    InterfaceError,
    PoolTimeoutError,  # every pooled connection busy for the pool's timeout: the database is overloaded
)
DRIVERS_UNAVAILABLE: dict[str, tuple[str, ...]] = {
    "redis.exceptions": ("ConnectionError", "TimeoutError"),
    "asyncpg.exceptions": (
        "PostgresConnectionError",  # "connection was closed in the middle of operation"
        "OperatorInterventionError",  # "the database system is shutting down", admin shutdown
        "InterfaceError",
        "InternalClientError",  # a connection left mid-operation when the server went away
        "TransactionRollbackError",  # a deadlock or serialization failure: the same work may pass next time
    ),
}
"""The drivers' own errors of the same kinds, by module and class name."""


def is_unavailable(error: BaseException | None) -> bool:
    """Whether `error`, or any error in its chain of causes, says the environment failed this attempt.

    The chain is searched: asyncpg raises its own errors from a pool connect, SQLAlchemy wraps them, and Advanced
    Alchemy wraps SQLAlchemy's (a dropped connection can surface as its `IntegrityError`)."""
    unavailable = UNAVAILABLE + _loaded_driver_errors()
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(getattr(error, "orig", None), sqlite3.Error):
            error = error.orig  # SQLAlchemy's OperationalError wraps SQLite's: classify by SQLite's own
        if isinstance(error, sqlite3.OperationalError):
            # SQLite reports a busy database and a missing table alike: only the first passes with time.
            return any(word in str(error) for word in ("locked", "busy"))
        if isinstance(error, unavailable) or (isinstance(error, DBAPIError) and error.connection_invalidated):
            return True
        error = getattr(error, "orig", None) or error.__cause__ or error.__context__
    return False


def _loaded_driver_errors() -> tuple[type[BaseException], ...]:
    return tuple(
        getattr(module, name)
        for module_name, names in DRIVERS_UNAVAILABLE.items()
        if (module := sys.modules.get(module_name)) is not None
        for name in names
    )
