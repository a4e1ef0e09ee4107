"""Recording and queueing accepted commands. The job names are the contract the worker registers under."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING
from uuid import UUID

from widgetry.connections import is_unavailable
from widgetry.services.commands import CommandService, Submission

if TYPE_CHECKING:
    from advanced_alchemy.config import SQLAlchemyAsyncConfig
    from saq.queue import Queue

    from widgetry.domain.models import CommandRecord
    from widgetry.settings import Settings

logger = logging.getLogger(__name__)

APPLY_COMMANDS = "apply_commands"
"""The job that applies a batch of commands recorded together (one id for a command queued on its own)."""
APPLY_COMMAND = "apply_command"
"""The single-command job of earlier releases, still run for jobs they left queued."""
MAX_BATCH = 200
"""Commands recorded in one transaction and queued as one job, at most."""
FLUSHES = 1
"""Batches a web process records at once. One: the requests arriving while it commits make the next batch, so
batches grow with the load (measured: 5,000 creates from 64 connections went 950/s to 1,035/s end to end against
two at once, with batches of ~60 instead of ~10), and a lone request is still recorded at once."""

Accepted = asyncio.Future["CommandRecord"]
"""Where a waiting request is handed its recorded command (or the error that stopped it)."""
RETRY_DELAY_S = 1.0
MAX_RETRY_DELAY_S = 30.0
"""After a failed attempt a job waits up to 1 s, then up to twice as long each time, at most 30 s: SAQ draws each
wait at random below that bound, so nine waits come to 75 s on average and 151 s at most."""
ENQUEUE_TIMEOUT_S = 1.0
"""How long intake waits on Redis to queue a command it has recorded before leaving it to the recovery pass."""


class CommandIntake:
    """Records write requests' commands with a group commit, and queues each batch as one job.

    Requests arriving while a batch commits wait for the next one, so under load one transaction and one job carry
    many commands, and with a single request in flight it is recorded at once, alone. Nobody is answered before
    the commit that makes their command durable. Each web process has one.
    """

    def __init__(self, alchemy: SQLAlchemyAsyncConfig, queue: Queue, settings: Settings) -> None:
        self._alchemy = alchemy
        self._queue = queue
        self._settings = settings
        self._waiting: list[tuple[Submission, Accepted]] = []
        self._flushes = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def accept(self, submission: Submission) -> CommandRecord:
        """Records the command (committed) and queues it; returns its record."""
        accepted = asyncio.get_running_loop().create_future()
        self._waiting.append((submission, accepted))
        if self._flushes < FLUSHES:
            self._flushes += 1
            # A task of its own: a client that hangs up must not cancel the commit other requests wait on.
            task = asyncio.create_task(self._flush_waiting(), name="widgetry-intake")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await accepted

    async def _flush_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                recorded = await self._record(batch)
                try:
                    await enqueue(self._queue, self._settings, [record.id for _, record in recorded])
                except Exception:
                    # Recorded is what the client is promised; the recovery pass queues what was not.
                    logger.exception("%d commands recorded, not queued: left to the recovery pass", len(recorded))
                for accepted, record in recorded:
                    if not accepted.done():
                        accepted.set_result(record)
        finally:
            self._flushes -= 1

    async def _record(self, batch: list[tuple[Submission, Accepted]]) -> list[tuple[Accepted, CommandRecord]]:
        """Records the batch in one transaction; what fails is told to the requests concerned (a database that is
        down: all of them, as a 503)."""
        try:
            async with self._alchemy.get_session() as session:
                records = await CommandService(session=session).accept_many([submission for submission, _ in batch])
            return [(accepted, record) for (_, accepted), record in zip(batch, records, strict=True)]
        except Exception as error:  # noqa: BLE001 - handed to the requests, which answer with its problem
            if is_unavailable(error) or len(batch) == 1:
                _fail(batch, error)
                return []
        # Something in one command the database refused: record them one by one, so only that one fails.
        recorded = []
        for submission, accepted in batch:
            try:
                async with self._alchemy.get_session() as session:
                    recorded.append((accepted, (await CommandService(session=session).accept_many([submission]))[0]))
            except Exception as error:  # noqa: BLE001 - as above, to this one request
                _fail([(submission, accepted)], error)
        return recorded


def _fail(batch: list[tuple[Submission, Accepted]], error: Exception) -> None:
    for _, accepted in batch:
        if not accepted.done():
            accepted.set_exception(error)


async def enqueue(queue: Queue, settings: Settings, command_ids: Sequence[UUID]) -> None:
    """Queues recorded commands as one job. A queue that is down or slow loses nothing: the record is the source of
    truth, and the recovery pass queues unfinished commands again; the client is not kept waiting on Redis."""
    if not command_ids:
        return
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
            await dispatch(queue, settings, command_ids)
    except Exception as error:
        if not is_unavailable(error):
            raise
        logger.warning(
            "%d commands recorded but not queued (%r); the recovery pass will queue them", len(command_ids), error
        )


async def dispatch(queue: Queue, settings: Settings, command_ids: Sequence[UUID]) -> bool:
    """Queues the job that applies commands; keyed by the first command's id, so queueing a command twice on its
    own queues it once. Says whether a job was queued (`False`: one with that key was already waiting or running).

    SAQ's defaults are not safe here: `retries=1` means a single attempt, and a job whose worker is killed is
    only re-run when it has `retries >= 2` and a `timeout`. Both are set deliberately.
    """
    job = await queue.enqueue(
        APPLY_COMMANDS,
        key=str(command_ids[0]),
        command_ids=[str(command_id) for command_id in command_ids],
        retries=settings.job_attempts,
        timeout=settings.job_timeout_seconds,
        retry_delay=RETRY_DELAY_S,
        retry_backoff=MAX_RETRY_DELAY_S,
        ttl=600,
    )
    return job is not None
