"""Queueing accepted commands. The job name is the contract the worker registers under."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from uuid import UUID

from widgetry.connections import is_unavailable

if TYPE_CHECKING:
    from saq.queue import Queue

    from widgetry.settings import Settings

logger = logging.getLogger(__name__)

APPLY_COMMAND = "apply_command"
RETRY_DELAY_S = 1.0
MAX_RETRY_DELAY_S = 30.0
"""After a failed attempt a job waits up to 1 s, then up to twice as long each time, at most 30 s: SAQ draws each
wait at random below that bound, so nine waits come to 75 s on average and 151 s at most."""
ENQUEUE_TIMEOUT_S = 1.0
"""How long intake waits on Redis to queue a command it has recorded before leaving it to the recovery pass."""


async def enqueue(queue: Queue, settings: Settings, command_id: UUID) -> None:
    """Queues a recorded command. A queue that is down or slow loses nothing: the record is the source of truth,
    and the recovery pass queues unfinished commands again; the client is not kept waiting on Redis meanwhile."""
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
            await dispatch(queue, settings, command_id)
    except Exception as error:
        if not is_unavailable(error):
            raise
        logger.warning("command %s recorded but not queued (%r); the recovery pass will queue it", command_id, error)


async def dispatch(queue: Queue, settings: Settings, command_id: UUID) -> bool:
    """Queues the job that applies a command; keyed by the command id, so queueing it twice queues it once.
    Says whether a job was queued (`False`: one for the command was already waiting or running).

    SAQ's defaults are not safe here: `retries=1` means a single attempt, and a job whose worker is killed is
    only re-run when it has `retries >= 2` and a `timeout`. Both are set deliberately.
    """
    job = await queue.enqueue(
        APPLY_COMMAND,
        key=str(command_id),
        command_id=str(command_id),
        retries=settings.job_attempts,
        timeout=settings.job_timeout_seconds,
        retry_delay=RETRY_DELAY_S,
        retry_backoff=MAX_RETRY_DELAY_S,
        ttl=600,
    )
    return job is not None
