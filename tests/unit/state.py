"""Reading what the service wrote: database rows, stream entries, queued jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from litestar import Litestar
from sqlalchemy import func, select, update

from tests.support import eventually
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


async def settled_stream(app: Litestar) -> list[dict[str, Any]]:
    """The stream once every event in the outbox is on it: a command's status is committed before its events are
    published, so a test that saw it finish may look at the stream a moment too early."""

    async def all_published() -> bool:
        async with app.state.connections.alchemy.get_session() as session:
            unpublished = select(func.count()).select_from(EventRecord).where(EventRecord.stream_id.is_(None))
            return await session.scalar(unpublished) == 0

    await eventually(all_published, 10, "every committed event to be on the stream")
    return await stream(app)


async def queued_jobs(app: Litestar) -> int:
    """Command jobs ever enqueued (SAQ keeps each under `saq:job:<queue>:<key>`; cron jobs are keyed `cron:...`)."""
    redis = app.state.connections.redis
    keys = [key async for key in redis.scan_iter(f"saq:job:{app.state.settings.queue_name}:*", count=1000)]
    return len([key for key in keys if b":cron:" not in key])


async def unpublish_everything(app: Litestar) -> None:
    """Makes every event look committed a minute ago and never published: the stream emptied, the outbox unmarked.
    Publishes still under way finish first: one recording its stream ids after this would undo it."""
    await settled_stream(app)
    redis, events_stream = app.state.connections.redis, app.state.settings.events_stream
    await redis.delete(events_stream, *[key async for key in redis.scan_iter(f"{events_stream}:published:*")])
    async with app.state.connections.alchemy.get_session() as session:
        await session.execute(
            update(EventRecord).values(stream_id=None, occurred_at=datetime.now(UTC) - timedelta(minutes=1))
        )
        await session.commit()


__all__ = [
    "CommandRecord",
    "count",
    "outbox",
    "queued_jobs",
    "settled_stream",
    "stream",
    "unpublish_everything",
    "widget_row",
]
