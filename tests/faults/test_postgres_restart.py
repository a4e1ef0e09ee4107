"""PostgreSQL stopped and started again mid-run: jobs retry with backoff and every command succeeds.

While the database is down, intake cannot record a command, so it answers 503 with a problem (never 500, never
a 202 it could not keep); the client retries with the same `Idempotency-Key`, which makes a retry of a write
that did commit return the original command instead of a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg

from tests.faults.harness import FaultRun, assert_exactly_once, at_least, widget_writes
from tests.faults.servers import PostgresServer
from tests.support import eventually

SKUS = 300
PATCHES = 3
COMMANDS = SKUS * (1 + PATCHES)
REFUSED_WHILE_DOWN = 20
HEAD_WITH_WORK_LEFT = """
    SELECT sku FROM widget_heads WHERE applied_seq < accepted_seq ORDER BY sku LIMIT 1 FOR UPDATE SKIP LOCKED
"""


async def hold_a_head_with_work_left(database_url: str) -> asyncpg.Connection:
    """Locks the head row of a sku that has a command still to apply, in a transaction left open: the job that
    applies it waits on the lock, so a job is in flight when the database stops, however fast the workers are
    (they had caught up, at times, and then nothing of theirs saw the outage)."""
    connection = await asyncpg.connect(database_url)

    async def locked() -> bool:
        await connection.execute("ROLLBACK")  # the last try's transaction (a warning only, the first time)
        await connection.execute("BEGIN")
        return await connection.fetchval(HEAD_WITH_WORK_LEFT) is not None

    await eventually(locked, 60, "a sku with a command still to apply")
    return connection


async def test_a_postgres_restart_mid_run_is_ridden_out(
    fault_run: Callable[..., FaultRun], postgres: PostgresServer
) -> None:
    async with fault_run("postgres-restart") as run:
        sending = asyncio.create_task(run.submitter.sequences(widget_writes(f"PG-{n}", PATCHES) for n in range(SKUS)))

        async def refused() -> int:
            return run.submitter.statuses[503]

        await eventually(lambda: at_least(run.submitted, 0.4 * COMMANDS), 60, "two fifths of the commands")
        holding = await hold_a_head_with_work_left(run.database_url)
        await asyncio.to_thread(postgres.stop)
        stopped_after = await run.submitted()
        with contextlib.suppress(Exception):  # the stop cut it
            await holding.close(timeout=1)
        # Down until intake has refused writes and the workers have had to retry jobs: both sides saw the outage.
        await eventually(lambda: at_least(refused, REFUSED_WHILE_DOWN), 60, "writes refused, PostgreSQL down")
        await eventually(lambda: at_least(run.retried_jobs, 1), 60, "a job retried, PostgreSQL down")
        await asyncio.to_thread(postgres.start)
        await sending
        await run.settle()

    responses = run.submitter.statuses
    retried = await run.retried_jobs()
    ledger = await run.ledger(stopped_after=stopped_after, retried_jobs=retried)
    assert set(responses) <= {200, 202, 503}, "no 500: a database that is down is a 503 problem"
    assert run.submitter.not_problems == 0
    assert retried >= 1
    assert_exactly_once(ledger, COMMANDS)
