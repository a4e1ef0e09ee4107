"""The jobs workers run. Each opens its unit of work, calls the service layer, commits it, then publishes."""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from saq.job import Status

from widgetry.domain.problems import CommandFailed
from widgetry.observability.outcomes import observed
from widgetry.services.apply import Applied, ApplyService, claim
from widgetry.services.batching import GroupCommit
from widgetry.services.commands import CommandService
from widgetry.services.imports import IMPORT_TYPE, ImportService
from widgetry.services.publish import EventService, publish_pending_autocommit
from widgetry.services.queries.held import held_connection
from widgetry.services.queue import APPLY_COMMAND, APPLY_COMMANDS, IMPORT_WIDGETS, enqueue
from widgetry.services.unavailable import is_unavailable
from widgetry.services.units import unit_of_work

if TYPE_CHECKING:
    from saq.job import Job
    from saq.queue import Queue

    from widgetry.connections import Connections
    from widgetry.domain.models import CommandRecord, EventRecord

logger = logging.getLogger(__name__)

MAX_RECOVERIES = 5
"""Times the recovery pass queues one command again before giving up on it (each time after its job was lost or
its attempts ran out: with a job that kills its worker, ten worker deaths a time)."""
RECOVERY_BATCH = 1_000
"""Commands the recovery pass queues again per run, oldest first; the next run takes the rest."""
RELAY_BATCH = 100
"""Skus whose leftover events the relay publishes in one transaction."""
APPLY_JOBS = (APPLY_COMMANDS, APPLY_COMMAND)
IMPORT_BATCH = 500
"""An import's rows applied in one transaction; a `command.progress` event follows each batch (the contract: at
least every 500 widgets)."""
APPLY_JOBS_PER_BATCH = 50
"""Jobs applied in one transaction at most (each carries the commands intake recorded together)."""


async def apply_commands(ctx: dict[str, Any], *, command_ids: list[str]) -> None:
    """Applies a batch of commands (and any earlier pending ones of their skus) in one transaction, then publishes
    their events. Safe to run more than once.

    What a command itself gets wrong (the widget exists, is missing, moved on) ends it `failed` at once, inside
    the service. What is left to raise is the environment failing (the database or Redis unreachable, a
    deadlock): SAQ runs the job again with backoff, and `end_failed_command` ends its commands once its attempts
    are spent.
    """
    ids = [UUID(command_id) for command_id in command_ids]
    if (applier := ctx.get("applier")) is not None:
        await applier.apply(ids)
    else:
        await apply_and_publish(ctx["connections"], ids)


class CommandApplier:
    """A worker process's jobs, applied with a group commit: jobs that start while a batch is being applied join
    the next one. When the worker falls behind, its concurrent jobs (up to its concurrency) go into one transaction
    and one publish, so it catches up; a job alone is applied at once, alone.

    Applying and publishing are two group commits in a row, so they overlap: while one batch's events are published,
    the next batch is applied. A job ends once its events are published (or fails, to be run again, if they could
    not be). A batch that knows every unpublished event of its skus (it wrote them all) publishes them with no read;
    otherwise the publish reads the skus' outbox. Either way each sku's events go out in commit order, whichever
    batch or worker wrote them (see `widgetry.services.publish`)."""

    def __init__(self, connections: Connections) -> None:
        self._connections = connections
        self._applies: GroupCommit[list[UUID], Applied] = GroupCommit(
            self._apply, max_items=APPLY_JOBS_PER_BATCH, name="widgetry-apply"
        )
        self._publishes: GroupCommit[Applied, None] = GroupCommit(
            self._publish, max_items=APPLY_JOBS_PER_BATCH, name="widgetry-publish"
        )

    async def apply(self, command_ids: list[UUID]) -> None:
        applied = await self._applies.submit(command_ids)
        if applied.skus:
            await self._publishes.submit(applied)

    async def _apply(self, jobs: list[list[UUID]]) -> list[Applied | Exception]:
        applied = await apply_batch(self._connections, [command_id for ids in jobs for command_id in ids])
        return [applied] * len(jobs)

    async def _publish(self, jobs: list[Applied]) -> list[Exception | None]:
        # The jobs of one apply batch share its outcome: each batch once, in the order applied.
        await publish_applied(self._connections, list(dict.fromkeys(jobs)))
        return [None] * len(jobs)


async def apply_batch(connections: Connections, command_ids: list[UUID]) -> Applied:
    """Claims and applies the commands (see `ApplyService.apply_many`); returns what is then to be published."""
    alchemy = connections.alchemy
    if (held := held_connection(alchemy.get_engine())) is not None:
        targets = await claim(held, command_ids)
    else:
        async with unit_of_work(alchemy) as session:
            targets = await ApplyService(session=session).claim(command_ids)
    if not targets:
        return Applied()
    try:
        async with unit_of_work(alchemy) as session:
            return await ApplyService(session=session).apply_many(targets)
    except Exception as error:
        if is_unavailable(error):
            raise
        # Something in the batch the database refused, or a bug: its transaction is gone; apply the batch again with
        # each command in a savepoint of its own, so the one at fault fails alone and leaves nothing of itself.
        logger.warning(
            "a batch of %d commands failed to apply together (%r): applying one at a time", len(command_ids), error
        )
        async with unit_of_work(alchemy) as session:
            return await ApplyService(session=session).apply_many(targets, careful=True)


async def apply_and_publish(connections: Connections, command_ids: list[UUID]) -> None:
    await publish_applied(connections, [await apply_batch(connections, command_ids)])


async def publish_applied(connections: Connections, batches: Sequence[Applied]) -> None:
    """Publishes what applied batches left, in the order they were applied: their own events as they are when each
    batch knows them all, else the outbox of all their skus."""
    skus = sorted({sku for batch in batches for sku in batch.skus})
    if any(batch.events is None for batch in batches):
        await publish_pending(connections, skus)
    elif known := [event for batch in batches for event in batch.events or ()]:
        await publish_pending(connections, skus, known)


async def apply_command(ctx: dict[str, Any], *, command_id: str) -> None:
    """The single-command job earlier releases queued: applied as a batch of one."""
    await apply_commands(ctx, command_ids=[command_id])


async def import_widgets(ctx: dict[str, Any], *, command_id: str) -> None:
    """Runs an import: applies its unfinished rows in batches (each row behind its sku's fence, as any command),
    reports progress after each batch, then ends the import with its result. Safe to run again: a re-run goes on
    with the rows still unfinished."""
    connections: Connections = ctx["connections"]
    import_id = UUID(command_id)
    async with unit_of_work(connections.alchemy) as session:
        if not await ImportService(session=session).start(import_id):
            return
    after = ""
    while True:
        async with unit_of_work(connections.alchemy) as session:
            rows = await ImportService(session=session).pending_rows(import_id, after, IMPORT_BATCH)
        if not rows:
            break
        await apply_and_publish(connections, [row_id for row_id, _ in rows])
        after = rows[-1][1]
        async with unit_of_work(connections.alchemy) as session:
            await ImportService(session=session).record_progress(import_id)
        await publish_command_events(connections, import_id)
        if (job := ctx.get("job")) is not None:
            await job.update()  # the heartbeat: this import is alive and moving
    async with unit_of_work(connections.alchemy) as session:
        finished = await ImportService(session=session).finish(import_id)
    await publish_command_events(connections, import_id)
    if not finished:
        # A row was left behind (a retry of it moved its seq on meanwhile, say): the next attempt takes it.
        raise RuntimeError(f"import {import_id} has rows still unfinished")


def _job_command_ids(job: Job) -> list[str]:
    if job.function == APPLY_COMMANDS:
        return list(job.kwargs["command_ids"])
    return [job.kwargs["command_id"]]


async def end_failed_command(ctx: dict[str, Any]) -> None:
    """After a job: when an apply job has failed for good (its attempts spent, or timed out on the last one), each
    of its commands still unfinished ends `failed` with an `internal` problem and one `command.failed` event,
    rather than staying accepted."""
    job = ctx.get("job")
    if job is None or job.function not in (*APPLY_JOBS, IMPORT_WIDGETS):
        return
    if job.status not in (Status.FAILED, Status.ABORTED):
        return
    if job.status is Status.ABORTED and job.retryable:
        # Aborted by SAQ's sweep (it ran past its timeout): the sweep queues it again itself.
        return
    connections: Connections = ctx["connections"]
    failure = CommandFailed(f"The command could not be applied after {job.attempts} attempts.")
    if job.function == IMPORT_WIDGETS:
        logger.error("import %s failed after %s attempts: %s", job.kwargs["command_id"], job.attempts, job.error)
        await fail_import(connections, UUID(job.kwargs["command_id"]), failure)
        return
    ended: list[str] = []
    for command_id in _job_command_ids(job):
        # Should the database still be down, this raises and the commands stay accepted: the recovery pass queues
        # them again later, which is what a command deserves when nothing was wrong with it.
        async with unit_of_work(connections.alchemy) as session:
            sku = await ApplyService(session=session).mark_failed(UUID(command_id), failure)
        if sku is not None:  # not when the command had succeeded and only publishing its event failed
            logger.error("command %s failed after %s attempts: %s", command_id, job.attempts, job.error)
            ended.append(sku)
    await publish_pending(connections, ended)


async def fail_import(connections: Connections, import_id: UUID, failure: CommandFailed) -> None:
    async with unit_of_work(connections.alchemy) as session:
        await ImportService(session=session).fail(import_id, failure)
    await publish_command_events(connections, import_id)


async def publish_command_events(connections: Connections, command_id: UUID) -> None:
    async with unit_of_work(connections.alchemy) as session:
        await EventService(session=session).publish_command_events(command_id, observed(connections))


async def publish_pending(
    connections: Connections, skus: Collection[str], known: Sequence[EventRecord] | None = None
) -> None:
    """Publishes the skus' unpublished events: `known`, when the caller knows them all, else read from the outbox."""
    if not skus:
        return
    if (held := held_connection(connections.alchemy.get_engine())) is not None:
        await publish_pending_autocommit(held, skus, observed(connections), known)
        return
    async with unit_of_work(connections.alchemy) as session:
        await EventService(session=session).publish_pending(skus, observed(connections), known)


async def relay_unpublished(ctx: dict[str, Any]) -> int:
    """Publishes events committed a while ago and still not on the stream (Redis was down when their job ended).
    A cron job; the publisher puts an event on the stream at most once, so racing a worker's publish is safe."""
    connections: Connections = ctx["connections"]
    committed_before = datetime.now(UTC) - _grace(connections)
    async with unit_of_work(connections.alchemy) as session:
        events = EventService(session=session)
        skus = await events.skus_with_unpublished(committed_before, limit=RECOVERY_BATCH)
        commands = await events.commands_with_unpublished(committed_before, limit=RECOVERY_BATCH)
    for first in range(0, len(skus), RELAY_BATCH):
        await publish_pending(connections, skus[first : first + RELAY_BATCH])
    for command_id in commands:
        await publish_command_events(connections, command_id)
    return len(skus) + len(commands)


async def recover_unfinished(ctx: dict[str, Any]) -> int:
    """Queues again commands accepted a while ago and still unfinished: their enqueue failed (Redis was down at
    intake) or Redis lost their job (a flush, a restart without persistence). A cron job, in every worker mode."""
    connections: Connections = ctx["connections"]
    accepted_before = datetime.now(UTC) - _grace(connections)
    return await requeue_unfinished(connections, ctx["queues"], accepted_before)


def _grace(connections: Connections) -> timedelta:
    return timedelta(seconds=connections.settings.recovery_grace_seconds)


async def requeue_unfinished(
    connections: Connections, queues: Sequence[Queue], accepted_before: datetime | None = None
) -> int:
    """Queues unfinished commands again (those accepted before the given time), oldest first. Jobs are keyed by
    command id, so a command whose job is still queued or running is not queued twice, and a re-run of one that
    did finish changes nothing: the sku's applied_seq fence stops it.

    Each time a command's job had to be queued anew is counted; one queued `MAX_RECOVERIES` times and still not
    finished (its job keeps dying with its worker, say) ends `failed` instead of going round for ever.
    """
    async with unit_of_work(connections.alchemy) as session:
        unfinished = await CommandService(session=session).unfinished(accepted_before, limit=RECOVERY_BATCH)
    requeued: list[UUID] = []
    for record in unfinished:
        if record.recoveries >= MAX_RECOVERIES:
            await give_up(connections, record)
        elif await enqueue(queues, connections.settings, [record]):
            requeued.append(record.id)
    if requeued:
        async with unit_of_work(connections.alchemy) as session:
            await CommandService(session=session).count_recoveries(requeued)
        logger.info("re-queued %d unfinished commands", len(requeued))
    return len(requeued)


async def give_up(connections: Connections, record: CommandRecord) -> None:
    command_id, recoveries = record.id, record.recoveries
    logger.error("command %s queued again %d times and never finished: it ends failed", command_id, recoveries)
    failure = CommandFailed(f"The command was queued again {recoveries} times and never finished.")
    if record.type == IMPORT_TYPE:
        await fail_import(connections, command_id, failure)
        return
    async with unit_of_work(connections.alchemy) as session:
        sku = await ApplyService(session=session).mark_failed(command_id, failure)
    await publish_pending(connections, [sku] if sku else [])


async def purge_expired(ctx: dict[str, Any]) -> dict[str, int]:
    """Forgets finished commands and published events older than the retention period (a cron job)."""
    connections: Connections = ctx["connections"]
    cutoff = datetime.now(UTC) - timedelta(days=connections.settings.command_retention_days)
    async with unit_of_work(connections.alchemy) as session:
        commands = await CommandService(session=session).purge_finished_before(cutoff)
        events = await EventService(session=session).purge_published_before(cutoff)
    return {"commands": commands, "events": events}


def startup_hook(
    connections: Connections, queues: Sequence[Queue], *, recover: bool
) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """A partition's worker's start: its context, and with `recover` (partition 0's) the recovery pass, which queues
    every partition's unfinished commands, each on its sku's partition."""

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["connections"] = connections
        ctx["queues"] = queues
        ctx["applier"] = CommandApplier(connections)
        gc.collect()
        gc.freeze()  # as the web process does (app.freeze_startup_objects): what starting made lives on
        if not recover:
            return
        try:
            await requeue_unfinished(connections, queues)
        except Exception:
            # A worker starting while the database or Redis is down still starts: the periodic pass recovers.
            logger.exception("recovery at start-up failed; the periodic recovery pass will retry")

    return startup
