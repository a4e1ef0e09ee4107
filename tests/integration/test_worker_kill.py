"""A worker killed with SIGKILL mid-run loses nothing and applies nothing twice: its jobs are swept and re-run
(SAQ: `retries` and a `timeout` set on purpose), and the sku's applied_seq fence stops a second effect."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from tests.backends import REDIS_URL
from tests.integration.test_processes import compose_command
from tests.support import API_KEY, AUTH, Process, Server, eventually
from widgetry.domain.models import CommandRecord, EventRecord, Widget

COMMANDS = 600


@pytest.fixture
def env(empty_database: str, redis_prefix: str) -> dict[str, str]:
    return {
        "DATABASE_URL": empty_database,
        "REDIS_URL": REDIS_URL,
        "WIDGETRY_REDIS_PREFIX": redis_prefix,
        "WIDGETRY_API_KEYS": API_KEY,
        "WIDGETRY_WORKERS": "external",
        "WIDGETRY_JOB_TIMEOUT_SECONDS": "3",
    }


@pytest.fixture
def web(env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    server = Server(env, tmp_path, "web", args=compose_command("web"))
    yield server
    server.stop()


async def test_killing_a_worker_mid_run_loses_and_duplicates_nothing(
    web: Server, env: dict[str, str], redis_prefix: str, tmp_path: Path
) -> None:
    engine = create_async_engine(env["DATABASE_URL"].replace("postgresql://", "postgresql+asyncpg://"))

    async def finished() -> int:
        async with engine.connect() as connection:
            return await connection.scalar(
                select(func.count()).select_from(CommandRecord).where(CommandRecord.status != "accepted")
            )

    async def unpublished_events() -> int:
        async with engine.connect() as connection:
            return await connection.scalar(
                select(func.count()).select_from(EventRecord).where(EventRecord.stream_id.is_(None))
            )

    first = Process(compose_command("worker"), env, tmp_path, "worker-1")
    async with httpx.AsyncClient(base_url=web.url, headers=AUTH, timeout=30) as client:
        limit = asyncio.Semaphore(20)

        async def post(n: int) -> httpx.Response:
            async with limit:
                return await client.post("/widgets", json={"sku": f"K-{n}", "name": f"Kill {n}", "price_cents": n})

        accepted = await asyncio.gather(*(post(n) for n in range(COMMANDS)))
    assert {r.status_code for r in accepted} == {202}

    await eventually(lambda: _at_least(finished, 50), 30, "the first worker to apply some commands")
    first.stop(signal.SIGKILL)
    killed_at = await finished()
    second = Process(compose_command("worker"), env, tmp_path, "worker-2")
    try:
        await eventually(lambda: _at_least(finished, COMMANDS), 90, "every command to finish")
        # Jobs the kill interrupted after their commit are re-run by the sweep, and publish what they left.
        await eventually(lambda: _none(unpublished_events), 60, "every event to be published")
    finally:
        second.stop()

    async with engine.connect() as connection:
        statuses = dict(
            (await connection.execute(select(CommandRecord.status, func.count()).group_by(CommandRecord.status))).all()
        )
        widgets = await connection.scalar(select(func.count()).select_from(Widget))
        outbox = await connection.scalar(select(func.count()).select_from(EventRecord))
        unpublished = await connection.scalar(
            select(func.count()).select_from(EventRecord).where(EventRecord.stream_id.is_(None))
        )
    await engine.dispose()
    redis = aioredis.from_url(REDIS_URL)
    entries = await redis.xrange(f"{redis_prefix}:events")
    await redis.aclose()
    streamed = [msgspec.json.decode(fields[b"data"])["command_id"] for _id, fields in entries]
    expected = {r.json()["id"] for r in accepted}

    lost = len(expected - set(streamed))
    duplicated = len(streamed) - len(set(streamed))
    print(
        f"commands={COMMANDS} killed_after={killed_at} statuses={statuses} widgets={widgets} events={outbox} "
        f"streamed={len(streamed)} lost={lost} duplicated={duplicated} unpublished={unpublished}"
    )
    assert statuses == {"succeeded": COMMANDS}
    assert widgets == outbox == COMMANDS
    assert (lost, duplicated, unpublished) == (0, 0, 0)


async def _none(count: object) -> bool:
    return await count() == 0  # type: ignore[operator]


async def _at_least(count: object, target: int) -> bool:
    return await count() >= target  # type: ignore[operator]
