"""Scoped keys on PostgreSQL: the migration gives keys made before scopes the `write` scope, and keys made with
`widgetry keys create NAME --scope ...` do what their scopes allow against a running service."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.backends import ADMIN_URL
from tests.support import AUTH, Server, run_cli
from tests.unit.test_keys import client_of_a_key_made_before_scopes
from widgetry.api.security import Client
from widgetry.domain.models import Scope
from widgetry.services.keys import digest
from widgetry.settings import Settings


@pytest.fixture
async def blank_database() -> AsyncIterator[str]:
    """A database of its own, with no tables: the run's shared one is migrated to the newest revision already."""
    name = f"widgetry_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_a_key_made_before_scopes_keeps_writing_and_nothing_more(blank_database: str) -> None:
    client = await client_of_a_key_made_before_scopes(Settings(database_url=blank_database, redis_url="redis://x"))

    assert client == Client(digest("wdg_made-before"), frozenset({Scope.WRITE}))


def test_keys_made_with_scopes_do_what_their_scopes_allow(real_env: dict[str, str], tmp_path: Path) -> None:
    name = f"operator-{uuid.uuid4().hex[:8]}"
    created = run_cli("keys", "create", name, "--scope", "admin", "--scope", "write", env=real_env, cwd=tmp_path)
    key = created.stdout.strip().splitlines()[-1]
    server = Server(real_env, tmp_path)
    try:
        body = {"sku": "OP-1", "name": "Operated", "price_cents": 1, "internal_notes": "reorder at 5"}
        written = httpx.post(f"{server.url}/widgets", json=body, headers={"X-API-Key": key, "Prefer": "wait=10"})
        admin = httpx.get(f"{server.url}/admin/widgets/OP-1", headers={"Authorization": f"Bearer {key}"})
        writer = httpx.get(f"{server.url}/admin/widgets/OP-1", headers=AUTH)
        queues = httpx.get(f"{server.url}/saq/api/queues", headers={"X-API-Key": key})
    finally:
        server.stop()
    listed = run_cli("keys", "list", env=real_env, cwd=tmp_path)

    assert created.returncode == 0, created.stderr
    assert written.status_code == 200, written.text
    assert admin.json()["internal_notes"] == "reorder at 5"
    assert writer.status_code == 403 and writer.json()["type"].endswith("/problems/forbidden")
    assert queues.status_code == 200
    [row] = [line.split() for line in listed.stdout.splitlines() if line.startswith(name)]
    assert row[2] == "write,admin"
