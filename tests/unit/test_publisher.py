"""The publisher puts each event on the stream once, however often it is asked to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis

from widgetry.domain.models import EventRecord
from widgetry.streaming.publisher import EventPublisher, InProcessEventPublisher


def event(n: int) -> EventRecord:
    return EventRecord(
        event_id=uuid4(),
        type="widget.created",
        sku=f"S-{n}",
        version=1,
        command_id=uuid4(),
        occurred_at=datetime.now(UTC),
        data={"n": n},
    )


@pytest.mark.parametrize("publisher_class", [EventPublisher, InProcessEventPublisher])
async def test_publishing_an_event_again_returns_its_stream_id_and_adds_nothing(
    publisher_class: type[EventPublisher],
) -> None:
    redis = FakeRedis(server=FakeServer())
    publisher = publisher_class(redis, "t:events", max_len=100, remember_for=timedelta(days=1))
    first, second = event(1), event(2)

    ids = await publisher.publish([first])
    again = await publisher.publish([first, second])

    entries = await redis.xrange("t:events")
    assert again[0] == ids[0]
    assert [entry_id.decode() for entry_id, _ in entries] == [ids[0], again[1]]
    assert 0 < await redis.ttl(f"t:events:published:{first.event_id}") <= 86_400
    await redis.aclose()
