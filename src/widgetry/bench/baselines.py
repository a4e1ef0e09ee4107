"""The two baselines a run is measured against, on the same Redis and database, once the service is stopped:

- raw SAQ: no-op jobs through plain SAQ workers, enqueued as intake enqueues (keyed, with the same retries and
  timeout): what the queue alone sustains;
- direct write: the run's kind of changes (a create, then updates, per sku) applied with `WidgetService`, one
  commit each, no HTTP, no queue, no events: what the service layer and the database alone sustain.

On the embedded defaults both run inside the bench: SAQ on an in-process fakeredis with the embedded queue, the
writes on a fresh SQLite file, as the embedded service itself would.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from saq import Queue, Worker

from widgetry.bench.agent import NOOP_JOB, noop
from widgetry.bench.channel import Agents, SaqWorkerJob, Stop
from widgetry.bench.workload import Workload, stamped_values
from widgetry.connections import build_alchemy
from widgetry.migrating import upgrade_database
from widgetry.services.queue import MAX_RETRY_DELAY_S, RETRY_DELAY_S
from widgetry.services.widgets import WidgetService
from widgetry.settings import Settings
from widgetry.workers.queue import EmbeddedRedisQueue

if TYPE_CHECKING:
    from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig

ENQUEUE_CONCURRENCY = 32
DRAIN_POLL_S = 0.01
READY_TIMEOUT_S = 60
JOB_TTL_S = 600
"""As intake queues its jobs."""
QUIET = {"alembic": logging.WARNING, "saq": logging.ERROR}
"""The baselines run in the bench's process: their progress logs would land among its output."""


@dataclass
class RawSaq:
    jobs: int
    jobs_per_s: float
    processes: int
    concurrency: int
    backend: str


@dataclass
class DirectWrite:
    changes: int
    commands_per_s: float
    concurrency: int
    database: str


async def raw_saq(
    redis_url: str | None, queue_name: str, jobs: int, processes: int, concurrency: int, log_dir: Path
) -> RawSaq:
    """`processes` worker processes (one in-process worker on fakeredis when `redis_url` is `None`) drain `jobs`
    no-op jobs; the rate counts from the first enqueue until none is incomplete."""
    _quiet()
    if redis_url is None:
        queue: Queue = EmbeddedRedisQueue(FakeRedis(server=FakeServer()), name=queue_name)
        worker = Worker(queue, functions=[(NOOP_JOB, noop)], concurrency=concurrency)
        worker.SIGNALS = []  # Ctrl-C is the bench's to handle
        working = asyncio.create_task(worker.start())
        try:
            elapsed = await _drain(queue, jobs)
        finally:
            await worker.stop()
            await working
        return RawSaq(jobs, jobs / elapsed, 1, concurrency, "fakeredis, in-process (embedded queue)")

    async with Agents(log_dir) as agents:
        workers = [
            await agents.start(f"saq-worker-{n}", SaqWorkerJob(redis_url, queue_name, concurrency))
            for n in range(processes)
        ]
        await agents.all_ready(workers, READY_TIMEOUT_S, "the SAQ workers to start")
        queue = Queue.from_url(redis_url, name=queue_name)
        await queue.connect()
        try:
            elapsed = await _drain(queue, jobs)
        finally:
            await queue.disconnect()
        for worker_agent in workers:
            worker_agent.send(Stop())
    return RawSaq(jobs, jobs / elapsed, processes, concurrency, "Redis")


async def _drain(queue: Queue, jobs: int) -> float:
    settings = Settings.from_env()
    remaining = iter(range(jobs))

    async def enqueue() -> None:
        for _ in remaining:
            await queue.enqueue(
                NOOP_JOB,
                key=str(uuid.uuid4()),
                retries=settings.job_attempts,
                timeout=settings.job_timeout_seconds,
                retry_delay=RETRY_DELAY_S,
                retry_backoff=MAX_RETRY_DELAY_S,
                ttl=JOB_TTL_S,
            )

    started = time.monotonic()
    await asyncio.gather(*(enqueue() for _ in range(ENQUEUE_CONCURRENCY)))
    while await queue.count("incomplete"):
        await asyncio.sleep(DRAIN_POLL_S)
    return time.monotonic() - started


async def direct_write(database_url: str | None, workload: Workload, concurrency: int, log_dir: Path) -> DirectWrite:
    """The workload's changes through `WidgetService`, `concurrency` skus at a time, each change in its own session
    and commit; on `database_url` (migrated already), or with `None` on a fresh SQLite file in `log_dir`."""
    _quiet()
    if database_url is None:
        settings = Settings(database_url=f"sqlite:///{log_dir / 'direct-write.db'}")
        await asyncio.to_thread(upgrade_database, settings)
    else:
        settings = Settings(database_url=database_url)
    alchemy = build_alchemy(settings)
    skus = iter(range(workload.skus))

    async def lane() -> None:
        for sku in skus:
            for step in range(workload.writes(sku)):
                await apply_change(alchemy, workload.sku(sku), step)

    started = time.monotonic()
    try:
        await asyncio.gather(*(lane() for _ in range(concurrency)))
    finally:
        await alchemy.get_engine().dispose()
    elapsed = time.monotonic() - started
    database = (
        "SQLite (a fresh file)" if database_url is None else settings.sqlalchemy_url.split(":", 1)[0].split("+")[0]
    )
    return DirectWrite(workload.commands, workload.commands / elapsed, concurrency, database)


async def apply_change(alchemy: SQLAlchemyAsyncConfig, sku: str, step: int) -> None:
    """One change as a worker makes it, minus the command bookkeeping: read the widget, change it, commit."""
    async with alchemy.get_session() as session:
        widgets = WidgetService(session=session)
        current = await widgets.current([sku])
        values = stamped_values(step, time.time_ns())
        if step == 0:
            await widgets.create_widget(current, sku, values)
        else:
            await widgets.update_widget(current, sku, values, None)
        await session.commit()


def _quiet() -> None:
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)
