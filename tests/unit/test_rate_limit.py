"""Rate limits: a budget for writes and one for reads per client, that an ordinary client never meets and a flood
does; refusals as problems that say when to retry; counts summed across web processes in Redis; the client address
taken from `X-Forwarded-For` only when a trusted proxy sent it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from hashlib import sha256

import httpx
import msgspec
import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from litestar import Litestar
from redis.asyncio import Redis

from tests.support import API_KEY, AUTH, free_port, running, serve
from tests.unit.state import CommandRecord, count
from tests.unit.test_bad_input import GOOD, assert_problem
from widgetry.api.limits import Budget, RateLimiter
from widgetry.app import create_app
from widgetry.cli import server_config
from widgetry.settings import Settings

OTHER_KEY = "other-api-key"
FLOOD_PER_MINUTE = 50_000
LOW_COST = "/widgets/NO-SUCH-SKU"
"""A read that touches one index and answers 404: the cheapest route that is rate limited."""
EXEMPT = ("/health", "/ready", "/schema/openapi.json", "/problems", "/problems/too-many-requests",
          "/ui/static/dashboard.css")  # fmt: skip
"""`/metrics` is not among them: its scrapes count as reads (test_metrics.py), so anonymous scrapers cannot crowd
out the service's readers."""


def limited(settings: Settings, **changes: object) -> Litestar:
    return create_app(msgspec.structs.replace(settings, api_keys=(API_KEY, OTHER_KEY), **changes))


def assert_too_many_requests(response: httpx.Response, limit: int) -> None:
    problem = assert_problem(response, 429)
    assert problem["type"].endswith("/problems/too-many-requests")
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    assert response.headers["ratelimit-limit"] == str(limit)
    assert response.headers["ratelimit-policy"].startswith(f"{limit}; w=")
    assert response.headers["ratelimit-remaining"] == "0"
    assert response.headers["ratelimit-reset"] == str(retry_after)


def uniform(count: int, start_s: float, duration_s: float) -> Iterator[float]:
    """`count` moments spread evenly over `duration_s` from `start_s`."""
    return (start_s + duration_s * n / count for n in range(count))


def refused(budget: Budget, moments: Iterator[float], client: str = "address:203.0.113.9") -> int:
    return sum(budget.take(client, now).retry_after_s is not None for now in moments)


def default_budget(name: str) -> Budget:
    budget = Budget.of(name, getattr(Settings(), f"rate_limit_{name}"))
    assert budget is not None
    return budget


# The default budgets against the figures they are made for, on a clock the test sets: a minute's traffic in
# milliseconds. Each window phase is tried, since a sliding window weighs the previous window by how much of it
# is still covered.
PHASES_S = (0.0, 0.25, 0.5, 0.75, 15.0, 30.0, 45.0)
START_S = 1_800_000_000.0


@pytest.mark.parametrize("phase_s", PHASES_S)
def test_the_default_budgets_let_600_writes_at_once_and_1500_polls_a_minute_through(phase_s: float) -> None:
    writes, reads = default_budget("writes"), default_budget("reads")
    start = START_S + phase_s

    # As fast as a client can (well beyond the service's ~650 writes a second), then polls: evenly over the minute,
    # and all at once.
    assert refused(writes, uniform(600, start, 0.2)) == 0
    assert refused(reads, uniform(1_500, start, 60), "key:polling") == 0
    assert refused(reads, uniform(1_500, start, 0.5), "key:impatient") == 0


@pytest.mark.parametrize("phase_s", PHASES_S)
def test_the_default_write_budget_keeps_up_with_the_service(phase_s: float) -> None:
    writes = default_budget("writes")

    assert refused(writes, uniform(650 * 60, START_S + phase_s, 60)) == 0


@pytest.mark.parametrize("budget", ["writes", "reads"])
@pytest.mark.parametrize("phase_s", PHASES_S)
def test_the_default_budgets_refuse_a_flood_of_50000_requests_a_minute(budget: str, phase_s: float) -> None:
    assert refused(default_budget(budget), uniform(FLOOD_PER_MINUTE, START_S + phase_s, 60)) > 0


async def test_one_key_writing_600_commands_and_polling_1500_times_gets_no_429(embedded_settings: Settings) -> None:
    async with serve(create_app(embedded_settings)) as client:
        writes = await asyncio.gather(
            *(client.post("/widgets", json={**GOOD, "sku": f"W-{n}"}, headers=AUTH) for n in range(600))
        )
        location = writes[-1].headers["location"]
        polls = [await client.get(location, headers=AUTH) for _ in range(1_500)]

    assert {response.status_code for response in writes} == {202}
    assert {response.status_code for response in polls} == {200}
    assert int(polls[-1].headers["ratelimit-remaining"]) > 0


async def test_a_flood_from_one_address_is_refused(embedded_settings: Settings) -> None:
    # The flood 250 times smaller, against a read budget 250 times smaller than the default.
    app = limited(embedded_settings, rate_limit_reads="120/minute")
    async with serve(app) as client:
        responses = [await client.get(LOW_COST) for _ in range(FLOOD_PER_MINUTE // 250)]

    assert {response.status_code for response in responses[:120]} == {404}
    assert len(responses[120:]) == 80
    for response in responses[120:]:
        assert_too_many_requests(response, 120)


async def test_writes_and_reads_have_budgets_of_their_own(embedded_settings: Settings) -> None:
    app = limited(embedded_settings, rate_limit_writes="2/minute", rate_limit_reads="3/minute")
    async with serve(app) as client:
        writes = [await client.post("/widgets", json={**GOOD, "sku": f"W-{n}"}, headers=AUTH) for n in range(3)]
        reads = [await client.get("/widgets", headers=AUTH) for _ in range(4)]

    assert [response.status_code for response in writes[:2]] == [202, 202]
    assert_too_many_requests(writes[2], 2)
    assert "2 writes per minute" in writes[2].json()["detail"]
    assert [response.status_code for response in reads[:3]] == [200, 200, 200]
    assert_too_many_requests(reads[3], 3)


async def test_each_api_key_has_a_budget_of_its_own(embedded_settings: Settings) -> None:
    async with serve(limited(embedded_settings, rate_limit_reads="2/minute")) as client:
        first = [await client.get("/widgets", headers=AUTH) for _ in range(3)]
        other = [await client.get("/widgets", headers={"X-API-Key": OTHER_KEY}) for _ in range(2)]
        anonymous = await client.get("/widgets")

    assert [response.status_code for response in first[:2]] == [200, 200]
    assert_too_many_requests(first[2], 2)
    assert [response.status_code for response in other] == [200, 200]
    assert anonymous.status_code == 200


async def test_made_up_keys_share_the_budget_of_their_address(embedded_settings: Settings) -> None:
    async with serve(limited(embedded_settings, rate_limit_reads="2/minute")) as client:
        responses = [await client.get("/widgets", headers={"X-API-Key": f"made-up-{n}"}) for n in range(3)]

    assert [response.status_code for response in responses[:2]] == [200, 200]
    assert_too_many_requests(responses[2], 2)


async def test_a_rate_limited_write_records_and_queues_nothing(embedded_settings: Settings) -> None:
    app = limited(embedded_settings, rate_limit_writes="1/minute")
    async with serve(app) as client:
        spent = await client.post("/widgets", json=GOOD, headers=AUTH)
        refused_write = await client.post("/widgets", json={**GOOD, "sku": "W-2"}, headers=AUTH)

        assert spent.status_code == 202
        assert_too_many_requests(refused_write, 1)
        assert await count(app, CommandRecord) == 1


async def test_counted_responses_say_where_the_client_stands(embedded_settings: Settings) -> None:
    async with serve(limited(embedded_settings, rate_limit_reads="10/minute")) as client:
        responses = [await client.get("/widgets", headers=AUTH) for _ in range(3)]

    assert [response.headers["ratelimit-remaining"] for response in responses] == ["9", "8", "7"]
    assert {response.headers["ratelimit-limit"] for response in responses} == {"10"}
    assert {response.headers["ratelimit-policy"] for response in responses} == {"10; w=60"}
    assert all(1 <= int(response.headers["ratelimit-reset"]) <= 60 for response in responses)


async def test_probes_problem_pages_static_files_and_the_schema_are_never_limited(
    embedded_settings: Settings,
) -> None:
    async with serve(limited(embedded_settings, rate_limit_reads="1/minute")) as client:
        spent = await client.get("/widgets")
        refused_read = await client.get("/widgets")
        exempt = [await client.get(path) for path in EXEMPT for _ in range(3)]

    assert spent.status_code == 200
    assert_too_many_requests(refused_read, 1)
    assert [response.status_code for response in exempt] == [200] * len(EXEMPT) * 3
    assert not [response for response in exempt if "ratelimit-limit" in response.headers]


async def test_with_both_budgets_off_nothing_is_counted(embedded_settings: Settings) -> None:
    app = limited(embedded_settings, rate_limit_writes="off", rate_limit_reads="off")
    async with serve(app) as client:
        responses = [await client.get("/widgets", headers=AUTH) for _ in range(30)]
        keys = [key async for key in app.state.connections.redis.scan_iter("*rate-limit*")]

    assert app.state.rate_limiter is None
    assert {response.status_code for response in responses} == {200}
    assert "ratelimit-limit" not in responses[-1].headers
    assert keys == []


def limiter_on(redis: Redis, budget: str = "3/minute") -> RateLimiter:
    return RateLimiter(redis, "test:rate-limit", writes=Budget.of("writes", budget), reads=None)


async def test_web_processes_sharing_redis_share_each_clients_budget() -> None:
    server = FakeServer()
    first, second = limiter_on(FakeRedis(server=server)), limiter_on(FakeRedis(server=server))
    assert first.writes is not None and second.writes is not None
    now = 1_800_000_010.0

    taken = [first.writes.take("key:a", now) for _ in range(2)]
    await first.sync()
    taken.append(second.writes.take("key:a", now))
    await second.sync()

    assert [verdict.retry_after_s for verdict in taken] == [None, None, None]
    assert second.writes.take("key:a", now).retry_after_s is not None
    assert second.writes.take("key:b", now).retry_after_s is None


async def test_without_redis_each_process_still_counts_its_own_requests(caplog: pytest.LogCaptureFixture) -> None:
    unreachable = Redis(port=free_port(), socket_connect_timeout=1)
    limiter = limiter_on(unreachable, "2/minute")
    assert limiter.writes is not None
    now = 1_800_000_010.0

    verdicts = [limiter.writes.take("key:a", now)]
    await limiter.sync()
    verdicts += [limiter.writes.take("key:a", now) for _ in range(2)]

    assert [verdict.retry_after_s is None for verdict in verdicts] == [True, True, False]
    assert "Redis is unavailable" in caplog.text
    await unreachable.aclose()


async def test_clients_gone_quiet_for_two_windows_are_forgotten() -> None:
    now = [1_800_000_010.0]
    limiter = RateLimiter(None, "test:rate-limit", Budget.of("writes", "5/minute"), None, clock=lambda: now[0])
    assert limiter.writes is not None
    limiter.writes.take("key:quiet", now[0])
    limiter.writes.take("key:busy", now[0])

    now[0] += 60
    limiter.writes.take("key:busy", now[0])
    await limiter.sync()
    remembered_a_window_on = set(limiter.writes.windows)
    now[0] += 60
    limiter.writes.take("key:busy", now[0])
    await limiter.sync()

    assert remembered_a_window_on == {"key:quiet", "key:busy"}
    assert set(limiter.writes.windows) == {"key:busy"}


async def test_the_raw_api_key_is_in_no_redis_key_and_no_log_line(
    embedded_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = limited(embedded_settings, rate_limit_writes="2/minute")
    # As where web processes share a Redis server (on the embedded defaults the counts stay in the one process).
    app.state.rate_limiter.redis = app.state.connections.redis
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
            await app.state.rate_limiter.sync()
            redis = app.state.connections.redis
            keys = [key.decode() async for key in redis.scan_iter("*")]
            values = [await redis.get(key) for key in keys if "rate-limit" in key]
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)

    windows = [key for key in keys if key.startswith(f"{embedded_settings.redis_prefix}:rate-limit:")]
    # One per accepted key and budget, one for the address the unknown key came from.
    assert len(windows) == 3
    assert [key for key in windows if f":writes:key:{sha256(API_KEY.encode()).hexdigest()}:" in key]
    assert not [key for key in keys if API_KEY in key or OTHER_KEY in key]
    assert not [value for value in values if API_KEY.encode() in value or OTHER_KEY.encode() in value]
    assert caplog.records
    assert API_KEY not in caplog.text
    assert OTHER_KEY not in caplog.text
    assert "wrong-key" not in caplog.text


async def served_as_widgetry_run_serves(app: Litestar, forwarded_for: list[str]) -> list[int]:
    """Reads from 127.0.0.1 through the server `widgetry run` configures, one per `X-Forwarded-For` value."""
    config = server_config(app, "127.0.0.1", 0, "warning")
    config.load()
    transport = httpx.ASGITransport(app=config.loaded_app, client=("127.0.0.1", 40000))
    async with running(app), httpx.AsyncClient(transport=transport, base_url="http://widgetry") as client:
        return [(await client.get(LOW_COST, headers={"X-Forwarded-For": value})).status_code for value in forwarded_for]


async def test_x_forwarded_for_is_ignored_unless_a_trusted_proxy_sends_it(embedded_settings: Settings) -> None:
    app = limited(embedded_settings, rate_limit_reads="1/minute")

    statuses = await served_as_widgetry_run_serves(app, ["198.51.100.1", "198.51.100.2"])

    assert statuses == [404, 429]


async def test_behind_trusted_proxies_the_right_most_untrusted_forwarded_address_is_the_client(
    embedded_settings: Settings,
) -> None:
    app = limited(embedded_settings, rate_limit_reads="1/minute", trusted_proxies=("127.0.0.1", "10.0.0.0/8"))

    statuses = await served_as_widgetry_run_serves(
        app,
        [
            "198.51.100.1",
            "198.51.100.2, 10.1.2.3",  # through a second trusted proxy
            "203.0.113.66, 198.51.100.3",  # a client claiming another address before its own
            "203.0.113.66",  # that other address, not spent by the claim
            "198.51.100.1",
        ],
    )

    assert statuses == [404, 404, 404, 404, 429]


def test_the_limits_and_proxies_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "WIDGETRY_RATE_LIMIT_WRITES": "100/hour",
            "WIDGETRY_RATE_LIMIT_READS": "off",
            "WIDGETRY_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7",
            "WIDGETRY_SSE_CONNECTIONS_PER_CLIENT": "3",
        }
    )

    assert Settings.rate(settings.rate_limit_writes) == (100, "hour")
    assert Settings.rate(settings.rate_limit_reads) is None
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.0.2.7")
    assert settings.sse_connections_per_client == 3
    assert Settings().trusted_proxies == ()


@pytest.mark.parametrize(
    "variable",
    [
        {"WIDGETRY_RATE_LIMIT_WRITES": "ten/minute"},
        {"WIDGETRY_RATE_LIMIT_READS": "0/minute"},
        {"WIDGETRY_RATE_LIMIT_READS": "5/fortnight"},
        {"WIDGETRY_RATE_LIMIT_WRITES": "5"},
        {"WIDGETRY_TRUSTED_PROXIES": "proxy.example"},
        {"WIDGETRY_TRUSTED_PROXIES": "10.0.0.0/33"},
    ],
)
def test_a_malformed_limit_or_proxy_stops_the_start(variable: dict[str, str]) -> None:
    with pytest.raises(msgspec.ValidationError, match=next(iter(variable)).removeprefix("WIDGETRY_").lower()):
        Settings.from_env(variable)


def test_the_replaced_single_rate_limit_setting_stops_the_start_unless_it_turns_limits_off() -> None:
    with pytest.raises(ValueError, match="WIDGETRY_RATE_LIMIT_WRITES and WIDGETRY_RATE_LIMIT_READS"):
        Settings.from_env({"WIDGETRY_RATE_LIMIT": "1200/minute"})
    settings = Settings.from_env({"WIDGETRY_RATE_LIMIT": "off"})
    assert (settings.rate_limit_writes, settings.rate_limit_reads) == ("off", "off")
