"""Redis flushed, then stopped and started again, mid-run: no accepted command is lost.

Both lose every job on the queue (the server keeps nothing on disk). The commands live in the database, so the
recovery pass queues them again; while Redis is down, intake still answers 202 (the command is recorded) and the
outbox relay publishes what the workers could not. Events published before the flush are gone from the stream
with it, so here the ledger counts events in the outbox.
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

SKUS = 300
PATCHES = 3
COMMANDS = SKUS * (1 + PATCHES)
ACCEPTED_WHILE_DOWN = 100


async def test_a_flush_and_a_restart_of_redis_lose_no_accepted_command(
    fault_database: str, redis_server: RedisServer, fault_prefix: str, tmp_path: Path
) -> None:
    # The rate limiter keeps its windows in Redis: on, it must let writes through while Redis is down.
    env = stack_env(fault_database, redis_server.url, fault_prefix, WIDGETRY_RATE_LIMIT="100000/minute")
    probe = Probe(fault_database)
    stack = Stack(env, tmp_path, workers=1, concurrency=10)
    try:
        async with Submitter(stack.urls, concurrency=20) as submitter:
            sending = asyncio.create_task(
                submitter.sequences(widget_writes(f"FLUSH-{n}", PATCHES) for n in range(SKUS))
            )

            async def submitted() -> int:
                return len(submitter.commands)

            await eventually(lambda: at_least(submitted, 0.3 * COMMANDS), 60, "a third of the commands")
            redis_server.flushall()
            flushed_after = len(submitter.commands)

            await eventually(lambda: at_least(submitted, 0.55 * COMMANDS), 60, "half of the commands")
            redis_server.stop()
            stopped_after = len(submitter.commands)
            await eventually(lambda: at_least(submitted, stopped_after + ACCEPTED_WHILE_DOWN), 60, "writes, Redis down")
            redis_server.start()
            await sending
        await eventually(lambda: at_least(probe.finished, COMMANDS), 120, "every command to finish")
        await eventually(lambda: at_most(probe.unpublished, 0), 60, "every event to be published")
        seqs = await probe.accept_order()
    finally:
        stack.close()
        await probe.close()

    ledger = await account(
        "redis-flush-restart", fault_database, redis_server.url, fault_prefix, submitter.commands, source="outbox"
    )
    ledger.extra = {
        "flushed_after": flushed_after,
        "stopped_after": stopped_after,
        "responses": dict(submitter.statuses),
        "client_retries": submitter.retries,
    }
    report(ledger.line())
    assert set(submitter.statuses) <= {200, 202}, "intake answers 202 while Redis is down: the command is recorded"
    assert submitter.not_problems == 0
    assert ledger.commands == COMMANDS
    assert ledger.statuses == {"succeeded": COMMANDS}
    assert ledger.rows == expected_rows(submitter.commands, seqs)
    assert len(ledger.events) == COMMANDS
    assert ledger.recorded == ledger.commands
    assert (ledger.lost, ledger.duplicated, ledger.gaps, ledger.unpublished) == (0, 0, 0, 0)
