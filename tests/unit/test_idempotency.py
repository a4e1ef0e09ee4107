"""`Idempotency-Key`: a repeated write returns the original command and queues nothing new."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import select

from tests.support import API_KEY, AUTH, WAIT, serve
from tests.unit.state import CommandRecord, count, queued_jobs, stream
from widgetry.app import create_app
from widgetry.settings import Settings

BODY = {"sku": "IDEM-1", "name": "Once", "price_cents": 100}


def keyed(key: str) -> dict[str, str]:
    return AUTH | {"Idempotency-Key": key}


async def test_the_same_key_and_body_returns_the_original_command(client: httpx.AsyncClient, app: Litestar) -> None:
    first = await client.post("/widgets", json=BODY, headers=keyed("k-1") | WAIT)
    again = await client.post("/widgets", json=BODY, headers=keyed("k-1"))

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert await count(app, CommandRecord) == 1
    assert await queued_jobs(app) == 1
    assert [e["type"] for e in await stream(app)] == ["widget.created"]


async def test_the_same_key_with_another_body_is_422_and_changes_nothing(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    await client.post("/widgets", json=BODY, headers=keyed("k-2") | WAIT)

    reused = await client.post("/widgets", json=BODY | {"price_cents": 101}, headers=keyed("k-2"))
    other_path = await client.patch("/widgets/IDEM-1", json={"price_cents": 101}, headers=keyed("k-2"))

    for response in (reused, other_path):
        assert response.status_code == 422
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"].endswith("/idempotency-key-reused")
    assert await count(app, CommandRecord) == 1


async def test_concurrent_duplicates_make_one_command_and_one_widget(client: httpx.AsyncClient, app: Litestar) -> None:
    responses = await asyncio.gather(*(client.post("/widgets", json=BODY, headers=keyed("k-3")) for _ in range(20)))

    assert {r.status_code for r in responses} <= {200, 202}
    assert len({r.json()["id"] for r in responses}) == 1
    done = await client.post("/widgets", json=BODY | {"sku": "IDEM-2"}, headers=AUTH | WAIT)
    assert done.status_code == 200
    assert await count(app, CommandRecord) == 2
    assert [e["type"] for e in await stream(app)] == ["widget.created", "widget.created"]


async def test_without_a_key_repeats_are_separate_commands(client: httpx.AsyncClient, app: Litestar) -> None:
    await client.post("/widgets", json=BODY, headers=AUTH | WAIT)
    second = await client.post("/widgets", json=BODY, headers=AUTH | WAIT)

    assert second.status_code == 409
    assert await count(app, CommandRecord) == 2


async def test_a_key_longer_than_255_characters_is_refused(client: httpx.AsyncClient, app: Litestar) -> None:
    response = await client.post("/widgets", json=BODY, headers=keyed("k" * 256))

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await count(app, CommandRecord) == 0


async def test_each_api_key_has_idempotency_keys_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two clients send the same key with the same body: each gets a command of its own (the second one then fails,
    as a second create of the sku does), neither is handed the other's."""
    monkeypatch.chdir(tmp_path)
    app = create_app(Settings(api_keys=(API_KEY, "another-client-key")))
    async with serve(app) as client:
        mine = await client.post("/widgets", json=BODY, headers=keyed("shared") | WAIT)
        theirs = await client.post(
            "/widgets", json=BODY, headers={"X-API-Key": "another-client-key", "Idempotency-Key": "shared"} | WAIT
        )
        again = await client.post("/widgets", json=BODY, headers=keyed("shared"))

        assert (mine.status_code, theirs.status_code, again.status_code) == (200, 409, 200)
        assert theirs.headers["location"] != mine.headers["location"]
        assert again.json()["id"] == mine.json()["id"]
        assert await count(app, CommandRecord) == 2
        assert [e["type"] for e in await stream(app)] == ["widget.created", "command.failed"]
        async with app.state.connections.alchemy.get_session() as session:
            stored = set(await session.scalars(select(CommandRecord.idempotency_key)))
    assert len(stored) == 2
    assert "shared" not in stored, "keys are stored as digests, scoped to the client"
