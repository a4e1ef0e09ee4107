"""Puts committed events on the Redis stream."""

from __future__ import annotations

import asyncio
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
                pipe.evalsha(
                    self._script.sha, 2, self._stream, self._marker(record), self._max_len, self._remember_s, *fields
                )
            return await pipe.execute()

    def _marker(self, record: EventRecord) -> str:
        """The key that remembers the event's stream id once it is on the stream."""
        return f"{self._stream}:published:{record.event_id}"


class InProcessEventPublisher(EventPublisher):
    """The same, for the in-process fakeredis, without the script: fakeredis compiles a script anew on every call
    and collects Lua's garbage after it, about twice the cost of the plain commands it runs, on the path of every
    event. Only this process reaches that server, and its publishes all go through this one publisher, so the lock
    makes the check and the XADD one step, as the script does on a shared server."""

    def __init__(self, redis: Redis, stream: str, max_len: int, remember_for: timedelta) -> None:
        super().__init__(redis, stream, max_len, remember_for)
        self._lock = asyncio.Lock()

    async def publish(self, records: Sequence[EventRecord]) -> list[str]:
        if not records:
            return []
        markers = [self._marker(record) for record in records]
        async with self._lock:
            ids: list[bytes | str | None] = await self._redis.mget(markers)
            new = [n for n, stream_id in enumerate(ids) if stream_id is None]
            async with self._redis.pipeline(transaction=False) as pipe:
                for n in new:
                    pipe.xadd(self._stream, stream_fields(records[n]), maxlen=self._max_len, approximate=True)  # type: ignore[arg-type]
                for n, stream_id in zip(new, await pipe.execute(), strict=True):
                    ids[n] = stream_id
                    pipe.set(markers[n], stream_id, ex=self._remember_s)
                await pipe.execute()
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


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
