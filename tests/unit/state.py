"""Reading what the service wrote: database rows, stream entries, queued jobs."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from sqlalchemy import func, select

from widgetry.domain.models import CommandRecord, EventRecord, Widget


async def widget_row(app: Litestar, sku: str) -> Widget | None:
    async with app.state.connections.alchemy.get_session() as session:
        return await session.scalar(select(Widget).where(Widget.sku == sku))


async def count(app: Litestar, model: type[Any]) -> int:
    async with app.state.connections.alchemy.get_session() as session:
        return await session.scalar(select(func.count()).select_from(model))


async def outbox(app: Litestar) -> list[EventRecord]:
    async with app.state.connections.alchemy.get_session() as session:
        return list(await session.scalars(select(EventRecord).order_by(EventRecord.id)))


async def stream(app: Litestar) -> list[dict[str, Any]]:
    """The event envelopes on the Redis stream, in order."""
    settings = app.state.settings
    entries = await app.state.connections.redis.xrange(settings.events_stream)
    return [msgspec.json.decode(fields[b"data"]) for _id, fields in entries]


async def queued_jobs(app: Litestar) -> int:
    """Command jobs ever enqueued (SAQ keeps each under `saq:job:<queue>:<key>`; cron jobs are keyed `cron:...`)."""
    redis = app.state.connections.redis
    keys = [key async for key in redis.scan_iter(f"saq:job:{app.state.settings.queue_name}:*", count=1000)]
    return len([key for key in keys if b":cron:" not in key])


__all__ = ["CommandRecord", "count", "outbox", "queued_jobs", "stream", "widget_row"]
