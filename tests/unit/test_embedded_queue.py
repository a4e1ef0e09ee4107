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


class Looks:
    """Counts the dequeues' looks at the queue (`LMOVE`s)."""

    def __init__(self, queue: EmbeddedRedisQueue) -> None:
        self.count = 0
        self._lmove = queue.redis.lmove
        queue.redis.lmove = self._counted  # type: ignore[method-assign]

    async def _counted(self, *args: Any) -> Any:
        self.count += 1
        return await self._lmove(*args)

    async def reach(self, count: int) -> None:
        while self.count < count:
            await asyncio.sleep(0)


async def test_each_job_queued_wakes_one_waiting_dequeue_and_every_job_is_taken() -> None:
    queue = EmbeddedRedisQueue(FakeRedis(server=FakeServer()), name="embedded")
    looks = Looks(queue)
    waiting = {asyncio.create_task(queue.dequeue()) for _ in range(10)}
    await looks.reach(len(waiting))  # each dequeue has found the queue empty and waits

    for n in range(3):
        await queue.enqueue(Job("apply", key=f"job-{n}", retries=2))
    taken: list[str] = []
    async with asyncio.timeout(WELL_BEFORE_THE_WAKE_TIMEOUT_S):
        while len(taken) < 3:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            taken += [task.result().key for task in done]
    for task in waiting:
        task.cancel()

    assert sorted(taken) == ["job-0", "job-1", "job-2"]
    assert looks.count == 10 + 3


async def test_a_job_queued_after_a_waiting_dequeue_was_cancelled_goes_to_one_still_waiting() -> None:
    queue = EmbeddedRedisQueue(FakeRedis(server=FakeServer()), name="embedded")
    looks = Looks(queue)
    cancelled = asyncio.create_task(queue.dequeue())
    await looks.reach(1)
    still_waiting = asyncio.create_task(queue.dequeue())
    await looks.reach(2)
    cancelled.cancel()

    await queue.enqueue(Job("apply", key="job-1", retries=2))
    dequeued = await asyncio.wait_for(still_waiting, WELL_BEFORE_THE_WAKE_TIMEOUT_S)

    assert dequeued is not None
    assert dequeued.key == "job-1"
