"""Queueing recorded commands: one function, one job per batch and partition (an import is queued alone). The job
names are the contract the worker registers under."""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from widgetry.services.imports import IMPORT_TYPE
from widgetry.services.unavailable import is_unavailable

if TYPE_CHECKING:
    from saq.queue import Queue

    from widgetry.domain.models import CommandRecord
    from widgetry.settings import Settings

logger = logging.getLogger(__name__)

APPLY_COMMANDS = "apply_commands"
"""The job that applies a batch of commands recorded together (one id for a command queued on its own)."""
APPLY_COMMAND = "apply_command"
"""The single-command job of earlier releases, still run for jobs they left queued."""
IMPORT_WIDGETS = "import_widgets"
"""The job that applies an import's rows in batches and ends the import."""
IMPORT_HEARTBEAT_S = 60
"""An import job touches its job after every batch; one silent for this long is taken as dead and run again. An
import has no fixed timeout: ten thousand rows on a slow database may take minutes, and each batch is progress."""
RETRY_DELAY_S = 1.0
MAX_RETRY_DELAY_S = 30.0
"""After a failed attempt a job waits up to 1 s, then up to twice as long each time, at most 30 s: SAQ draws each
wait at random below that bound, so nine waits come to 75 s on average and 151 s at most."""
ENQUEUE_TIMEOUT_S = 1.0
"""How long intake waits on Redis to queue a command it has recorded before leaving it to the recovery pass."""


def partition_of(sku: str | None, partitions: int) -> int:
    """The partition, of `partitions`, whose queue takes the sku's commands. CRC-32 of the sku: the same in every
    process and after every restart, which Python's own `hash` of a string is not. An import (no sku of its own,
    its rows any) goes to partition 0."""
    if partitions == 1 or sku is None:
        return 0
    return zlib.crc32(sku.encode()) % partitions


async def enqueue(queues: Sequence[Queue], settings: Settings, commands: Sequence[CommandRecord]) -> bool:
    """Queues recorded commands on their skus' partitions (`queues[partition_of(sku)]`), one job per partition;
    says whether any job was queued. Where a command is queued decides only which worker applies it: each sku's
    order comes from its head row and `applied_seq` fence, whichever worker or partition applies its commands."""
    if len(queues) == 1:
        return await _enqueue(queues[0], settings, commands)
    parts: dict[int, list[CommandRecord]] = {}
    for command in commands:
        parts.setdefault(partition_of(command.sku, len(queues)), []).append(command)
    queued = await asyncio.gather(*(_enqueue(queues[part], settings, batch) for part, batch in parts.items()))
    return any(queued)


async def _enqueue(queue: Queue, settings: Settings, commands: Sequence[CommandRecord]) -> bool:
    """Queues recorded commands as one job, keyed by the first command's id, so queueing a command twice on its own
    queues it once; says whether a job was queued (`False`: one with that key was already waiting or running).

    An import is one kind of command: queued alone, its job (`import_widgets`) applies its rows in batches and has no
    fixed timeout, only a heartbeat, since each batch is progress. Any other commands are applied together
    (`apply_commands`). Either job is retried (each run goes on where the last one stopped: the sku fences stop a
    re-run). SAQ's defaults are not safe here: `retries=1` means a single attempt, and a job whose worker is killed
    is only re-run when it has `retries >= 2` and a `timeout`; both are set deliberately.
    """
    first = commands[0]
    retried = {
        "key": str(first.id),
        "retries": settings.job_attempts,
        "retry_delay": RETRY_DELAY_S,
        "retry_backoff": MAX_RETRY_DELAY_S,
        "ttl": 600,
    }
    if first.type == IMPORT_TYPE:
        if len(commands) > 1:
            raise ValueError("an import is queued alone")
        job = await queue.enqueue(
            IMPORT_WIDGETS, command_id=str(first.id), timeout=0, heartbeat=IMPORT_HEARTBEAT_S, **retried
        )
    else:
        job = await queue.enqueue(
            APPLY_COMMANDS,
            command_ids=[str(command.id) for command in commands],
            timeout=settings.job_timeout_seconds,
            **retried,
        )
    return job is not None


async def enqueue_or_leave_to_recovery(
    queues: Sequence[Queue], settings: Settings, commands: Sequence[CommandRecord]
) -> None:
    """`enqueue`, for a request whose commands are recorded: a queue that is down or slow loses nothing (the record is
    the source of truth, and the recovery pass queues unfinished commands again), so the client is not kept waiting
    on Redis for more than `ENQUEUE_TIMEOUT_S`, nor failed for it."""
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
            await enqueue(queues, settings, commands)
    except Exception as error:
        if not is_unavailable(error):
            raise
        logger.warning(
            "%d commands recorded but not queued (%r); the recovery pass will queue them", len(commands), error
        )
