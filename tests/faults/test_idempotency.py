"""100 concurrent POSTs with one `Idempotency-Key` make one command and one widget: the twins race to the key's
unique index, and every loser answers with the winner's command."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from tests.faults.harness import FaultRun, Submitted, assert_exactly_once
from tests.support import AUTH

TWINS = 100


async def test_concurrent_twins_make_one_command(fault_run: Callable[..., FaultRun]) -> None:
    body = {"sku": "TWIN-1", "name": "Twin", "price_cents": 500}
    async with fault_run("idempotency", webs=2) as run:
        limits = httpx.Limits(max_connections=TWINS)
        clients = [httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30, limits=limits) for url in run.stack.urls]
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
        ids = {response.json()["id"] for response in responses}
        run.submitter.commands.extend(Submitted(id_, "TWIN-1", "POST", body) for id_ in ids)
        await run.settle()

    statuses = sorted({response.status_code for response in responses})
    ledger = await run.ledger(requests=TWINS, statuses=statuses, command_ids=len(ids))
    assert set(statuses) <= {200, 202}
    assert len(ids) == 1
    assert_exactly_once(ledger, 1)
    assert ledger.rows == {"TWIN-1": ("Twin", 500, 1)}
    assert reused.status_code == 422
    assert reused.json()["type"].endswith("/idempotency-key-reused")
