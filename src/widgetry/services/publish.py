"""The outbox: event rows written with each change, published to the stream in commit order per sku.

Publishing takes no lock. One sku's events are written under its head's lock, so their ids follow its commit order,
and an event is committed before any later event of its sku exists. A publish reads its skus' unpublished events in
id order and puts each on the stream through the publisher's publish-once script, in that order. So before any
publish adds an event, each earlier event of its sku is on the stream already (published and recorded before the
read) or goes out ahead of it in the same pipeline (or was added by another publish racing this one, which the
script then finds): two publishes racing over one sku cannot put its events out of order, nor twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import bindparam, delete, func, select, update

from widgetry.domain.models import EventRecord
from widgetry.services.queries import events as queries

if TYPE_CHECKING:
    from widgetry.services.queries.held import HeldConnection

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

    async def publish_pending(
        self, skus: Collection[str], publish: Publish, known: Sequence[EventRecord] | None = None
    ) -> int:
        """Publishes the skus' unpublished events in the order they were committed, and marks them published (once
        the caller commits; an event published and not marked is published again, and the publisher puts it on the
        stream once). Events a crashed or failed earlier publish left behind go out first. One read, one publish
        (pipelined) and one update for the lot, however many skus a batch of commands touched; no lock (see the
        module's docstring). `known`: those events, in commit order, when the caller knows them all (it wrote them):
        no read then.
        """
        if known is None:
            known = list(await self.repository.session.execute(PENDING_FOR_SKUS, {"skus": sorted(set(skus))}))
        return await self._publish(list(known), publish)

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


async def publish_pending_autocommit(
    held: HeldConnection, skus: Collection[str], publish: Publish, known: Sequence[Any] | None = None
) -> int:
    """`EventService.publish_pending` on PostgreSQL, as single statements outside any transaction (the read unless
    the events are `known`, and the stream ids recorded at once): no BEGIN or COMMIT round trip after every batch."""
    if known is None:
        # Rows read by attribute (the publisher's input), so through SQLAlchemy: the rare path, after a failure.
        async with held.engine.connect() as connection:
            known = list(await connection.execute(PENDING_FOR_SKUS, {"skus": sorted(set(skus))}))
    if known:
        stream_ids = await publish(known)
        await held.fetch(queries.RECORD_STREAM_IDS, {"rows": [event.id for event in known], "stream_ids": stream_ids})
    return len(known)
