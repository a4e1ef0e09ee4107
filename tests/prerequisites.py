"""What the selected tests need from the machine, checked once before the first test runs.

A missing server or binary would otherwise surface minutes later as a connection error deep in a fixture. The
check looks only at what the selected tests use: `pytest tests/unit` needs nothing but Python.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.backends import ADMIN_URL, REDIS_URL
from tests.faults.servers import PG_BINDIR

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CONNECT_TIMEOUT_S = 3


@dataclass(frozen=True)
class Prerequisite:
    name: str
    remedy: str
    missing: Callable[[], str | None]
    """What is wrong, or `None` when it is there."""
    needed_by: Callable[[str], bool]
    """Whether the test of this node id needs it."""


def _postgres_superuser() -> str | None:
    async def check() -> str | None:
        connection = await asyncpg.connect(ADMIN_URL, timeout=CONNECT_TIMEOUT_S)
        try:
            if not await connection.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
                return f"{ADMIN_URL} connects, but not as a superuser (the tests create and drop databases)"
            return None
        finally:
            await connection.close()

    try:
        return asyncio.run(check())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"cannot connect to {ADMIN_URL}: {exc}"


def _redis() -> str | None:
    async def check() -> None:
        client = aioredis.from_url(REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT_S)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(check())
    except (OSError, aioredis.RedisError) as exc:
        return f"cannot reach {REDIS_URL}: {exc}"
    return None


def _binaries(paths: Iterable[str]) -> Callable[[], str | None]:
    def check() -> str | None:
        absent = [path for path in paths if not (os.access(path, os.X_OK) or shutil.which(path))]
        return f"not found: {', '.join(absent)}" if absent else None

    return check


def _under(*parts: str) -> Callable[[str], bool]:
    """Tests by where they are: a node id (`tests/faults/test_x.py::test_y`) is all an xdist controller is told."""
    prefixes = tuple(f"tests/{part}" for part in parts)
    return lambda node_id: node_id.startswith(prefixes)


PREREQUISITES = (
    Prerequisite(
        "PostgreSQL superuser over TCP without a password",
        "start PostgreSQL (.ci/run does), or point WIDGETRY_TEST_POSTGRES_URL at an admin connection; "
        "with Debian's server: pg_ctlcluster --skip-systemctl-redirect <version> main start, and trust auth for "
        "127.0.0.1 in pg_hba.conf",
        _postgres_superuser,
        _under("integration/", "faults/"),
    ),
    Prerequisite(
        "Redis",
        "start redis-server (.ci/run does), or point WIDGETRY_TEST_REDIS_URL at one",
        _redis,
        _under("integration/", "faults/"),
    ),
    Prerequisite(
        "PostgreSQL's initdb and pg_ctl, and redis-server (the fault suite runs servers of its own)",
        "apt-get install postgresql redis-server, or set WIDGETRY_TEST_PG_BINDIR to the directory of initdb",
        _binaries([f"{PG_BINDIR}/initdb", f"{PG_BINDIR}/pg_ctl", "redis-server"]),
        _under("faults/"),
    ),
    Prerequisite(
        "Chromium and chromedriver (the dashboard's browser test)",
        "apt-get install chromium chromium-driver (.ci/run does)",
        _binaries([CHROMIUM, CHROMEDRIVER]),
        _under("e2e/test_dashboard.py"),
    ),
)


def check(node_ids: Iterable[str], report: Callable[[str], None]) -> None:
    """Reports each prerequisite the selected tests need, and stops the run before any test if one is missing."""
    node_ids = list(node_ids)
    problems = []
    for prerequisite in PREREQUISITES:
        users = sum(1 for node_id in node_ids if prerequisite.needed_by(node_id))
        if not users:
            continue
        missing = prerequisite.missing()
        report(f"prerequisite: {prerequisite.name}: {'MISSING' if missing else 'ok'} ({users} tests need it)")
        if missing:
            problems.append(f"- {prerequisite.name}: {missing}\n  to get it: {prerequisite.remedy}")
    if problems:
        pytest.exit(
            "the selected tests need what this machine lacks:\n"
            + "\n".join(problems)
            + "\n(docs/testing.md lists what each tier needs; `pytest tests/unit` needs none of it)",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
