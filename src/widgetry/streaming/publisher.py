"""Puts committed events on the Redis stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from widgetry.domain.events import Event, encode_event

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from widgetry.domain.models import EventRecord


class EventPublisher:
    """XADDs events in the order given; the stream id it returns is the SSE `id:` clients resume from."""

    def __init__(self, redis: Redis, stream: str, max_len: int) -> None:
        self._redis = redis
        self._stream = stream
        self._max_len = max_len

    async def publish(self, records: Sequence[EventRecord]) -> list[str]:
        if not records:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.xadd(self._stream, stream_fields(record), maxlen=self._max_len, approximate=True)
            ids = await pipe.execute()
        return [i.decode() if isinstance(i, bytes) else i for i in ids]


def stream_fields(record: EventRecord) -> dict[str, str | bytes]:
    """The entry: routing fields the hub filters on without decoding, and the envelope encoded once."""
    event = Event(
        event_id=record.event_id,
        type=record.type,  # type: ignore[arg-type]
        sku=record.sku,
        version=record.version,
        command_id=record.command_id,
        occurred_at=record.occurred_at,
        data=record.data,
    )
    return {
        "type": record.type,
        "sku": record.sku or "",
        "command_id": str(record.command_id),
        "data": encode_event(event),
    }
