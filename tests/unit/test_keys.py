"""Stored API keys (`widgetry keys ...`): accepted beside the configured ones, refused within the cache's lifetime
once revoked, and looked up in the database once per lifetime, not once per request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import event

from tests.support import API_KEY, eventually, serve
from tests.unit.state import widget_row
from widgetry.api.security import ApiKeys, Client
from widgetry.app import create_app
from widgetry.domain.models import ApiKey, Scope
from widgetry.services.keys import DEFAULT_SCOPES, KEY_PREFIX, ApiKeyService, KeyNotFound, digest
from widgetry.settings import Settings

TTL_S = 0.5


@pytest.fixture
async def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Litestar:
    monkeypatch.chdir(tmp_path)
    return create_app(Settings(api_keys=(API_KEY,), api_key_cache_seconds=TTL_S))


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as http:
        yield http


async def issue(app: Litestar, name: str, scopes: frozenset[Scope] = DEFAULT_SCOPES) -> str:
    async with app.state.connections.alchemy.get_session() as session:
        _, key = await ApiKeyService(session=session).issue(name, scopes)
    return key


async def revoke(app: Litestar, name_or_prefix: str) -> ApiKey:
    async with app.state.connections.alchemy.get_session() as session:
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
