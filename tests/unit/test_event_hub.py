"""The per-process stream reader and its subscribers, on an in-process fakeredis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis

from widgetry.streaming.hub import EventHub, Filter

STREAM = "test:events"


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
async def redis(server: FakeServer) -> AsyncIterator[FakeRedis]:
    client = FakeRedis(server=server)
    yield client
    await client.aclose()


@pytest.fixture
async def hub(redis: FakeRedis) -> AsyncIterator[EventHub]:
    events = EventHub(redis, STREAM, buffer_size=3, keepalive=0.1)
    await events.start()
    yield events
    await events.stop()


async def add(redis: FakeRedis, count: int, sku: str = "S", maxlen: int | None = None) -> list[str]:
    ids = []
    for n in range(count):
        fields = {"type": "widget.updated", "sku": sku, "command_id": f"c{n}", "data": f'{{"n":{n}}}'}
        ids.append((await redis.xadd(STREAM, fields, maxlen=maxlen, approximate=False)).decode())
    return ids


def parse(chunk: bytes) -> list[tuple[str | None, str | None]]:
    """(id, event) of each SSE message in a chunk (the hub writes what it buffered at once); (None, None) for the
    retry line and keepalive comments."""
    messages = []
    for message in chunk.decode().split("\r\n\r\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in message.splitlines() if ": " in line and line[0] != ":")
        messages.append((fields.get("id"), fields.get("event")))
    return messages


async def take(stream: AsyncIterator[bytes], count: int) -> list[tuple[str | None, str | None]]:
    taken: list[tuple[str | None, str | None]] = []
    async with asyncio.timeout(5):
        async for chunk in stream:
            taken += [message for message in parse(chunk) if message != (None, None)]
            if len(taken) >= count:
                return taken
    return taken


async def test_replay_after_a_cursor_then_live_without_gap_or_duplicate(hub: EventHub, redis: FakeRedis) -> None:
    before = await add(redis, 5)
    stream = hub.subscribe(Filter(), before[1])
    replayed = await take(stream, 3)
    live_ids = await add(redis, 2)

    assert [i for i, _ in replayed] == before[2:]
    assert [i for i, _ in await take(stream, 2)] == live_ids
    await stream.aclose()
    assert hub.subscriber_count == 0


@pytest.mark.parametrize("reader", ["parked", "reading"])
async def test_resume_while_events_keep_arriving_is_exact(redis: FakeRedis, reader: str) -> None:
    # A buffer that holds the whole burst: this is about the seam between replay and live. With a buffer of 3, a
    # writer this fast overflows it during the replay or not depending on how the reads interleave (it does when
    # the subscriber starts a parked reader), and an overflow closes the subscriber (the tests below).
    hub = EventHub(redis, STREAM, buffer_size=100, keepalive=0.1)
    await hub.start()
    other = hub.subscribe(Filter(types=["nothing.here"]), None)
    try:
        if reader == "reading":
            await anext(other)  # the reader reads for this one throughout
        first = await add(redis, 3)
        writer = asyncio.create_task(add(redis, 40))
        stream = hub.subscribe(Filter(), first[0])
        received = [i for i, _ in await take(stream, 42)]
        written = await writer

        assert received == first[1:] + written
        await stream.aclose()
    finally:
        await other.aclose()
        await hub.stop()


class CountingRedis(FakeRedis):
    """Counts the hub's blocking reads."""

    reads = 0

    async def xread(self, *args: object, **kwargs: object) -> object:
        self.reads += 1
        return await super().xread(*args, **kwargs)  # type: ignore[arg-type]


async def test_a_hub_nobody_watches_reads_nothing_and_a_late_subscriber_misses_nothing() -> None:
    redis = CountingRedis(server=FakeServer())
    hub = EventHub(redis, STREAM, buffer_size=100, keepalive=60)
    await hub.start()
    try:
        await _late_subscribers_miss_nothing(hub, redis)
    finally:
        await hub.stop()
        await redis.aclose()


async def _late_subscribers_miss_nothing(hub: EventHub, redis: CountingRedis) -> None:
    early = await add(redis, 5)  # written while nobody watches
    await asyncio.sleep(0)  # one more turn for the reader (the writes gave it several)
    assert redis.reads == 0

    stream = hub.subscribe(Filter(), early[1])
    replayed = await take(stream, 3)
    live = await add(redis, 2)

    assert [i for i, _ in replayed] == early[2:]
    assert [i for i, _ in await take(stream, 2)] == live
    assert redis.reads > 0
    await stream.aclose()

    # The last subscriber gone, the reader parks again after the read under way, and one more comes back exactly.
    async with asyncio.timeout(5):
        while hub.reading_now:
            await asyncio.sleep(0.01)
    reads = redis.reads
    meanwhile = await add(redis, 3)
    assert redis.reads == reads
    again = hub.subscribe(Filter(), live[-1])
    assert [i for i, _ in await take(again, 3)] == meanwhile
    await again.aclose()


async def test_waiting_for_a_command_wakes_a_parked_reader(hub: EventHub, redis: FakeRedis) -> None:
    async with asyncio.timeout(5), hub.watch_command("c0") as finished:
        await add(redis, 1)  # its command_id is c0
        await finished.wait()

    assert finished.is_set()


async def test_with_redis_unreachable_a_parked_reader_bounds_waits_and_keeps_streams_alive(
    server: FakeServer, redis: FakeRedis
) -> None:
    hub = EventHub(redis, STREAM, buffer_size=100, keepalive=0.1)
    await hub.start()
    try:
        server.connected = False
        loop = asyncio.get_running_loop()
        # A `Prefer: wait` request's watch enters by its deadline: the request goes on, and reads its outcome from
        # the database.
        async with asyncio.timeout(5), hub.watch_command("c0", deadline=loop.time() + 0.2) as finished:
            assert not finished.is_set()
        # A subscriber gets keepalive comments, no `retry:` line (it is not subscribed yet) ...
        stream = hub.subscribe(Filter(), None)
        assert [await anext(stream) for _ in range(2)] == [b": ping\r\n\r\n", b": ping\r\n\r\n"]
        # ... and once Redis answers, it is subscribed, and gets what comes next.
        server.connected = True
        async with asyncio.timeout(5):
            while (chunk := await anext(stream)) != b"retry: 3000\r\n\r\n":
                assert chunk == b": ping\r\n\r\n"
        live = await add(redis, 1)
        assert [i for i, _ in await take(stream, 1)] == live
        await stream.aclose()
    finally:
        await hub.stop()


async def test_stopping_ends_those_waiting_for_a_parked_reader(server: FakeServer, redis: FakeRedis) -> None:
    hub = EventHub(redis, STREAM, buffer_size=100, keepalive=60)
    await hub.start()
    server.connected = False  # the reader cannot start

    async def watch() -> bool:
        async with hub.watch_command("c0") as finished:
            return finished.is_set()

    stream = hub.subscribe(Filter(), None)
    subscribed = asyncio.create_task(anext(stream, b"ended"))
    watching = asyncio.create_task(watch())
    await asyncio.sleep(0.05)  # a while in which nothing may end them (a negative: there is no event to wait on)
    assert not subscribed.done() and not watching.done()

    async with asyncio.timeout(5):
        await hub.stop()
        assert await subscribed == b"ended"  # the client reconnects to a process that serves
        assert await watching is False
        assert await anext(hub.subscribe(Filter(), None), b"ended") == b"ended"  # and one after the stop too
    assert hub.subscriber_count == 0


async def test_a_subscriber_that_falls_behind_is_closed_and_resumes_by_id(hub: EventHub, redis: FakeRedis) -> None:
    stream = hub.subscribe(Filter(), None)
    assert await anext(stream) == b"retry: 3000\r\n\r\n"
    written = await add(redis, 6)  # the buffer holds 3, and nothing is read from it meanwhile

    async with asyncio.timeout(5):  # the stream ends by itself once it has sent what it buffered
        delivered = [message_id async for chunk in stream for message_id, _ in parse(chunk) if message_id]
    resumed = await take(hub.subscribe(Filter(), delivered[-1]), len(written) - len(delivered))

    assert delivered == written[:3]
    assert [i for i, _ in resumed] == written[3:]


async def test_a_subscriber_that_stops_reading_costs_the_others_nothing(hub: EventHub, redis: FakeRedis) -> None:
    stalled = hub.subscribe(Filter(), None)
    reading = hub.subscribe(Filter(), None)
    assert await anext(stalled) == await anext(reading) == b"retry: 3000\r\n\r\n"
    written = []
    for _ in range(10):  # the buffer holds 3; the reading subscriber takes each entry before the next is written
        written += await add(redis, 1)
        assert [i for i, _ in await take(reading, 1)] == written[-1:]

    async with asyncio.timeout(5):  # closed once its buffer overflowed: it sends what it holds, then ends
        stalled_got = [message_id async for chunk in stalled for message_id, _ in parse(chunk) if message_id]

    assert stalled_got == written[:3]
    assert hub.subscriber_count == 1
    await reading.aclose()


async def test_a_cursor_older_than_the_stream_keeps_gets_stream_reset(hub: EventHub, redis: FakeRedis) -> None:
    trimmed = await add(redis, 5, maxlen=2)

    old = await take(hub.subscribe(Filter(), trimmed[0]), 1)
    kept = await take(hub.subscribe(Filter(), trimmed[3]), 1)

    assert old == [(None, "stream.reset")]
    assert kept == [(trimmed[4], "widget.updated")]


@pytest.mark.parametrize("cursor", ["garbage", "1-2-3", "", "99999999999999-0"])
async def test_an_unknown_cursor_gets_stream_reset(hub: EventHub, redis: FakeRedis, cursor: str) -> None:
    await add(redis, 1)

    assert await take(hub.subscribe(Filter(), cursor), 1) == [(None, "stream.reset")]


async def test_filters_select_by_sku_and_type(hub: EventHub, redis: FakeRedis) -> None:
    stream = hub.subscribe(Filter(skus=["B"], types=["widget.updated"]), "0-0")
    await add(redis, 2, sku="A")
    wanted = await add(redis, 1, sku="B")

    assert [i for i, _ in await take(stream, 1)] == wanted
    await stream.aclose()


async def test_idle_subscribers_get_keepalive_comments(hub: EventHub) -> None:
    stream = hub.subscribe(Filter(), None)

    chunks = [await anext(stream) for _ in range(3)]

    assert chunks[1:] == [b": ping\r\n\r\n", b": ping\r\n\r\n"]
    await stream.aclose()


async def test_an_entry_this_service_did_not_write_is_skipped_not_fatal(hub: EventHub, redis: FakeRedis) -> None:
    stream = hub.subscribe(Filter(), None)
    await anext(stream)
    await redis.xadd(STREAM, {"note": "written by someone else"})
    wanted = await add(redis, 1)

    assert [i for i, _ in await take(stream, 1)] == wanted
    assert hub.reading
    await stream.aclose()


async def test_a_cursor_past_the_largest_stream_id_gets_stream_reset(hub: EventHub, redis: FakeRedis) -> None:
    await add(redis, 1)

    assert await take(hub.subscribe(Filter(), f"1-{2**64}"), 1) == [(None, "stream.reset")]


HOSTILE_CURSORS = [
    "²-1",
    "1-²",
    "١٢-3",
    "9" * 5_000 + "-0",
    "0-" + "9" * 5_000,
    "1" * 21 + "-0",
    "+1-1",
    "1_0-1",
    "0x1-1",
    "1-2\x00",
    "-" * 100_000,
    "\udcff-1",
]
"""Cursors a client may send that are no stream id: digits `int` refuses, numbers past its 4,300-digit limit,
numbers too long for a stream id, and garbage."""


@pytest.mark.parametrize("cursor", HOSTILE_CURSORS, ids=range(len(HOSTILE_CURSORS)))
async def test_a_hostile_cursor_gets_stream_reset_then_live_events(
    hub: EventHub, redis: FakeRedis, cursor: str
) -> None:
    stream = hub.subscribe(Filter(), cursor)

    reset = await take(stream, 1)
    live = await add(redis, 1)

    assert reset == [(None, "stream.reset")]
    assert await take(stream, 1) == [(live[0], "widget.updated")]
    await stream.aclose()
