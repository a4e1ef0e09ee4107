"""The outbox: event rows written with each change, published to the stream in commit order per sku."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import bindparam, delete, func, select, update

from widgetry.domain.models import EventRecord
from widgetry.services.heads import lock_heads

Publish = Callable[[Sequence[EventRecord]], Awaitable[list[str]]]
"""Puts events on the stream in the order given and returns their stream ids. The outbox hands it rows read with
Core (the events table's columns, by attribute, as on a record): no ORM identity map on the path of every event."""

EVENTS = EventRecord.__table__
PENDING_FOR_SKUS = (
    select(EVENTS)
    .where(EVENTS.c.sku.in_(bindparam("skus", expanding=True)), EVENTS.c.stream_id.is_(None))
    .order_by(EVENTS.c.id)
)
PENDING_FOR_COMMAND = (
    select(EVENTS)
    .where(EVENTS.c.command_id == bindparam("command_id"), EVENTS.c.sku.is_(None), EVENTS.c.stream_id.is_(None))
    .order_by(EVENTS.c.id)
)
RECORD_STREAM_IDS = update(EVENTS).where(EVENTS.c.id == bindparam("row")).values(stream_id=bindparam("stream_id"))


class EventRepository(SQLAlchemyAsyncRepository[EventRecord]):
    model_type = EventRecord


class EventService(SQLAlchemyAsyncRepositoryService[EventRecord]):
    repository_type = EventRepository

    async def publish_pending(self, skus: Collection[str], publish: Publish) -> int:
        """Publishes the skus' unpublished events in the order they were committed, and marks them published (once
        the caller commits; an event published and not marked is published again, and the publisher puts it on the
        stream once).

        Their head rows are held meanwhile, so two workers cannot interleave one sku's events on the stream;
        events a crashed or failed earlier publish left behind go out first. One read, one publish (pipelined)
        and one update for the lot, however many skus a batch of commands touched.
        """
        session = self.repository.session
        ordered = sorted(set(skus))
        await lock_heads(session, ordered)
        pending = list(await session.execute(PENDING_FOR_SKUS, {"skus": ordered}))
        return await self._publish(pending, publish)

    async def publish_command_events(self, command_id: UUID, publish: Publish) -> int:
        """Publishes a command's own unpublished events (an import's progress and its outcome) in commit order. They
        have no sku, so no head row orders them: one job writes them one after another, and the publisher puts each
        event on the stream once however many publishers race for it."""
        pending = list(await self.repository.session.execute(PENDING_FOR_COMMAND, {"command_id": command_id}))
        return await self._publish(pending, publish)

    async def _publish(self, pending: list[Any], publish: Publish) -> int:
        session = self.repository.session
        if pending:
            stream_ids = await publish(pending)
            await session.execute(
                RECORD_STREAM_IDS,
                [
                    {"row": event.id, "stream_id": stream_id}
                    for event, stream_id in zip(pending, stream_ids, strict=True)
                ],
            )
        return len(pending)

    async def skus_with_unpublished(self, committed_before: datetime, limit: int) -> list[str]:
        """Skus with events committed before the given time and still not on the stream."""
        rows = await self.repository.session.scalars(
            select(EventRecord.sku)
            .where(EventRecord.stream_id.is_(None), EventRecord.occurred_at < committed_before)
            .group_by(EventRecord.sku)
            .order_by(func.min(EventRecord.id))
            .limit(limit)
        )
        return [sku for sku in rows if sku is not None]

    async def commands_with_unpublished(self, committed_before: datetime, limit: int) -> list[UUID]:
        """Commands with events of their own (no sku) committed before the given time and still not on the stream."""
        rows = await self.repository.session.scalars(
            select(EventRecord.command_id)
            .where(
                EventRecord.stream_id.is_(None),
                EventRecord.sku.is_(None),
                EventRecord.occurred_at < committed_before,
            )
            .group_by(EventRecord.command_id)
            .order_by(func.min(EventRecord.id))
            .limit(limit)
        )
        return list(rows)

    async def purge_published_before(self, cutoff: datetime) -> int:
        """Drops outbox rows already on the stream and older than `cutoff`; unpublished rows always stay."""
        session = self.repository.session
        result = await session.execute(
            delete(EventRecord).where(EventRecord.stream_id.is_not(None), EventRecord.occurred_at < cutoff)
        )
        return result.rowcount
