"""One bench run, phase by phase: the target (a stack the bench starts, or the URLs it is given), the load, then
the baselines once the stack is stopped (so they have the machine to themselves), and the report."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import shutil
import signal
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from widgetry.bench.baselines import DirectWrite, RawSaq, direct_write, raw_saq
from widgetry.bench.load import LOST_AFTER_S, LoadPlan, LoadResult, run_load
from widgetry.bench.report import build_report
from widgetry.bench.stack import Stack, warm_up
from widgetry.bench.system import machine
from widgetry.bench.workload import Workload
from widgetry.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(frozen=True)
class Options:
    urls: tuple[str, ...]
    api_key: str | None
    webs: int
    workers: int
    concurrency: int
    subscribers: int
    commands: int
    skus: int
    rate: float
    clients: int
    connections: int
    idle_connections: int
    baselines: bool
    quick: bool

    @property
    def mode(self) -> str:
        if self.urls:
            return "url"
        return "spawned" if os.environ.get("DATABASE_URL") else "embedded"

    def public(self) -> dict[str, Any]:
        """The options as the report records them: everything but the API key."""
        return {name: value for name, value in dataclasses.asdict(self).items() if name != "api_key"} | {
            "urls": list(self.urls)
        }


def succeeded(report: dict[str, Any]) -> bool:
    return report["lost"] == 0 and not report["errors"]


async def run_bench(options: Options, console: Console) -> dict[str, Any]:
    """Runs the bench; SIGTERM cancels it as Ctrl-C does, so the stack it started is stopped either way."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    run_id = secrets.token_hex(4)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    log_dir = Path(tempfile.mkdtemp(prefix=f"widgetry-bench-{run_id}-"))
    keep_logs = True
    try:
        report = await _run(options, run_id, started_at, log_dir, console)
        keep_logs = not succeeded(report)
        return report
    finally:
        if options.mode != "embedded" and (redis_url := os.environ.get("REDIS_URL")):
            try:
                await forget_keys(redis_url, redis_prefix(run_id))
            except (RedisError, OSError) as error:
                console.print(f"bench: the run's Redis keys ({redis_prefix(run_id)}*) were not deleted: {error}")
        if keep_logs and any(log_dir.iterdir()):
            console.print(f"bench: the processes' logs are in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


async def _run(options: Options, run_id: str, started_at: str, log_dir: Path, console: Console) -> dict[str, Any]:
    mode = options.mode
    workload = Workload(run_id, options.commands, options.skus)
    notes: list[str] = []
    if mode == "url":
        api_key = options.api_key or ""
        stack_shape = {"description": f"{len(options.urls)} URL(s) given", "urls": list(options.urls)}
        notes.append("against --url: the service's processes are not the bench's, so their memory is not reported")
        await warm_up(options.urls[0], api_key, run_id)
        load = await run_load(_plan(options, workload, list(options.urls), api_key), None, log_dir, console)
    else:
        api_key = secrets.token_urlsafe(24)
        embedded = mode == "embedded"
        stack = Stack(
            log_dir,
            {"WIDGETRY_API_KEYS": api_key, "WIDGETRY_REDIS_PREFIX": redis_prefix(run_id)},
            embedded=embedded,
            webs=options.webs,
            workers=options.workers,
            concurrency=options.concurrency,
        )
        stack_shape = _stack_shape(options, embedded)
        if embedded:
            notes.append(
                "embedded defaults (no DATABASE_URL/REDIS_URL): one `widgetry run` with its in-process worker, on "
                "SQLite and fakeredis; --web and --workers do not apply, and the workers' memory is that process's"
            )
        else:
            notes.append(f"the run's widgets stay in the database (skus {workload.sku_prefix}*)")
        console.print(f"bench: starting the stack ({stack_shape['description']})")
        try:
            await stack.start()
            await warm_up(stack.urls[0], api_key, run_id)
            load = await run_load(_plan(options, workload, stack.urls, api_key), stack, log_dir, console)
        finally:
            stack.stop()
    raw, direct = await _baselines(options, mode, run_id, log_dir, notes, console)
    _explain(options, load, notes)
    return build_report(
        run_id=run_id,
        started_at=started_at,
        mode=mode,
        stack=stack_shape,
        options=options.public(),
        machine=machine(),
        load=load,
        raw_saq=raw,
        direct=direct,
        notes=notes,
    )


def _plan(options: Options, workload: Workload, urls: list[str], api_key: str) -> LoadPlan:
    return LoadPlan(
        workload=workload,
        urls=urls,
        api_key=api_key,
        subscribers=options.subscribers,
        clients=options.clients,
        connections=options.connections,
        rate=options.rate,
        idle_connections=options.idle_connections,
    )


def _stack_shape(options: Options, embedded: bool) -> dict[str, Any]:
    if embedded:
        return {
            "webs": 1,
            "workers": 0,
            "concurrency": options.concurrency,
            "description": f"1 web with its in-process worker at concurrency {options.concurrency}",
        }
    # The stack's processes inherit this environment; `workers run` starts a process per partition.
    partitions = Settings.from_env().queue_partitions
    on_partitions = f" on each of {partitions} queue partitions" if partitions > 1 else ""
    return {
        "webs": options.webs,
        "workers": options.workers,
        "partitions": partitions,
        "concurrency": options.concurrency,
        "description": f"{options.webs} web and {options.workers} worker process(es){on_partitions} "
        f"at concurrency {options.concurrency}",
    }


async def _baselines(
    options: Options, mode: str, run_id: str, log_dir: Path, notes: list[str], console: Console
) -> tuple[RawSaq | None, DirectWrite | None]:
    if not options.baselines:
        notes.append("baselines skipped (--no-baselines)")
        return None, None
    embedded = mode == "embedded"
    redis_url, database_url = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
    raw = direct = None
    if embedded or redis_url:
        console.print(f"bench: raw SAQ baseline, {options.commands} no-op jobs")
        raw = await raw_saq(
            None if embedded else redis_url,
            f"{redis_prefix(run_id)}-raw",
            options.commands,
            options.workers,
            options.concurrency,
            log_dir,
        )
    else:
        notes.append("raw SAQ baseline skipped: no REDIS_URL")
    if embedded or database_url:
        console.print(f"bench: direct write baseline, {options.commands} changes")
        direct_workload = Workload(f"{run_id}-direct", options.commands, options.skus)
        direct = await direct_write(None if embedded else database_url, direct_workload, options.concurrency, log_dir)
    else:
        notes.append("direct write baseline skipped: no DATABASE_URL")
    if embedded:
        notes.append(
            "embedded baselines run inside the bench: raw SAQ on an in-process fakeredis (the embedded queue), "
            "direct write on a fresh SQLite file"
        )
    return raw, direct


def _explain(options: Options, load: LoadResult, notes: list[str]) -> None:
    if options.rate:
        notes.append(
            f"open loop: e2e commands/s is bounded by the offered {options.rate:g}/s, and the ratios set it against "
            "what the baselines can do"
        )
    if load.accepted_to_applied_clamped:
        notes.append(
            f"202 -> applied: {load.accepted_to_applied_clamped} commands were applied before their 202 reached the "
            "writer; counted as 0 ms"
        )
    if load.lost:
        notes.append(
            f"lost: {load.lost} accepted commands were not seen by every subscriber ({LOST_AFTER_S} s without "
            "progress after the last reply)"
        )


def redis_prefix(run_id: str) -> str:
    """Of the stack's queue and event stream, and of the raw SAQ baseline's queue: nothing else on the Redis server
    carries it, so the run neither mixes with anything else nor leaves anything behind."""
    return f"bench-{run_id}"


async def forget_keys(redis_url: str, prefix: str) -> None:
    """Deletes the run's keys (its queues, jobs and event stream), however the run ended."""
    client = aioredis.from_url(redis_url)
    try:
        for pattern in (f"{prefix}*", f"saq:{prefix}*", f"saq:job:{prefix}*"):
            keys = [key async for key in client.scan_iter(pattern, count=1000)]
            for start in range(0, len(keys), 1000):
                await client.unlink(*keys[start : start + 1000])
    finally:
        await client.aclose()
