"""An error is the environment's (retry later, answer 503) when the database or Redis failed the attempt, however
deeply the drivers and SQLAlchemy wrap it; any other error is the request's. Telling them apart loads no driver."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import asyncpg
import redis.exceptions
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from widgetry.services.unavailable import is_unavailable


def wrapped(error: BaseException) -> BaseException:
    """As Advanced Alchemy raises it: its own error, from SQLAlchemy's, from the driver's."""
    try:
        try:
            raise DBAPIError("INSERT", {}, error) from error
        except DBAPIError as sqlalchemy_error:
            raise RuntimeError("repository error") from sqlalchemy_error
    except RuntimeError as outer:
        return outer


def test_dropped_connections_and_busy_databases_are_the_environments() -> None:
    assert is_unavailable(wrapped(asyncpg.exceptions.PostgresConnectionError("connection was closed")))
    assert is_unavailable(wrapped(asyncpg.exceptions.DeadlockDetectedError("deadlock detected")))
    assert is_unavailable(redis.exceptions.ConnectionError("Connection refused"))
    assert is_unavailable(redis.exceptions.TimeoutError("Timeout reading from socket"))
    assert is_unavailable(ConnectionResetError())
    assert is_unavailable(OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked")))


def test_errors_of_the_request_are_not() -> None:
    assert not is_unavailable(None)
    assert not is_unavailable(ValueError("bad sku"))
    assert not is_unavailable(wrapped(asyncpg.exceptions.UniqueViolationError("duplicate key")))
    assert not is_unavailable(IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed")))
    assert not is_unavailable(OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: widgets")))
    assert not is_unavailable(redis.exceptions.ResponseError("WRONGTYPE"))


def test_asking_loads_neither_driver() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, widgetry.services.unavailable; "
            "print(sorted({'asyncpg', 'redis', 'fakeredis'} & {name.split('.')[0] for name in sys.modules}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
