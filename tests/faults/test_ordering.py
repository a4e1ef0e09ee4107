"""Per-widget order under contention: 50 skus x 40 PATCHes each, sent back to back, applied by 4 worker processes
at concurrency 20. Every sku's row ends equal to its last PATCH, and its events carry versions 1..41 in order."""

from __future__ import annotations

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

SKUS = 50
PATCHES = 40
COMMANDS = SKUS * (1 + PATCHES)


async def test_each_widget_takes_its_commands_in_accept_order(
    fault_database: str, redis_server: RedisServer, fault_prefix: str, tmp_path: Path
) -> None:
    env = stack_env(fault_database, redis_server.url, fault_prefix)
    probe = Probe(fault_database)
    stack = Stack(env, tmp_path, workers=4, concurrency=20)
    try:
        async with Submitter(stack.urls, concurrency=SKUS) as submitter:
            await submitter.sequences(widget_writes(f"ORDER-{n}", PATCHES) for n in range(SKUS))
        await eventually(lambda: at_least(probe.finished, COMMANDS), 120, "every command to finish")
        await eventually(lambda: at_most(probe.unpublished, 0), 60, "every event to be published")
        seqs = await probe.accept_order()
    finally:
        stack.close()
        await probe.close()

    ledger = await account("ordering", fault_database, redis_server.url, fault_prefix, submitter.commands)
    versions: dict[str, list[int]] = {}
    for event in ledger.events:
        versions.setdefault(event["sku"], []).append(event["version"])
    in_order = sum(found == list(range(1, PATCHES + 2)) for found in versions.values())
    ledger.extra = {"skus_in_order": in_order}
    report(ledger.line())
    assert ledger.statuses == {"succeeded": COMMANDS}
    assert ledger.rows == expected_rows(submitter.commands, seqs)
    assert ledger.rows == {
        f"ORDER-{n}": (f"ORDER-{n} v{PATCHES + 1}", 100 * (PATCHES + 1), PATCHES + 1) for n in range(SKUS)
    }
    assert in_order == SKUS
    assert ledger.recorded == ledger.commands
    assert (ledger.lost, ledger.duplicated, ledger.gaps, ledger.unpublished) == (0, 0, 0, 0)
