"""PostgreSQL stopped and started again mid-run: jobs retry with backoff and every command succeeds.

While the database is down, intake cannot record a command, so it answers 503 with a problem (never 500, never
a 202 it could not keep); the client retries with the same `Idempotency-Key`, which makes a retry of a write
that did commit return the original command instead of a second one.
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
from tests.faults.servers import PostgresServer, RedisServer
from tests.support import eventually

SKUS = 300
PATCHES = 3
COMMANDS = SKUS * (1 + PATCHES)
REFUSED_WHILE_DOWN = 20


async def test_a_postgres_restart_mid_run_is_ridden_out(
    postgres: PostgresServer, fault_database: str, redis_server: RedisServer, fault_prefix: str, tmp_path: Path
) -> None:
    env = stack_env(fault_database, redis_server.url, fault_prefix)
    stack = Stack(env, tmp_path, workers=1, concurrency=10)
    probe = Probe(fault_database)
    try:
        async with Submitter(stack.urls, concurrency=20) as submitter:
            sending = asyncio.create_task(submitter.sequences(widget_writes(f"PG-{n}", PATCHES) for n in range(SKUS)))

            async def submitted() -> int:
                return len(submitter.commands)

            async def refused() -> int:
                return submitter.statuses[503]

            await eventually(lambda: at_least(submitted, 0.4 * COMMANDS), 60, "two fifths of the commands")
            postgres.stop()
            stopped_after = len(submitter.commands)
            await eventually(lambda: at_least(refused, REFUSED_WHILE_DOWN), 60, "writes refused, PostgreSQL down")
            postgres.start()
            await sending
        await eventually(lambda: at_least(probe.finished, COMMANDS), 120, "every command to finish")
        await eventually(lambda: at_most(probe.unpublished, 0), 60, "every event to be published")
        seqs = await probe.accept_order()
    finally:
        stack.close()
        await probe.close()

    ledger = await account("postgres-restart", fault_database, redis_server.url, fault_prefix, submitter.commands)
    ledger.extra = {
        "stopped_after": stopped_after,
        "responses": dict(submitter.statuses),
        "client_retries": submitter.retries,
    }
    report(ledger.line())
    assert set(submitter.statuses) <= {200, 202, 503}, "no 500: a database that is down is a 503 problem"
    assert submitter.not_problems == 0
    assert ledger.commands == COMMANDS
    assert ledger.statuses == {"succeeded": COMMANDS}
    assert ledger.rows == expected_rows(submitter.commands, seqs)
    assert len(ledger.events) == COMMANDS
    assert ledger.recorded == ledger.commands
    assert (ledger.lost, ledger.duplicated, ledger.gaps, ledger.unpublished) == (0, 0, 0, 0)
