"""Per-widget order under contention: 50 skus x 40 PATCHes each, sent back to back, applied by 4 worker processes
at concurrency 20, on one queue and on two partitions' queues (two `workers run`, each a process per partition). Every
sku's row ends equal to its last PATCH, and its events carry versions 1..41 in order."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.faults.harness import FaultRun, assert_exactly_once, widget_writes
from tests.summary import report

SKUS = 50
PATCHES = 40
COMMANDS = SKUS * (1 + PATCHES)


@pytest.mark.parametrize("partitions", [1, 2], ids=["one-queue", "two-partitions"])
async def test_each_widget_takes_its_commands_in_accept_order(
    fault_run: Callable[..., FaultRun], partitions: int
) -> None:
    name, workers = ("ordering", 4) if partitions == 1 else (f"ordering-{partitions}-partitions", 4 // partitions)
    async with fault_run(
        name, workers=workers, concurrency=20, clients=SKUS, WIDGETRY_QUEUE_PARTITIONS=str(partitions)
    ) as run:
        await run.submitter.sequences(widget_writes(f"ORDER-{n}", PATCHES) for n in range(SKUS))
        await run.settle()

    ledger = await run.ledger(reported=False)
    versions: dict[str, list[int]] = {}
    for event in ledger.events:
        versions.setdefault(event["sku"], []).append(event["version"])
    in_order = sum(found == list(range(1, PATCHES + 2)) for found in versions.values())
    ledger.extra["skus_in_order"] = in_order
    report(ledger.line())
    assert_exactly_once(ledger, COMMANDS)
    assert ledger.rows == {
        f"ORDER-{n}": (f"ORDER-{n} v{PATCHES + 1}", 100 * (PATCHES + 1), PATCHES + 1) for n in range(SKUS)
    }
    assert in_order == SKUS
