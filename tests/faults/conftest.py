"""The fault suite: the guarantees of docs/architecture.md, proven by breaking things for real.

Most tests run on a PostgreSQL cluster and a Redis server of the suite's own (`servers.py`), which they may kill,
restart and flush; the fuzzing test uses the machine's servers through the fixtures of `tests/backends.py`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends import app, database_url, empty_database, real_settings, redis_prefix
from tests.faults.harness import FaultRun
from tests.faults.servers import PostgresServer, RedisServer
from tests.support import ROOT

__all__ = ["app", "database_url", "empty_database", "real_settings", "redis_prefix"]

TEMPLATE = "widgetry_template"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(item.path).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The suite's own PostgreSQL, with a migrated template database each test's database is copied from."""
    server = PostgresServer()
    try:
        asyncio.run(server.execute(f'CREATE DATABASE "{TEMPLATE}"'))
        subprocess.run(
            [sys.executable, "-m", "widgetry", "database", "upgrade", "--no-prompt"],
            env={**os.environ, "DATABASE_URL": server.url(TEMPLATE), "REDIS_URL": "redis://127.0.0.1:1/0"},
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture
def fault_database(postgres: PostgresServer) -> str:
    """A database of its own for the test, migrated (a copy of the template)."""
    name = f"faults_{uuid.uuid4().hex[:12]}"
    asyncio.run(postgres.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"'))
    return postgres.url(name)


@pytest.fixture
def fault_prefix(redis_server: RedisServer) -> str:
    """A Redis key prefix of its own for the test (the server may also be flushed by the test)."""
    return f"faults-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fault_run(
    fault_database: str, redis_server: RedisServer, fault_prefix: str, tmp_path: Path
) -> Callable[..., FaultRun]:
    """Makes the test's `FaultRun` (its own database and key prefix, on the suite's servers)."""

    def make(name: str, **options: Any) -> FaultRun:
        return FaultRun(name, fault_database, redis_server.url, fault_prefix, tmp_path, **options)

    return make
