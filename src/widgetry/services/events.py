"""The outbox: event rows written with each change, and their publication state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import delete, update

from widgetry.domain.models import EventRecord


class EventRepository(SQLAlchemyAsyncRepository[EventRecord]):
    model_type = EventRecord


class EventService(SQLAlchemyAsyncRepositoryService[EventRecord]):
    repository_type = EventRepository

    async def mark_published(self, records: Sequence[EventRecord], stream_ids: Sequence[str]) -> None:
        if not records:
            return
        await self.repository.session.execute(
            update(EventRecord),
            [{"id": record.id, "stream_id": stream_id} for record, stream_id in zip(records, stream_ids, strict=True)],
        )
        await self.repository.session.commit()

    async def purge_published_before(self, cutoff: datetime) -> int:
        """Drops outbox rows already on the stream and older than `cutoff`; unpublished rows always stay."""
        session = self.repository.session
        result = await session.execute(
            delete(EventRecord).where(EventRecord.stream_id.is_not(None), EventRecord.occurred_at < cutoff)
        )
        await session.commit()
        return result.rowcount
