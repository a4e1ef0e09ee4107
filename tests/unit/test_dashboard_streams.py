"""The dashboard's event stream against a live server: it ends when its session ends or its key is revoked (as does
a key's stream where reads need a key), and a signed-in page holds streams of its own, whatever anonymous readers
at its address hold."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import msgspec
from httpx_sse import EventSource

from tests.support import API_KEY, AUTH, eventually
from tests.unit.test_access import live, open_stream, open_streams_are
from tests.unit.test_bad_input import assert_problem
from tests.unit.test_dashboard import WIDGET, signed_in
from tests.unit.test_keys import issue, revoke
from widgetry.app import create_app
from widgetry.domain.events import EventType
from widgetry.settings import Settings

ENDS_WITHIN_S = 10


@contextlib.asynccontextmanager
async def another_browser(client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the same server with a cookie jar of its own."""
    async with httpx.AsyncClient(base_url=client.base_url, timeout=client.timeout) as other:
        yield other


async def ended(response: httpx.Response) -> bytes:
    """Everything the stream still sends, once the server has ended it."""
    async with asyncio.timeout(ENDS_WITHIN_S):
        return b"".join([chunk async for chunk in response.aiter_bytes()])


async def next_event(response: httpx.Response, event_type: str) -> dict[str, object]:
    async with asyncio.timeout(ENDS_WITHIN_S):
        async for event in EventSource(response).aiter_sse():
            if event.event == event_type:
                return event.json()
    raise AssertionError(f"the stream ended before a {event_type} event")


async def test_signing_out_ends_the_sessions_open_stream_and_no_other(embedded_settings: Settings) -> None:
    app = create_app(msgspec.structs.replace(embedded_settings, api_key_cache_seconds=0.2))
    async with live(app) as leaving, another_browser(leaving) as staying:
        token = await signed_in(leaving)
        await signed_in(staying)
        async with (
            leaving.stream("GET", "/ui/events") as signed_out_stream,
            staying.stream("GET", "/ui/events") as signed_in_stream,
        ):
            signed_out = await leaving.post("/ui/sign-out", headers=token)
            rest = await ended(signed_out_stream)
            created = await leaving.post("/widgets", json=WIDGET, headers=AUTH)
            seen = await next_event(signed_in_stream, EventType.WIDGET_CREATED)

    assert (signed_out_stream.status_code, signed_in_stream.status_code) == (200, 200)
    assert signed_out.status_code == 200
    assert EventType.WIDGET_CREATED.encode() not in rest
    assert created.status_code == 202
    assert seen["sku"] == WIDGET["sku"]


async def test_revoking_a_key_ends_the_streams_signed_in_with_it(embedded_settings: Settings) -> None:
    settings = msgspec.structs.replace(embedded_settings, protect_reads=True, api_key_cache_seconds=0.2)
    app = create_app(settings)
    async with live(app) as client:
        key = await issue(app, "browser")
        await signed_in(client, key)
        async with (
            client.stream("GET", "/ui/events") as page_stream,
            client.stream("GET", "/events", headers={"X-API-Key": key}) as key_stream,
            client.stream("GET", "/events", headers=AUTH) as other_key_stream,
        ):
            await revoke(app, "browser")
            await ended(page_stream)
            await ended(key_stream)
            created = await client.post("/widgets", json=WIDGET, headers=AUTH)
            seen = await next_event(other_key_stream, EventType.WIDGET_CREATED)
            reopened = await client.get("/ui/events")

    assert [s.status_code for s in (page_stream, key_stream, other_key_stream)] == [200, 200, 200]
    assert created.status_code == 202 and seen["sku"] == WIDGET["sku"]
    assert_problem(reopened, 401)


async def test_a_signed_in_page_streams_apart_from_anonymous_readers_at_its_address(
    embedded_settings: Settings,
) -> None:
    app = create_app(msgspec.structs.replace(embedded_settings, sse_connections_per_client=1))
    async with live(app) as client, another_browser(client) as anonymous:
        await signed_in(client)
        async with open_stream(anonymous), client.stream("GET", "/ui/events") as page_stream:
            second_anonymous = await anonymous.get("/events")
            second_page = await client.get("/ui/events")
            same_key = await anonymous.get("/events", headers={"X-API-Key": API_KEY})

    assert page_stream.status_code == 200
    assert assert_problem(second_anonymous, 429)["type"].endswith("/too-many-streams")
    # The page counts against the key it signed in with: its own cap, shared with that key alone.
    assert_problem(second_page, 429)
    assert_problem(same_key, 429)


async def test_a_signed_in_stream_that_ends_either_way_leaves_nothing_behind(embedded_settings: Settings) -> None:
    app = create_app(embedded_settings)
    hub = app.state.hub

    async def subscribers_are(expected: int) -> None:
        async def counted() -> bool:
            return hub.subscriber_count == expected

        await eventually(counted, ENDS_WITHIN_S, f"{expected} hub subscribers")

    async with live(app) as client:
        await signed_in(client)
        async with client.stream("GET", "/ui/events") as kept:
            async with client.stream("GET", "/ui/events") as left:
                await subscribers_are(2)
                await open_streams_are(app, 2)
            await subscribers_are(1)  # the client went away
            await open_streams_are(app, 1)
            hub.close_subscribers()  # the server ends it (shutdown, a slow reader)
            await ended(kept)
            await subscribers_are(0)
            await open_streams_are(app, 0)

    assert (kept.status_code, left.status_code) == (200, 200)
