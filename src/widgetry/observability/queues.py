"""The queue as operators see it: jobs waiting and running, and each worker's last heartbeat."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from saq.queue.redis import RedisQueue

WORKER_INFO_INTERVAL_S = 10
"""How often each SAQ worker writes its stats (its heartbeat); SAQ keeps them for one second longer."""
WORKER_INFO_TTL_MS = (WORKER_INFO_INTERVAL_S + 1) * 1000


class QueueStatus(msgspec.Struct, frozen=True):
    queued: int
    active: int
    scheduled: int
    heartbeats: dict[str, float]
    """Seconds since each live worker's last heartbeat, by worker id."""


async def queue_status(queues: Sequence[RedisQueue]) -> QueueStatus:
    """Every partition's queue added up, read in one round trip. SAQ's `info()` names the live workers but not when
    each last wrote its stats; the expiry it files them under in its stats set (written at heartbeat + ttl) tells.
    A process serving several partitions (the in-process worker) beats on each under one id: it counts as late as its
    least recent heartbeat."""
    now_ms = time.time() * 1000
    async with queues[0].redis.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue.namespace("queued"))
            pipe.llen(queue.namespace("active"))
            pipe.zcard(queue.namespace("incomplete"))
            pipe.zrangebyscore(queue.namespace("stats"), now_ms, "+inf", withscores=True)
        replies = await pipe.execute()
    queued_total = active_total = scheduled_total = 0
    heartbeats: dict[str, float] = {}
    for queued, active, incomplete, workers in zip(*[iter(replies)] * 4, strict=True):
        queued_total, active_total = queued_total + queued, active_total + active
        scheduled_total += max(0, incomplete - queued - active)
        for key, expires in workers:
            worker, since = _worker_id(key), max(0.0, (now_ms - (expires - WORKER_INFO_TTL_MS)) / 1000)
            heartbeats[worker] = max(since, heartbeats.get(worker, 0.0))
    return QueueStatus(queued=queued_total, active=active_total, scheduled=scheduled_total, heartbeats=heartbeats)


def _worker_id(key: bytes | str) -> str:
    text = key.decode() if isinstance(key, bytes) else key
    return text.rsplit("worker_info:", 1)[-1]
