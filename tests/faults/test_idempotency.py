"""100 concurrent POSTs with one `Idempotency-Key` make one command and one widget: the twins race to the key's
unique index, and every loser answers with the winner's command."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.faults.harness import Probe, Stack, Submitted, account, at_least, at_most, report, stack_env
from tests.faults.servers import RedisServer
from tests.support import AUTH, eventually

TWINS = 100


async def test_concurrent_twins_make_one_command(
    fault_database: str, redis_server: RedisServer, fault_prefix: str, tmp_path: Path
) -> None:
    env = stack_env(fault_database, redis_server.url, fault_prefix)
    probe = Probe(fault_database)
    stack = Stack(env, tmp_path, webs=2, workers=1)
    body = {"sku": "TWIN-1", "name": "Twin", "price_cents": 500}
    try:
        limits = httpx.Limits(max_connections=TWINS)
        clients = [httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30, limits=limits) for url in stack.urls]
        start = asyncio.Event()

        async def post(n: int) -> httpx.Response:
            await start.wait()
            return await clients[n % len(clients)].post("/widgets", json=body, headers={"Idempotency-Key": "twin"})

        posts = [asyncio.create_task(post(n)) for n in range(TWINS)]
        start.set()
        responses = await asyncio.gather(*posts)
        reused = await clients[0].post(
            "/widgets", json={**body, "price_cents": 501}, headers={"Idempotency-Key": "twin"}
        )
        for client in clients:
            await client.aclose()
        await eventually(lambda: at_least(probe.finished, 1), 60, "the command to finish")
        await eventually(lambda: at_most(probe.unpublished, 0), 60, "its event to be published")
    finally:
        stack.close()
        await probe.close()

    ids = {response.json()["id"] for response in responses}
    statuses = sorted({response.status_code for response in responses})
    ledger = await account(
        "idempotency",
        fault_database,
        redis_server.url,
        fault_prefix,
        [Submitted(id_, "TWIN-1", "POST", body) for id_ in ids],
    )
    ledger.extra = {"requests": TWINS, "statuses": statuses, "command_ids": len(ids)}
    report(ledger.line())
    assert set(statuses) <= {200, 202}
    assert len(ids) == 1
    assert ledger.statuses == {"succeeded": 1}
    assert ledger.rows == {"TWIN-1": ("Twin", 500, 1)}
    assert len(ledger.events) == 1
    assert ledger.recorded == ledger.commands
    assert (ledger.lost, ledger.duplicated, ledger.gaps) == (0, 0, 0)
    assert reused.status_code == 422
    assert reused.json()["type"].endswith("/idempotency-key-reused")
