"""The event stream's AsyncAPI document is valid AsyncAPI 3.0, and the events a live server sends match it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import jsonschema
from httpx_sse import ServerSentEvent, aconnect_sse

from tests.support import AUTH, ROOT, WAIT, Server

ASYNCAPI_3_SCHEMA = json.loads((ROOT / "tests" / "contracts" / "asyncapi-3.0.0.schema.json").read_text())
READ_TIMEOUT_S = 20


def payload_validator(document: dict[str, Any], event_type: str) -> jsonschema.Draft7Validator:
    """The schema of the message named `event_type`, its references resolved within the document."""
    (message,) = [m for m in document["components"]["messages"].values() if m["name"] == event_type]
    return jsonschema.Draft7Validator({**message["payload"], "components": document["components"]})


async def read_until(url: str, done: str, started: asyncio.Event, **kwargs: Any) -> list[ServerSentEvent]:
    """Every event of the stream up to and including the first of type `done`."""
    events: list[ServerSentEvent] = []
    async with httpx.AsyncClient(timeout=READ_TIMEOUT_S) as client, asyncio.timeout(READ_TIMEOUT_S):
        async with aconnect_sse(client, "GET", url, **kwargs) as source:
            source.response.raise_for_status()
            started.set()
            async for event in source.aiter_sse():
                if event.data:
                    events.append(event)
                if event.event == done:
                    return events
    raise AssertionError(f"the stream ended before a {done} event: {[e.event for e in events]}")


async def test_the_document_is_valid_asyncapi_3(server: Server) -> None:
    response = httpx.get(f"{server.url}/schema/asyncapi.json")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    jsonschema.Draft7Validator(ASYNCAPI_3_SCHEMA).validate(response.json())
    names = {message["name"] for message in response.json()["components"]["messages"].values()}
    assert names == {
        "widget.created",
        "widget.updated",
        "widget.deleted",
        "command.failed",
        "command.progress",
        "command.completed",
        "stream.reset",
    }


async def test_every_kind_of_event_a_live_stream_sends_matches_the_document(server: Server) -> None:
    document = httpx.get(f"{server.url}/schema/asyncapi.json").json()
    started = asyncio.Event()
    # No sku filter: an import's own events (progress, completed) belong to no sku.
    watcher = asyncio.create_task(read_until(f"{server.url}/events", "command.completed", started))
    await asyncio.wait_for(started.wait(), READ_TIMEOUT_S)
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH | WAIT) as client:
        body = {"sku": "AA-1", "name": "Gear", "price_cents": 500, "internal_notes": "kept inside"}
        statuses = [
            (await client.post("/widgets", json=body)).status_code,
            (await client.patch("/widgets/AA-1", json={"price_cents": 650})).status_code,
            (await client.post("/widgets", json=body)).status_code,
            (await client.delete("/widgets/AA-1")).status_code,
            (
                await client.post(
                    "/widgets/imports",
                    json={"widgets": [{"sku": f"AA-{n}", "name": "Cog", "price_cents": n} for n in (2, 3)]},
                )
            ).status_code,
        ]
    assert statuses == [200, 200, 409, 200, 200]
    events = await watcher
    reset = await read_until(
        f"{server.url}/events", "stream.reset", asyncio.Event(), headers={"Last-Event-ID": "not-a-position"}
    )

    seen = [*events, reset[0]]
    assert {event.event for event in seen} == {message["name"] for message in document["components"]["messages"].values()}
    for event in seen:
        payload = json.loads(event.data)
        errors = [error.message for error in payload_validator(document, event.event).iter_errors(payload)]
        assert errors == [], (event.event, payload)


def test_a_leaked_field_would_not_match_the_document(server: Server) -> None:
    document = httpx.get(f"{server.url}/schema/asyncapi.json").json()
    widget = {"sku": "AA-9", "name": "Gear", "price_cents": 1, "version": 1, "created_at": "2026-11-30T00:00:00Z"}
    envelope = {
        "event_id": "0193a0d2-1c7e-7f00-8000-000000000001",
        "type": "widget.created",
        "sku": "AA-9",
        "version": 1,
        "command_id": "0193a0d2-1c7e-7f00-8000-000000000002",
        "occurred_at": "2026-11-30T00:00:00Z",
        "data": widget | {"updated_at": "2026-11-30T00:00:00Z"},
    }
    validator = payload_validator(document, "widget.created")

    assert validator.is_valid(envelope)
    assert not validator.is_valid(envelope | {"data": envelope["data"] | {"internal_notes": "secret"}})
