"""Stored API keys (`widgetry keys ...`): accepted beside the configured ones with the scopes they were made with,
refused within the cache's lifetime once revoked, and looked up in the database once per lifetime, not once per
request. Keys made before there were scopes keep writing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import httpx
import pytest
from advanced_alchemy.extensions.litestar import AlembicCommands
from advanced_alchemy.types import GUID, DateTimeUTC
from litestar import Litestar
from sqlalchemy import bindparam, event, text

from tests.support import API_KEY, WAIT, eventually, serve
from tests.unit.state import widget_row
from widgetry.api.security import ApiKeys, Client
from widgetry.app import create_app
from widgetry.connections import build_alchemy
from widgetry.domain.models import ApiKey, Scope
from widgetry.services.keys import DEFAULT_SCOPES, KEY_PREFIX, ApiKeyService, KeyNotFound, digest
from widgetry.services.units import unit_of_work
from widgetry.settings import Settings

TTL_S = 0.5
BEFORE_SCOPES = "c3f8a1d5e2b7"
"""The migration that made the `api_keys` table, before keys had scopes."""


@pytest.fixture
async def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Litestar:
    monkeypatch.chdir(tmp_path)
    return create_app(Settings(api_keys=(API_KEY,), api_key_cache_seconds=TTL_S))


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as http:
        yield http


async def issue(app: Litestar, name: str, scopes: frozenset[Scope] = DEFAULT_SCOPES) -> str:
    async with unit_of_work(app.state.connections.alchemy) as session:
        _, key = await ApiKeyService(session=session).issue(name, scopes)
    return key


async def revoke(app: Litestar, name_or_prefix: str) -> ApiKey:
    async with unit_of_work(app.state.connections.alchemy) as session:
        return await ApiKeyService(session=session).revoke(name_or_prefix)


async def stored(app: Litestar, name: str) -> ApiKey:
    async with app.state.connections.alchemy.get_session() as session:
        return await ApiKeyService(session=session).get_one(name=name)


def widget(sku: str) -> dict[str, Any]:
    return {"sku": sku, "name": "Keyed", "price_cents": 1}


async def test_a_stored_key_writes_until_revoked_and_is_refused_within_the_cache_lifetime(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    key = await issue(app, "ops")
    accepted = await client.post("/widgets", json=widget("K-1"), headers={"X-API-Key": key})
    bearer = await client.post("/widgets", json=widget("K-2"), headers={"Authorization": f"Bearer {key}"})
    api_keys: ApiKeys = app.state.api_keys
    fingerprint = digest(key)
    client_before = await api_keys.client(fingerprint)
    revoked = await revoke(app, "ops")
    attempts = iter(range(1000))

    async def refused() -> bool:
        sku = f"K-R{next(attempts)}"
        response = await client.post("/widgets", json=widget(sku), headers={"X-API-Key": key})
        return response.status_code == 401

    await eventually(refused, TTL_S + 5, "the revoked key to be refused")
    row = await stored(app, "ops")

    assert key.startswith(KEY_PREFIX) and len(key) > len(KEY_PREFIX) + 40
    assert (accepted.status_code, bearer.status_code) == (202, 202)
    assert client_before == Client(fingerprint, frozenset({Scope.WRITE}))
    assert api_keys.fingerprint(key) is None  # no longer counted as a key of its own by the rate limiter
    assert await api_keys.client(fingerprint) is None
    assert revoked.revoked_at is not None
    assert row.digest == fingerprint and key not in (row.name, row.digest)
    assert row.last_used_at is not None and row.last_used_at >= row.created_at
    # The configured key is untouched by it all.
    assert (await client.post("/widgets", json=widget("K-3"), headers={"X-API-Key": API_KEY})).status_code == 202


async def test_a_bad_key_sent_again_and_again_costs_one_lookup(client: httpx.AsyncClient, app: Litestar) -> None:
    lookups: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "api_keys" in statement:
            lookups.append(statement)

    engine = app.state.connections.alchemy.get_engine().sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        statuses = [
            (await client.post("/widgets", json=widget(f"B-{n}"), headers={"X-API-Key": "wdg_made-up"})).status_code
            for n in range(20)
        ]
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert statuses == [401] * 20
    assert len(lookups) == 1
    assert await widget_row(app, "B-0") is None


async def test_a_key_is_revoked_by_a_fingerprint_prefix_and_an_unknown_one_is_refused(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    key = await issue(app, "ci")
    await issue(app, "other")
    with pytest.raises(KeyNotFound, match="No key"):
        await revoke(app, "not-a-key")
    with pytest.raises(KeyNotFound, match="No key"):
        await revoke(app, digest(key)[:5])  # too short to be taken as a fingerprint prefix

    revoked = await revoke(app, digest(key)[:8])
    again = await revoke(app, "ci")

    assert revoked.name == "ci" and revoked.revoked_at is not None
    assert again.revoked_at == revoked.revoked_at
    assert (await stored(app, "other")).revoked_at is None


async def client_of_a_key_made_before_scopes(settings: Settings) -> Client | None:
    """Migrates an empty database to the revision before scopes, stores a key there as that revision did, migrates to
    the newest and returns the key's client as the app sees it."""
    migrations = AlembicCommands(sqlalchemy_config=build_alchemy(settings))
    await anyio.to_thread.run_sync(lambda: migrations.upgrade(revision=BEFORE_SCOPES))
    alchemy = build_alchemy(settings)
    insert = text(
        "INSERT INTO api_keys (id, name, digest, created_at) VALUES (:id, :name, :digest, :created_at)"
    ).bindparams(bindparam("id", type_=GUID(length=16)), bindparam("created_at", type_=DateTimeUTC(timezone=True)))
    async with alchemy.get_engine().begin() as connection:
        row = {
            "id": uuid4(),
            "name": "made-before",
            "digest": digest("wdg_made-before"),
            "created_at": datetime.now(UTC),
        }
        await connection.execute(insert, row)
    await anyio.to_thread.run_sync(lambda: migrations.upgrade(revision="head"))
    try:
        return await ApiKeys({}, alchemy).authenticate("wdg_made-before")
    finally:
        await alchemy.get_engine().dispose()


async def test_a_key_made_before_scopes_keeps_writing_and_nothing_more(tmp_path: Path) -> None:
    client = await client_of_a_key_made_before_scopes(Settings(database_url=f"sqlite:///{tmp_path / 'old.db'}"))

    assert client == Client(digest("wdg_made-before"), frozenset({Scope.WRITE}))


async def keys_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`widgetry keys ...` on the embedded defaults in `cwd`, its settings from nothing but the defaults."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("WIDGETRY_")}
    environ = {name: value for name, value in environ.items() if name not in ("DATABASE_URL", "REDIS_URL")}
    command = [sys.executable, "-m", "widgetry", "keys", *args]
    return await asyncio.to_thread(subprocess.run, command, env=environ, cwd=cwd, capture_output=True, text=True)


async def test_keys_create_takes_a_name_and_scopes_and_the_list_shows_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = await keys_cli("create", "operator", "--scope", "admin", "--scope", "write", cwd=tmp_path)
    writer = await keys_cli("create", "writer", cwd=tmp_path)
    unknown_scope = await keys_cli("create", "reader", "--scope", "read", cwd=tmp_path)
    table = await keys_cli("list", cwd=tmp_path)
    listed = await keys_cli("list", "--json", cwd=tmp_path)
    operator_key, writer_key = (result.stdout.strip().splitlines()[-1] for result in (operator, writer))
    monkeypatch.chdir(tmp_path)
    async with serve(create_app(Settings(api_keys=(API_KEY,)))) as client:
        created = await client.post("/widgets", json=widget("C-1"), headers={"X-API-Key": writer_key} | WAIT)
        operator_reads = await client.get("/admin/widgets/C-1", headers={"X-API-Key": operator_key})
        writer_reads = await client.get("/admin/widgets/C-1", headers={"X-API-Key": writer_key})

    assert (operator.returncode, writer.returncode) == (0, 0), operator.stderr + writer.stderr
    assert "scopes write,admin" in operator.stdout and "scopes write)" in writer.stdout
    assert unknown_scope.returncode == 2 and "'read' is not one of 'write', 'admin'" in unknown_scope.stderr
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]}
    assert table.stdout.splitlines()[0].split()[:3] == ["NAME", "FINGERPRINT", "SCOPES"]
    assert (rows["operator"][2], rows["writer"][2]) == ("write,admin", "write")
    assert {entry["name"]: entry["scopes"] for entry in json.loads(listed.stdout)} == {
        "operator": ["write", "admin"],
        "writer": ["write"],
    }
    assert created.status_code == 200, created.text
    assert operator_reads.json()["internal_notes"] == ""
    assert writer_reads.status_code == 403
