"""This process's share of the service's counts (commands accepted and finished, events published), gathered in
memory and added into one Redis hash that every web process reads at scrape time (see `observability.metrics`).

Counting costs the hot paths a dictionary update each: the counts go to Redis in one pipelined HINCRBY after each
worker job and every second, never on a request's or a command's way.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from widgetry.domain.commands import CommandStatus

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))
"""Seconds from accepted to finished: milliseconds when the service keeps up, minutes for a large import."""
FLUSH_INTERVAL_S = 1.0
REDIS_TIMEOUT_S = 1.0
OUTCOMES = {CommandStatus.SUCCEEDED.value: "applied", CommandStatus.FAILED.value: "failed"}


class Counts:
    """The counts not yet added to Redis: one per app (its `Connections`), so what one app counts never lands in
    another's Redis (tests run many apps in one process)."""

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.key = key
        self.fields: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()

    def accepted(self, command_type: str) -> None:
        self.fields[f"accepted:{command_type}"] += 1

    def finished(self, command_type: str, status: str, seconds: float) -> None:
        self.fields[f"{OUTCOMES[status]}:{command_type}"] += 1
        self.fields[f"latency:{command_type}:{bisect.bisect_left(LATENCY_BUCKETS, seconds)}"] += 1
        self.seconds[command_type] += seconds

    def published(self, count: int) -> None:
        self.fields["published"] += count

    async def flush(self) -> None:
        """Adds the counts into the Redis hash; on failure keeps them for the next flush."""
        if not (self.fields or self.seconds):
            return
        fields, seconds = self.fields, self.seconds
        self.fields, self.seconds = Counter(), Counter()
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S), self.redis.pipeline(transaction=True) as pipe:
                for field, count in fields.items():
                    pipe.hincrby(self.key, field, count)
                for command_type, total in seconds.items():
                    pipe.hincrbyfloat(self.key, f"latency_sum:{command_type}", total)
                await pipe.execute()
        except Exception as error:  # noqa: BLE001 - counted again at the next flush
            self.fields.update(fields)
            self.seconds.update(seconds)
            logger.warning("could not add metrics to Redis (%r); kept for the next flush", error)


@contextlib.asynccontextmanager
async def flushing(counts: Counts) -> AsyncIterator[None]:
    """Adds this process's counts to Redis every second while the app runs, and once more when it stops."""

    async def flush_forever() -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await counts.flush()
            # A cancellation that reaches the flush inside the Redis pipeline can be taken in there and not passed
            # on (seen: the stop below then waited for ever on a loop gone back to sleep).
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise asyncio.CancelledError

    task = asyncio.create_task(flush_forever(), name="widgetry-metrics-flush")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await counts.flush()
