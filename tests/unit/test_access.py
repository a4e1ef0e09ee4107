"""Hostile access: a cap on open event streams per client, and no CORS unless asked for (request budgets are in
`test_rate_limit`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import msgspec
import uvicorn
from litestar import Litestar

from tests.support import API_KEY, AUTH, eventually, free_port, running, serve
from tests.unit.test_bad_input import assert_problem
from widgetry.app import create_app
from widgetry.settings import Settings

OTHER_KEY = "other-api-key"
ORIGIN = "https://dashboard.example"
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}


def limited(settings: Settings, **changes: object) -> Litestar:
    return create_app(msgspec.structs.replace(settings, api_keys=(API_KEY, OTHER_KEY), **changes))


@contextlib.asynccontextmanager
async def live(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """The app behind a real HTTP server on this event loop, and a client of it: in-process transports buffer a whole
    response, and an event stream never ends."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    async with running(app):
        serving = asyncio.create_task(server.serve())

        async def started() -> bool:
            if serving.done():
                serving.result()
            return server.started

        await eventually(started, 10, "the server to start")
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=10) as client:
                yield client
        finally:
            server.should_exit = True
            await serving


@contextlib.asynccontextmanager
async def open_stream(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> AsyncIterator[None]:
    """An event stream held open until the block ends."""
    async with client.stream("GET", "/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield


async def open_streams_are(app: Litestar, expected: int) -> None:
    """Counted twice: the places the cap holds, and the hub's subscribers (a stream whose client left is
    unsubscribed)."""

    async def counted() -> bool:
        return app.state.open_streams.total == expected == app.state.hub.subscriber_count

    await eventually(counted, 10, f"{expected} open streams")


async def test_a_stream_over_the_cap_is_refused_until_one_closes(embedded_settings: Settings) -> None:
    app = limited(embedded_settings, sse_connections_per_client=2)
    async with live(app) as client:
        async with open_stream(client):
            async with open_stream(client):
                refused = await client.get("/events")

                problem = assert_problem(refused, 429)
                assert problem["type"].endswith("/problems/too-many-streams")
                assert int(refused.headers["retry-after"]) >= 1
            await open_streams_are(app, 1)
            async with open_stream(client):
                await open_streams_are(app, 2)
        await open_streams_are(app, 0)


async def test_each_api_key_has_a_stream_cap_of_its_own(embedded_settings: Settings) -> None:
    app = limited(embedded_settings, sse_connections_per_client=1)
    async with (
        live(app) as client,
        open_stream(client, AUTH),
        open_stream(client, {"X-API-Key": OTHER_KEY}),
        open_stream(client),
    ):
        refused = [
            await client.get("/events", headers=headers)
            for headers in (AUTH, {"X-API-Key": OTHER_KEY}, {}, {"X-API-Key": "made-up"})
        ]

        assert [response.status_code for response in refused] == [429, 429, 429, 429]
        assert app.state.open_streams.total == 3


async def test_streams_the_server_ends_give_their_places_back(embedded_settings: Settings) -> None:
    app = limited(embedded_settings, sse_connections_per_client=2)
    async with live(app) as client, open_stream(client), open_stream(client):
        await open_streams_are(app, 2)
        # What shutdown and a slow consumer's overflow both do: the hub closes the subscription.
        app.state.hub.close_subscribers()
        await open_streams_are(app, 0)
        async with open_stream(client), open_stream(client):
            await open_streams_are(app, 2)


async def test_no_cors_headers_by_default(client: httpx.AsyncClient) -> None:
    preflight = await client.options("/widgets", headers=PREFLIGHT)
    read = await client.get("/widgets", headers={"Origin": ORIGIN})

    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in read.headers


async def test_listed_origins_get_cors_headers(embedded_settings: Settings) -> None:
    app = create_app(msgspec.structs.replace(embedded_settings, cors_origins=(ORIGIN,)))
    async with serve(app) as client:
        preflight = await client.options("/widgets", headers=PREFLIGHT)
        read = await client.get("/widgets", headers={"Origin": ORIGIN})
        stranger = await client.get("/widgets", headers={"Origin": "https://elsewhere.example"})

    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
    assert read.headers["access-control-allow-origin"] == ORIGIN
    assert "location" in read.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-origin" not in stranger.headers


def test_the_stream_cap_and_origins_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "WIDGETRY_SSE_CONNECTIONS_PER_CLIENT": "3",
            "WIDGETRY_CORS_ORIGINS": "https://a.example, https://b.example",
        }
    )

    assert settings.sse_connections_per_client == 3
    assert settings.cors_origins == ("https://a.example", "https://b.example")
