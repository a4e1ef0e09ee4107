"""Redis flushed, then stopped and started again, mid-run: no accepted command is lost.

Both lose every job on the queue (the server keeps nothing on disk). The commands live in the database, so the
recovery pass queues them again; while Redis is down, intake still answers 202 (the command is recorded) and the
outbox relay publishes what the workers could not. Events published before the flush are gone from the stream
with it, so here the ledger counts events in the outbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.faults.harness import FaultRun, assert_exactly_once, at_least, widget_writes
from tests.faults.servers import RedisServer
from tests.support import eventually

SKUS = 300
PATCHES = 3
COMMANDS = SKUS * (1 + PATCHES)
ACCEPTED_WHILE_DOWN = 100


async def test_a_flush_and_a_restart_of_redis_lose_no_accepted_command(
    fault_run: Callable[..., FaultRun], redis_server: RedisServer
) -> None:
    # The rate limiter sums its counts in Redis: on, it must let writes through while Redis is down.
    async with fault_run(
        "redis-flush-restart", WIDGETRY_RATE_LIMIT_WRITES="100000/minute", WIDGETRY_RATE_LIMIT_READS="100000/minute"
    ) as run:
        sending = asyncio.create_task(
            run.submitter.sequences(widget_writes(f"FLUSH-{n}", PATCHES) for n in range(SKUS))
        )
        await eventually(lambda: at_least(run.submitted, 0.3 * COMMANDS), 60, "a third of the commands")
        redis_server.flushall()
        flushed_after = await run.submitted()

        await eventually(lambda: at_least(run.submitted, 0.55 * COMMANDS), 60, "half of the commands")
        redis_server.stop()
        stopped_after = await run.submitted()
        await eventually(lambda: at_least(run.submitted, stopped_after + ACCEPTED_WHILE_DOWN), 60, "writes, Redis down")
        redis_server.start()
        await sending
        await run.settle()

    responses = run.submitter.statuses
    ledger = await run.ledger(source="outbox", flushed_after=flushed_after, stopped_after=stopped_after)
    assert set(responses) <= {200, 202}, "intake answers 202 while Redis is down: the command is recorded"
    assert run.submitter.not_problems == 0
    assert_exactly_once(ledger, COMMANDS)
