"""Recording and queueing accepted commands. The job names are the contract the worker registers under."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from widgetry.domain.commands import command_type, encode_command
from widgetry.services.accept import AcceptService
from widgetry.services.batching import GroupCommit
from widgetry.services.commands import Submission
from widgetry.services.imports import IMPORT_TYPE
from widgetry.services.queries.commands import RECORD_BATCH, autocommit_engine
from widgetry.services.unavailable import is_unavailable
from widgetry.services.units import unit_of_work

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
IMPORT_WIDGETS = "import_widgets"
"""The job that applies an import's rows in batches and ends the import."""
IMPORT_HEARTBEAT_S = 60
"""An import job touches its job after every batch; one silent for this long is taken as dead and run again. An
import has no fixed timeout: ten thousand rows on a slow database may take minutes, and each batch is progress."""
MAX_BATCH = 200
"""Commands recorded in one transaction and queued as one job, at most."""
RETRY_DELAY_S = 1.0
MAX_RETRY_DELAY_S = 30.0
"""After a failed attempt a job waits up to 1 s, then up to twice as long each time, at most 30 s: SAQ draws each
wait at random below that bound, so nine waits come to 75 s on average and 151 s at most."""
ENQUEUE_TIMEOUT_S = 1.0
"""How long intake waits on Redis to queue a command it has recorded before leaving it to the recovery pass."""


class CommandIntake:
    """Records write requests' commands with a group commit, and queues each batch as one job.

    Requests arriving while a batch commits join the next one, so under load one transaction and one job carry
    many commands, and a request alone is recorded at once. Nobody is answered before the commit that makes their
    command durable. Each web process has one.
    """

    def __init__(self, alchemy: SQLAlchemyAsyncConfig, queue: Queue, settings: Settings) -> None:
        self._alchemy = alchemy
        self._queue = queue
        self._settings = settings
        self._batches = GroupCommit(self._record_and_queue, max_items=MAX_BATCH, name="widgetry-intake")
        self._autocommit = autocommit_engine(alchemy.get_engine())
        self._queueing: set[asyncio.Task[None]] = set()

    async def accept(self, submission: Submission) -> CommandRecord:
        """Records the command (committed) and queues it; returns its record."""
        return await self._batches.submit(submission)

    async def _record_and_queue(self, batch: list[Submission]) -> list[CommandRecord | Exception]:
        """Records the batch, and queues it while its requests are answered: durable is what a client is promised
        (a command recorded and not queued is queued by the recovery pass), so nobody waits on Redis, and the next
        batch is recorded while this one is queued."""
        outcomes = await self._record(batch)
        if recorded := [outcome for outcome in outcomes if not isinstance(outcome, Exception)]:
            task = asyncio.create_task(self._queue_recorded(recorded), name="widgetry-enqueue")
            self._queueing.add(task)
            task.add_done_callback(self._queueing.discard)
        return outcomes

    async def _queue_recorded(self, records: list[CommandRecord]) -> None:
        try:
            await enqueue_or_leave_to_recovery(self._queue, self._settings, records)
        except Exception:
            logger.exception("%d commands recorded, not queued: left to the recovery pass", len(records))

    async def drain(self) -> None:
        """Waits for the batches still being queued: as the process stops, before its Redis client closes."""
        while self._queueing:
            await asyncio.gather(*self._queueing, return_exceptions=True)

    async def _record(self, batch: list[Submission]) -> list[CommandRecord | Exception]:
        """Records the batch in one transaction. A database that is down fails them all (a 503 each); something
        it refused in one command is found by recording them one by one, so only that one fails."""
        try:
            return list(await self._accept(batch))
        except Exception as error:
            if is_unavailable(error) or len(batch) == 1:
                raise
        outcomes: list[CommandRecord | Exception] = []
        for submission in batch:
            try:
                outcomes += await self._accept([submission])
            except Exception as error:  # noqa: BLE001 - this request's outcome
                outcomes.append(error)
        return outcomes

    async def _accept(self, batch: list[Submission]) -> list[CommandRecord]:
        if self._autocommit is None:
            async with unit_of_work(self._alchemy) as session:
                return await AcceptService(session=session).accept_many(batch)
        # PostgreSQL: one statement on a connection outside any transaction, so it commits as it ends: one round
        # trip (no BEGIN, no COMMIT) makes the batch durable.
        accepted_at = datetime.now(UTC)
        async with self._autocommit.connect() as connection:
            await connection.execute(
                RECORD_BATCH,
                {
                    "ids": [submission.id for submission in batch],
                    "types": [command_type(submission.command) for submission in batch],
                    "skus": [submission.sku for submission in batch],
                    "payloads": [encode_command(submission.command) for submission in batch],
                    "accepted_at": accepted_at,
                },
            )
        return [submission.record(accepted_at) for submission in batch]


async def enqueue(queue: Queue, settings: Settings, commands: Sequence[CommandRecord]) -> bool:
    """Queues recorded commands as one job, keyed by the first command's id, so queueing a command twice on its own
    queues it once; says whether a job was queued (`False`: one with that key was already waiting or running).

    An import is one kind of command: queued alone, its job (`import_widgets`) applies its rows in batches and has no
    fixed timeout, only a heartbeat, since each batch is progress. Any other commands are applied together
    (`apply_commands`). Either job is retried (each run goes on where the last one stopped: the sku fences stop a
    re-run). SAQ's defaults are not safe here: `retries=1` means a single attempt, and a job whose worker is killed
    is only re-run when it has `retries >= 2` and a `timeout`; both are set deliberately.
    """
    first = commands[0]
    if first.type == IMPORT_TYPE:
        if len(commands) > 1:
            raise ValueError("an import is queued alone")
        job = await queue.enqueue(
            IMPORT_WIDGETS,
            key=str(first.id),
            command_id=str(first.id),
            retries=settings.job_attempts,
            timeout=0,
            heartbeat=IMPORT_HEARTBEAT_S,
            retry_delay=RETRY_DELAY_S,
            retry_backoff=MAX_RETRY_DELAY_S,
            ttl=600,
        )
    else:
        job = await queue.enqueue(
            APPLY_COMMANDS,
            key=str(first.id),
            command_ids=[str(command.id) for command in commands],
            retries=settings.job_attempts,
            timeout=settings.job_timeout_seconds,
            retry_delay=RETRY_DELAY_S,
            retry_backoff=MAX_RETRY_DELAY_S,
            ttl=600,
        )
    return job is not None


async def enqueue_or_leave_to_recovery(queue: Queue, settings: Settings, commands: Sequence[CommandRecord]) -> None:
    """`enqueue`, for a request whose commands are recorded: a queue that is down or slow loses nothing (the record is
    the source of truth, and the recovery pass queues unfinished commands again), so the client is not kept waiting
    on Redis for more than `ENQUEUE_TIMEOUT_S`, nor failed for it."""
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
            await enqueue(queue, settings, commands)
    except Exception as error:
        if not is_unavailable(error):
            raise
        logger.warning(
            "%d commands recorded but not queued (%r); the recovery pass will queue them", len(commands), error
        )
