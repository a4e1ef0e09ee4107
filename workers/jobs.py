"""The jobs workers run. Each opens its own session, calls the service layer, commits, then publishes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from widgetry.domain.problems import CommandFailed
from widgetry.services.commands import CommandService
from widgetry.services.events import EventService
from widgetry.services.intake import dispatch

if TYPE_CHECKING:
    from saq.queue import Queue

    from widgetry.connections import Connections
    from widgetry.domain.models import EventRecord

logger = logging.getLogger(__name__)

RECOVERY_GRACE = timedelta(seconds=30)
"""How long an accepted command may wait for its job before the recovery pass queues it again."""


async def apply_command(ctx: dict[str, Any], *, command_id: str) -> None:
    """Applies one command (and any earlier pending one of its sku). Safe to run more than once."""
    connections: Connections = ctx["connections"]
    job = ctx["job"]
    try:
        async with connections.alchemy.get_session() as session:
            events = await CommandService(session=session).apply(UUID(command_id))
        await publish(connections, events)
    except Exception as exc:
        if job.attempts < job.retries:
            raise
        logger.exception("command %s failed after %s attempts", command_id, job.attempts)
        failure = CommandFailed(f"The command could not be applied after {job.attempts} attempts: {exc!r}")
        async with connections.alchemy.get_session() as session:
            await publish(connections, await CommandService(session=session).mark_failed(UUID(command_id), failure))
        raise


async def publish(connections: Connections, events: list[EventRecord]) -> None:
    if not events:
        return
    stream_ids = await connections.publisher.publish(events)
    async with connections.alchemy.get_session() as session:
        await EventService(session=session).mark_published(events, stream_ids)


async def purge_expired(ctx: dict[str, Any]) -> dict[str, int]:
    """Forgets finished commands and published events older than the retention period (a cron job)."""
    connections: Connections = ctx["connections"]
    cutoff = datetime.now(UTC) - timedelta(days=connections.settings.command_retention_days)
    async with connections.alchemy.get_session() as session:
        commands = await CommandService(session=session).purge_finished_before(cutoff)
        events = await EventService(session=session).purge_published_before(cutoff)
    return {"commands": commands, "events": events}


def startup_hook(connections: Connections) -> Callable[[dict[str, Any]], Awaitable[None]]:
    async def startup(ctx: dict[str, Any]) -> None:
        ctx["connections"] = connections
        await requeue_unfinished(connections, ctx["worker"].queue)

    return startup


async def recover_unfinished(ctx: dict[str, Any]) -> int:
    """Queues again commands accepted a while ago and still unfinished: their enqueue failed (Redis was down at
    intake) or Redis lost their job (a flush, a restart without persistence). A cron job, in every worker mode."""
    connections: Connections = ctx["connections"]
    accepted_before = datetime.now(UTC) - RECOVERY_GRACE
    return await requeue_unfinished(connections, ctx["worker"].queue, accepted_before)


async def requeue_unfinished(connections: Connections, queue: Queue, accepted_before: datetime | None = None) -> int:
    """Queues every unfinished command again (accepted before the given time). Jobs are keyed by command id, so a
    command whose job is still queued or running is not queued twice, and a re-run of one that did finish changes
    nothing: the sku's applied_seq fence stops it."""
    async with connections.alchemy.get_session() as session:
        unfinished = await CommandService(session=session).unfinished(accepted_before)
    for record in unfinished:
        await dispatch(queue, connections.settings, record.id)
    if unfinished:
        logger.info("re-queued %d unfinished commands", len(unfinished))
    return len(unfinished)
