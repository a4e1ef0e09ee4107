"""Puts committed events on the Redis stream."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from redis.exceptions import NoScriptError

from widgetry.domain.events import Event, encode_event

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from widgetry.domain.models import EventRecord


# XADD unless this event is on the stream already; either way, its stream id. Atomic, so an event published again
# (its worker died between the XADD and recording it) is never on the stream twice.
PUBLISH_ONCE = """
local existing = redis.call('GET', KEYS[2])
if existing then return existing end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[2], id, 'EX', ARGV[2])
return id
"""


class EventPublisher:
    """Puts events on the stream in the order given, each at most once; the stream id it returns is the SSE `id:`
    clients resume from."""

    def __init__(self, redis: Redis, stream: str, max_len: int, remember_for: timedelta) -> None:
        self._redis = redis
        self._stream = stream
        self._max_len = max_len
        self._remember_s = int(remember_for.total_seconds())
        self._script = redis.register_script(PUBLISH_ONCE)

    async def publish(self, records: Sequence[EventRecord]) -> list[str]:
        if not records:
            return []
        try:
            ids = await self._publish(records)
        except NoScriptError:
            # A restarted or flushed Redis has forgotten the script: load it and publish again (safe: the script
            # finds an event already added rather than adding it twice).
            await self._redis.script_load(PUBLISH_ONCE)
            ids = await self._publish(records)
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    async def _publish(self, records: Sequence[EventRecord]) -> list[bytes | str]:
        # EVALSHA straight into the pipeline: a registered script run through a pipeline first asks SCRIPT EXISTS,
        # one more round trip on every publish.
        async with self._redis.pipeline(transaction=False) as pipe:
            for record in records:
                fields = [part for pair in stream_fields(record).items() for part in pair]
                published = f"{self._stream}:published:{record.event_id}"
                pipe.evalsha(self._script.sha, 2, self._stream, published, self._max_len, self._remember_s, *fields)
            return await pipe.execute()


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
