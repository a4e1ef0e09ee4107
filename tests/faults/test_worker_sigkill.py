"""Workers SIGKILLed mid-run lose nothing, apply nothing twice and keep each widget's accept order.

2,000 commands over 500 skus (each sku: a create, then three patches, sent in that order), two external worker
processes (on one queue, or on two partitions), one of them killed with SIGKILL three times during the run and
started again each time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.faults.harness import FaultRun, assert_exactly_once, at_least, widget_writes
from tests.support import eventually

SKUS = 500
PATCHES = 3
COMMANDS = SKUS * (1 + PATCHES)
KILL_AT = (0.2, 0.45, 0.7)
"""Kill the worker when this share of the commands has finished."""


@pytest.mark.parametrize("partitions", [1, 2], ids=["one-queue", "two-partitions"])
async def test_workers_killed_three_times_lose_and_duplicate_nothing(
    fault_run: Callable[..., FaultRun], partitions: int
) -> None:
    """On two partitions each `workers run` is two processes, one per partition: the one killed is the command's own
    (partition 0's), and the process it forked (partition 1's) stops by itself, its jobs cancelled and retried."""
    kills: list[int] = []
    name = "sigkill" if partitions == 1 else f"sigkill-{partitions}-partitions"
    async with fault_run(name, workers=2, concurrency=10, clients=40, WIDGETRY_QUEUE_PARTITIONS=str(partitions)) as run:
        sending = asyncio.create_task(run.submitter.sequences(widget_writes(f"KILL-{n}", PATCHES) for n in range(SKUS)))
        for share in KILL_AT:
            await eventually(lambda share=share: at_least(run.probe.finished, share * COMMANDS), 120, "progress")
            # Killed while it runs a job, not between two: that job is the one the sweep must find and run again.
            await eventually(lambda: run.worker_holds_a_job(0), 30, "worker 0 to be running a job")
            run.stack.kill_worker(0)
            kills.append(await run.probe.finished())
            run.stack.restart_worker(0)
        await sending
        await run.settle()
        # The sweep finds a killed worker's job once its timeout has passed (its commands may have been applied by
        # then, recovered by other jobs) and runs it again, which must change nothing.
        await eventually(lambda: at_least(run.retried_jobs, 1), 30, "a killed worker's job to be run again")

    retried = await run.retried_jobs()
    ledger = await run.ledger(killed_after=kills, retried_jobs=retried)
    assert retried >= 1, "the kills interrupted jobs in flight, which were swept and run again"
    assert_exactly_once(ledger, COMMANDS)
    assert all(version == 1 + PATCHES for _name, _price, version in ledger.rows.values())
