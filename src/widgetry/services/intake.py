"""Queueing accepted commands. The job name is the contract the worker registers under."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from uuid import UUID

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from saq.queue import Queue

    from widgetry.settings import Settings

logger = logging.getLogger(__name__)

APPLY_COMMAND = "apply_command"
RETRY_DELAY_S = 1.0
MAX_RETRY_DELAY_S = 30.0
"""A failed attempt waits about 1 s, then twice as long each time up to 30 s (SAQ jitters each wait)."""


async def enqueue(queue: Queue, settings: Settings, command_id: UUID) -> None:
    """Queues a recorded command. A queue that is down loses nothing: the record is the source of truth, and
    unfinished commands are queued again when a worker starts."""
    try:
        await dispatch(queue, settings, command_id)
    except (RedisError, OSError):
        logger.warning("command %s recorded but not queued; it will be queued on recovery", command_id, exc_info=True)


async def dispatch(queue: Queue, settings: Settings, command_id: UUID) -> None:
    """Queues the job that applies a command; keyed by the command id, so queueing it twice queues it once.

    SAQ's defaults are not safe here: `retries=1` means a single attempt, and a job whose worker is killed is
    only re-run when it has `retries >= 2` and a `timeout`. Both are set deliberately.
    """
    await queue.enqueue(
        APPLY_COMMAND,
        key=str(command_id),
        command_id=str(command_id),
        retries=settings.job_attempts,
        timeout=settings.job_timeout_seconds,
        retry_delay=RETRY_DELAY_S,
        retry_backoff=MAX_RETRY_DELAY_S,
        ttl=600,
    )
