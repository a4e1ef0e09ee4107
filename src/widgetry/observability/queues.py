"""The queue as operators see it: jobs waiting and running, and each worker's last heartbeat."""

from __future__ import annotations

import time
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


async def queue_status(queue: RedisQueue) -> QueueStatus:
    """Read in one round trip. SAQ's `info()` names the live workers but not when each last wrote its stats; the
    expiry it files them under in its stats set (written at heartbeat + ttl) tells."""
    now_ms = time.time() * 1000
    async with queue.redis.pipeline(transaction=False) as pipe:
        pipe.llen(queue.namespace("queued"))
        pipe.llen(queue.namespace("active"))
        pipe.zcard(queue.namespace("incomplete"))
        pipe.zrangebyscore(queue.namespace("stats"), now_ms, "+inf", withscores=True)
        queued, active, incomplete, workers = await pipe.execute()
    heartbeats = {
        _worker_id(key): max(0.0, (now_ms - (expires - WORKER_INFO_TTL_MS)) / 1000) for key, expires in workers
    }
    return QueueStatus(
        queued=queued, active=active, scheduled=max(0, incomplete - queued - active), heartbeats=heartbeats
    )


def _worker_id(key: bytes | str) -> str:
    text = key.decode() if isinstance(key, bytes) else key
    return text.rsplit("worker_info:", 1)[-1]
