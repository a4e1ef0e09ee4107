"""The outbox: event rows written with each change, and their publication state."""

from __future__ import annotations

from collections.abc import Sequence

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import update

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
