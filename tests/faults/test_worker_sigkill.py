"""Workers SIGKILLed mid-run lose nothing, apply nothing twice and keep each widget's accept order.

2,000 commands over 500 skus (each sku: a create, then three patches, sent in that order), two external worker
processes, one of them killed with SIGKILL three times during the run and started again each time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.faults.harness import (
    Probe,
    Stack,
    Submitter,
    account,
    at_least,
    at_most,
    expected_rows,
    report,
    stack_env,
    widget_writes,
)
from tests.faults.servers import RedisServer
from tests.support import eventually

SKUS = 500
PATCHES = 3
COMMANDS = SKUS * (1 + PATCHES)
KILL_AT = (0.2, 0.45, 0.7)
"""Kill the worker when this share of the commands has finished."""


async def test_workers_killed_three_times_lose_and_duplicate_nothing(
    fault_database: str, redis_server: RedisServer, fault_prefix: str, tmp_path: Path
) -> None:
    env = stack_env(fault_database, redis_server.url, fault_prefix)
    probe = Probe(fault_database)
    stack = Stack(env, tmp_path, workers=2, concurrency=10)
    kills: list[int] = []
    try:
        async with Submitter(stack.urls, concurrency=40) as submitter:
            sending = asyncio.create_task(submitter.sequences(widget_writes(f"KILL-{n}", PATCHES) for n in range(SKUS)))
            for share in KILL_AT:
                await eventually(lambda share=share: at_least(probe.finished, share * COMMANDS), 120, "progress")
                stack.kill_worker(0)
                kills.append(await probe.finished())
                stack.restart_worker(0)
            await sending
        await eventually(lambda: at_least(probe.finished, COMMANDS), 120, "every command to finish")
        await eventually(lambda: at_most(probe.unpublished, 0), 60, "every event to be published")
        seqs = await probe.accept_order()
    finally:
        stack.close()
        await probe.close()

    ledger = await account("sigkill", fault_database, redis_server.url, fault_prefix, submitter.commands)
    ledger.extra = {"killed_after": kills, "client_retries": submitter.retries}
    report(ledger.line())
    assert ledger.commands == COMMANDS
    assert ledger.statuses == {"succeeded": COMMANDS}
    assert ledger.rows == expected_rows(submitter.commands, seqs)
    assert all(version == 1 + PATCHES for _name, _price, version in ledger.rows.values())
    assert len(ledger.events) == COMMANDS
    assert ledger.recorded == ledger.commands
    assert (ledger.lost, ledger.duplicated, ledger.gaps, ledger.unpublished) == (0, 0, 0, 0)
