"""Queue partitions: each sku's commands go to one partition's queue, every partition's worker applies its own, and
each sku's commands still apply in accept order, with one event each on the one stream."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from litestar import Litestar

from tests.support import AUTH, eventually, run_cli, serve
from tests.unit.state import settled_stream, widget_row
from widgetry.app import create_app
from widgetry.services.queue import partition_of
from widgetry.settings import Settings

PARTITIONS = 4
SKUS = [f"PART-{n}" for n in range(24)]
PATCHES = 5


async def jobs_by_queue(app: Litestar) -> dict[str, list[list[str]]]:
    """The command ids of each job each partition's queue was given (SAQ keeps a job under `saq:job:<queue>:<key>`;
    partition 0's prefix also begins the other partitions' keys, `saq:job:<queue>:<n>:<key>`, and the cron jobs')."""
    redis, names = app.state.connections.redis, app.state.settings.queue_names
    found: dict[str, list[list[str]]] = {}
    for name in names:
        keys = [key async for key in redis.scan_iter(f"saq:job:{name}:*", count=1000)]
        own = [key for key in keys if ":" not in key.decode().removeprefix(f"saq:job:{name}:")]
        found[name] = [msgspec.json.decode(await redis.get(key))["kwargs"]["command_ids"] for key in own]
    return found


def test_a_skus_partition_is_the_same_in_every_process() -> None:
    """Python's `hash` of a string differs between processes; the partition must not."""
    here = [partition_of(sku, PARTITIONS) for sku in SKUS]
    code = f"from widgetry.services.queue import partition_of; print([partition_of(s, {PARTITIONS}) for s in {SKUS!r}])"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout  # noqa: S603
    assert msgspec.json.decode(there) == here
    assert set(here) == set(range(PARTITIONS))  # 24 skus reach every one of 4 partitions
    assert {partition_of(sku, 1) for sku in SKUS} == {0}
    assert partition_of(None, PARTITIONS) == 0  # an import's record


async def test_each_sku_is_queued_on_its_partition_and_applied_in_order(embedded_settings: Settings) -> None:
    app = create_app(msgspec.structs.replace(embedded_settings, queue_partitions=PARTITIONS))
    assert app.state.settings.queue_names == ("widgetry", "widgetry:1", "widgetry:2", "widgetry:3")
    async with serve(app) as client:

        async def writes(sku: str) -> list[str]:
            created = await client.post(
                "/widgets", json={"sku": sku, "name": f"{sku} v1", "price_cents": 1}, headers=AUTH
            )
            assert created.status_code == 202, created.text
            ids = [created.json()["id"]]
            for version in range(2, PATCHES + 2):
                patched = await client.patch(f"/widgets/{sku}", json={"name": f"{sku} v{version}"}, headers=AUTH)
                assert patched.status_code == 202, patched.text
                ids.append(patched.json()["id"])
            return ids

        # The skus' writes interleave, so intake's batches mix skus of every partition.
        sent = dict(zip(SKUS, await asyncio.gather(*(writes(sku) for sku in SKUS)), strict=True))

        events: list[dict] = []

        async def all_on_the_stream() -> bool:
            events[:] = await settled_stream(app)
            return len(events) >= len(SKUS) * (PATCHES + 1)

        await eventually(all_on_the_stream, 30, "every command's event on the stream")
        queued = await jobs_by_queue(app)

    versions: dict[str, list[int]] = {}
    for event in events:
        versions.setdefault(event["sku"], []).append(event["version"])
    assert versions == {sku: list(range(1, PATCHES + 2)) for sku in SKUS}
    for sku in SKUS:
        row = await widget_row(app, sku)
        assert row is not None
        assert (row.name, row.version) == (f"{sku} v{PATCHES + 1}", PATCHES + 1)
    # Every job a partition's queue was given holds commands of its own skus only, every partition got some, and
    # every command was in one job.
    partition_of_command = {
        command_id: partition_of(sku, PARTITIONS) for sku, ids in sent.items() for command_id in ids
    }
    for partition, name in enumerate(app.state.settings.queue_names):
        assert queued[name], f"partition {partition} was given no job"
        assert {partition_of_command[command_id] for job in queued[name] for command_id in job} == {partition}
    assert sorted(command_id for jobs in queued.values() for job in jobs for command_id in job) == sorted(
        partition_of_command
    )


def test_a_partition_count_out_of_range_is_refused() -> None:
    for wrong in ("0", "65", "two"):
        with pytest.raises(msgspec.ValidationError, match="queue_partitions"):
            Settings.from_env({"WIDGETRY_QUEUE_PARTITIONS": wrong})
    assert Settings.from_env({"WIDGETRY_QUEUE_PARTITIONS": "8"}).queue_names[-1] == "widgetry:7"


def test_workers_refuse_a_partition_that_does_not_exist(tmp_path: Path) -> None:
    result = run_cli(
        "workers",
        "run",
        "--partition",
        "2",
        cwd=tmp_path,
        env={
            "WIDGETRY_QUEUE_PARTITIONS": "2",
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'widgetry.db'}",
            "REDIS_URL": "redis://127.0.0.1:1/0",
        },
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "No partition 2: WIDGETRY_QUEUE_PARTITIONS is 2." in result.stderr
