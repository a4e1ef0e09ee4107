"""Hostile access: a budget of requests per client, a cap on open event streams, no CORS unless asked for, and
API keys that never appear in the clear in Redis or in the logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from hashlib import sha256

import httpx
import msgspec
import pytest
import uvicorn
from litestar import Litestar

from tests.support import API_KEY, AUTH, eventually, free_port, running, serve
from tests.unit.state import CommandRecord, count, queued_jobs
from tests.unit.test_bad_input import GOOD, assert_problem
from widgetry.app import create_app
from widgetry.settings import Settings

OTHER_KEY = "other-api-key"
ORIGIN = "https://dashboard.example"
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}


def limited(settings: Settings, **changes: object) -> Litestar:
    return create_app(msgspec.structs.replace(settings, api_keys=(API_KEY, OTHER_KEY), **changes))


def assert_too_many_requests(response: httpx.Response) -> None:
    problem = assert_problem(response, 429)
    assert problem["type"].endswith("/problems/too-many-requests")
    assert 1 <= int(response.headers["retry-after"]) <= 60


async def test_the_request_over_the_budget_is_a_429_problem_with_retry_after(embedded_settings: Settings) -> None:
    async with serve(limited(embedded_settings, rate_limit="3/minute")) as client:
        within = [await client.get("/widgets", headers=AUTH) for _ in range(3)]
        over = await client.get("/widgets", headers=AUTH)

    assert [response.status_code for response in within] == [200, 200, 200]
    assert_too_many_requests(over)


async def test_each_api_key_has_a_budget_of_its_own(embedded_settings: Settings) -> None:
    async with serve(limited(embedded_settings, rate_limit="2/minute")) as client:
        first = [await client.get("/widgets", headers=AUTH) for _ in range(3)]
        other = [await client.get("/widgets", headers={"X-API-Key": OTHER_KEY}) for _ in range(2)]
        anonymous = await client.get("/widgets")

    assert [response.status_code for response in first[:2]] == [200, 200]
    assert_too_many_requests(first[2])
    assert [response.status_code for response in other] == [200, 200]
    assert anonymous.status_code == 200


async def test_made_up_keys_share_the_budget_of_their_address(embedded_settings: Settings) -> None:
    async with serve(limited(embedded_settings, rate_limit="2/minute")) as client:
        responses = [await client.get("/widgets", headers={"X-API-Key": f"made-up-{n}"}) for n in range(3)]

    assert [response.status_code for response in responses[:2]] == [200, 200]
    assert_too_many_requests(responses[2])


async def test_a_rate_limited_write_records_and_queues_nothing(embedded_settings: Settings) -> None:
    app = limited(embedded_settings, rate_limit="2/minute")
    async with serve(app) as client:
        spent = [await client.get("/widgets", headers=AUTH) for _ in range(2)]
        refused = await client.post("/widgets", json=GOOD, headers=AUTH)

        assert [response.status_code for response in spent] == [200, 200]
        assert_too_many_requests(refused)
        assert await count(app, CommandRecord) == 0
        assert await queued_jobs(app) == 0


async def test_health_readiness_and_the_schema_are_never_limited(embedded_settings: Settings) -> None:
    async with serve(limited(embedded_settings, rate_limit="1/minute")) as client:
        spent = await client.get("/widgets")
        refused = await client.get("/widgets")
        probes = [await client.get(path) for path in ("/health", "/ready", "/schema/openapi.json") for _ in range(5)]

    assert spent.status_code == 200
    assert_too_many_requests(refused)
    assert [response.status_code for response in probes] == [200] * 15


async def test_with_the_rate_limit_off_nothing_is_counted(embedded_settings: Settings) -> None:
    app = limited(embedded_settings, rate_limit="off")
    async with serve(app) as client:
        responses = [await client.get("/widgets", headers=AUTH) for _ in range(30)]
        keys = [key async for key in app.state.connections.redis.scan_iter("*rate-limit*")]

    assert {response.status_code for response in responses} == {200}
    assert "ratelimit-limit" not in responses[-1].headers
    assert keys == []


async def test_the_raw_api_key_is_in_no_redis_key_and_no_log_line(
    embedded_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = limited(embedded_settings, rate_limit="2/minute")
    # Litestar's logging configuration replaces the root's handlers, and its own logger does not propagate.
    loggers = [logging.getLogger(), logging.getLogger("litestar")]
    for logger in loggers:
        logger.addHandler(caplog.handler)
    try:
        async with serve(app) as client:
            for _ in range(3):
                await client.post("/widgets", json=GOOD, headers=AUTH)
            await client.get("/widgets", headers={"Authorization": f"Bearer {OTHER_KEY}"})
            await client.post("/widgets", json=GOOD, headers={"X-API-Key": "wrong-key"})
            redis = app.state.connections.redis
            keys = [key.decode() async for key in redis.scan_iter("*")]
            values = [await redis.get(key) for key in keys if "rate-limit" in key]
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)

    windows = [key for key in keys if key.startswith(f"{embedded_settings.redis_prefix}:rate-limit:")]
    assert len(windows) == 3  # one per accepted key, one for the address the unknown key came from
    assert [key for key in windows if key.endswith(f"key:{sha256(API_KEY.encode()).hexdigest()}")]
    assert not [key for key in keys if API_KEY in key or OTHER_KEY in key]
    assert not [value for value in values if API_KEY.encode() in value or OTHER_KEY.encode() in value]
    assert caplog.records
    assert API_KEY not in caplog.text
    assert OTHER_KEY not in caplog.text
    assert "wrong-key" not in caplog.text


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
    async def counted() -> bool:
        return app.state.open_streams.total == expected

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


def test_the_limits_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "WIDGETRY_RATE_LIMIT": "100/hour",
            "WIDGETRY_SSE_CONNECTIONS_PER_CLIENT": "3",
            "WIDGETRY_CORS_ORIGINS": "https://a.example, https://b.example",
        }
    )

    assert settings.rate_limit_rule == ("hour", 100)
    assert settings.sse_connections_per_client == 3
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert Settings.from_env({"WIDGETRY_RATE_LIMIT": "off"}).rate_limit_rule is None


@pytest.mark.parametrize("value", ["ten/minute", "0/minute", "5/fortnight", "5"])
def test_a_malformed_rate_limit_stops_the_start(value: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="rate_limit"):
        Settings.from_env({"WIDGETRY_RATE_LIMIT": value})
