"""The embedded queue's dequeue waits on an in-process event, set by SAQ's enqueue and retry, not on fakeredis's
BLMOVE (which returns at once)."""

from __future__ import annotations

import asyncio
from typing import Any

from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from saq.job import Job

from widgetry.workers.queue import EmbeddedRedisQueue

WELL_BEFORE_THE_WAKE_TIMEOUT_S = EmbeddedRedisQueue.WAKE_TIMEOUT / 5


async def test_a_waiting_dequeue_takes_a_job_as_soon_as_it_is_enqueued_and_again_when_it_is_retried() -> None:
    queue = EmbeddedRedisQueue(FakeRedis(server=FakeServer()), name="embedded")
    found_nothing = asyncio.Event()
    lmove = queue.redis.lmove

    async def watched_lmove(*args: Any) -> Any:
        moved = await lmove(*args)
        if moved is None:
            found_nothing.set()
        return moved

    queue.redis.lmove = watched_lmove  # type: ignore[method-assign]

    waiting = asyncio.create_task(queue.dequeue())
    await found_nothing.wait()  # the dequeue looked, found the queue empty, and goes on to wait for its event
    enqueued = await queue.enqueue(Job("apply", key="job-1", retries=2))
    dequeued = await asyncio.wait_for(waiting, WELL_BEFORE_THE_WAKE_TIMEOUT_S)

    found_nothing.clear()
    waiting = asyncio.create_task(queue.dequeue())
    await found_nothing.wait()
    assert dequeued is not None
    await queue.retry(dequeued, "the worker stopped")
    retried = await asyncio.wait_for(waiting, WELL_BEFORE_THE_WAKE_TIMEOUT_S)

    assert enqueued is not None
    assert (dequeued.key, dequeued.function) == ("job-1", "apply")
    assert retried is not None
    assert (retried.key, retried.error) == ("job-1", "the worker stopped")


async def test_a_job_enqueued_again_while_it_is_queued_is_not_queued_twice() -> None:
    queue = EmbeddedRedisQueue(FakeRedis(server=FakeServer()), name="embedded")

    first = await queue.enqueue(Job("apply", key="job-1", retries=2))
    again = await queue.enqueue(Job("apply", key="job-1", retries=2))
    dequeued = await queue.dequeue(timeout=WELL_BEFORE_THE_WAKE_TIMEOUT_S)
    nothing_more = await queue.dequeue(timeout=WELL_BEFORE_THE_WAKE_TIMEOUT_S)

    assert first is not None
    assert again is None
    assert dequeued is not None
    assert dequeued.key == "job-1"
    assert nothing_more is None
