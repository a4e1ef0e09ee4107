"""Fixtures for the real PostgreSQL and Redis: one database per test run, one Redis key prefix per test.

`WIDGETRY_TEST_POSTGRES_URL` (an admin connection, default the local server's `postgres` database) and
`WIDGETRY_TEST_REDIS_URL` (default the local server) say where they are. They must be up: `.ci/run` starts them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from litestar import Litestar

from tests.support import API_KEY, ROOT
from widgetry.app import create_app
from widgetry.settings import Settings

ADMIN_URL = os.environ.get("WIDGETRY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("WIDGETRY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TABLES = ("widgets", "widget_heads", "commands", "events")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this run, migrated with the same command compose's `migrate` service runs."""

    name = f"widgetry_test_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(ADMIN_URL)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    subprocess.run(
        [sys.executable, "-m", "widgetry", "database", "upgrade", "--no-prompt"],
        env={**os.environ, "DATABASE_URL": url, "REDIS_URL": REDIS_URL},
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"widgetry-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = aioredis.from_url(REDIS_URL)
    for pattern in (f"{prefix}:*", f"saq:{prefix}:*", f"saq:job:{prefix}:*"):
        if keys := [key async for key in client.scan_iter(pattern, count=1000)]:
            await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def empty_database(database_url: str) -> str:
    """The run's database with its tables emptied: each test starts from nothing."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(f"TRUNCATE {', '.join(TABLES)}")
    finally:
        await connection.close()
    return database_url


@pytest.fixture
def real_settings(empty_database: str, redis_prefix: str) -> Settings:
    return Settings(database_url=empty_database, redis_url=REDIS_URL, redis_prefix=redis_prefix, api_keys=(API_KEY,))


@pytest.fixture
async def app(real_settings: Settings) -> Litestar:
    """The app on PostgreSQL and Redis (in-process worker)."""
    return create_app(real_settings)
