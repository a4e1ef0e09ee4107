"""One Redis stream reader per web process, fanning each entry out to its SSE subscribers.

Litestar's channels plugin has no event ids, so it cannot resume by `Last-Event-ID`; this is the small piece
that can: every subscriber registers its live buffer first, then replays `(cursor, position]` with XRANGE,
then drains the live buffer, skipping what the replay already sent. No gap, no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Collection
from typing import TYPE_CHECKING

from litestar.response.sse import ServerSentEventMessage

from widgetry.domain.events import STREAM_RESET, EventType
from widgetry.streaming.cursor import ORIGIN, StreamId, format_stream_id, parse_stream_id

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

READ_BATCH = 500
READ_BLOCK_MS = 500
STOP_GRACE_S = 10
RECONNECT_DELAY = 1.0
RETRY_MS = 3_000
PROGRESS = EventType.COMMAND_PROGRESS.value
KEEPALIVE = ServerSentEventMessage(comment="ping", data=None).encode()
PAUSE_PER_SUBSCRIBER_S = 0.000_05
"""A round of wakeups starts this long per subscriber of the last round (at most MAX_PAUSE_S) after the last round
started, so the entries read meanwhile go out together. Each wakeup costs a subscriber a write (a system call, the
most of it): with 1,000 subscribers, rounds 50 ms apart keep fan-out near half a core however fast events come; with
a handful of subscribers the pause is nil. Measured with `fanout.py` (1,000 x 100/s, the driver on the same two
cores): 0.1 ms gave p50 86-88 ms and p99 154-157 ms; 0.05 ms, p50 56-65 and p99 118-159; 0.02-0.03 ms cost the web
process 60-85% more CPU (7.0-8.2 s against 4.4-4.8 s) and gave p50 81-83, p99 147-157."""
MAX_PAUSE_S = 0.25
"""With 10,000 subscribers a round takes a good part of this: spacing rounds further lets each write carry more
events (fanout.py, 10,000 x 10/s: at most 0.1 s gave p50 263-320 ms and p99 688-731 ms, the web on a full core;
0.25 s, p50 226-254 ms and p99 543-641 ms)."""
READ_PAUSE_S = 0.02
"""The reader's own pause after a read that gave subscribers something (also per subscriber, at most this): reads
cost a dictionary lookup and an append per matching subscriber, not a write, so they come sooner than the rounds."""
WAKE_SLICE = 256
"""Subscribers woken per turn of the event loop. Each writes when woken, some 20-80 µs on this machine, so 10,000
woken at once held the loop for most of a second: no request, not even the POST whose event is on its way, was
served meanwhile. Between slices the loop serves the sockets that are ready.

The waking is a task of its own (`_wake_forever`), beside the reader, which queues the subscribers it gave entries to
(each once). With 10,000 subscribers a round takes longer than MAX_PAUSE_S, and the reads go on meanwhile: an entry
read during a round reaches, in that same round, every subscriber the round has not come to yet, and the rest in
the next. Its latency is at most about one round and one read pause, where a reader that waited for each round to
end and then paused before reading again made it up to two rounds and its pause."""
KEEPALIVE_TICK_S = 0.5
"""The keepalive loop pings one slice of the subscribers this often, each slice once per keepalive interval: woken
all at once, 10,000 idle connections would stall the process for a good part of a second every interval."""


class Entry:
    """A stream entry, its SSE message encoded once for every subscriber."""

    __slots__ = ("command_id", "id", "message", "sku", "type")

    def __init__(self, stream_id: StreamId, fields: dict[bytes, bytes]) -> None:
        self.id = stream_id
        self.type = fields[b"type"].decode()
        self.sku = fields[b"sku"].decode() or None
        self.command_id = fields[b"command_id"].decode()
        self.message = ServerSentEventMessage(
            id=format_stream_id(stream_id), event=self.type, data=fields[b"data"]
        ).encode()

    @classmethod
    def parse(cls, stream_id: StreamId, fields: dict[bytes, bytes]) -> Entry | None:
        """The entry, or `None` (logged) for one this service did not write: it must not stop the reader."""
        try:
            return cls(stream_id, fields)
        except (KeyError, UnicodeDecodeError):
            logger.warning("skipping stream entry %s: not a widgetry event", format_stream_id(stream_id))
            return None


class Batch:
    """The entries of one read that one filter matched, their SSE messages joined once for all its subscribers."""

    __slots__ = ("entries", "first_id", "last_id", "message")

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.first_id = entries[0].id
        self.last_id = entries[-1].id
        self.message = entries[0].message if len(entries) == 1 else b"".join(entry.message for entry in entries)

    def after(self, sent: StreamId) -> bytes:
        """The messages of the entries past `sent` (those a replay has not already sent)."""
        if self.first_id > sent:
            return self.message
        return b"".join(entry.message for entry in self.entries if entry.id > sent)


class Filter:
    __slots__ = ("skus", "types")

    def __init__(self, skus: Collection[str] | None = None, types: Collection[str] | None = None) -> None:
        self.skus = frozenset(skus) if skus else None
        self.types = frozenset(types) if types else None

    def __call__(self, entry: Entry) -> bool:
        return (self.skus is None or entry.sku in self.skus) and (self.types is None or entry.type in self.types)


class Subscription:
    """A bounded live buffer. A subscriber too slow to keep up is closed, never silently skipped: it resumes by id."""

    __slots__ = (
        "_waiter",
        "active",
        "buffer",
        "buffered",
        "closed",
        "keepalive_slot",
        "limit",
        "matches",
        "ping_due",
        "queued",
    )

    def __init__(self, matches: Filter, limit: int) -> None:
        self.matches = matches
        self.limit = limit
        self.buffer: list[Batch] = []
        """A list, not a deque: it is emptied whole, and an empty deque is 600 bytes more of each open stream."""
        self.buffered = 0
        """Entries in the buffer."""
        self.closed = False
        self.ping_due = False
        self.keepalive_slot = 0
        self.active = False
        """Whether something was sent since the last keepalive round: a connection that carries events needs none."""
        self.queued = False
        """Whether it is in the hub's queue of subscribers to wake (once, however many reads it has entries from)."""
        # A bare future, rather than an asyncio.Event: one wakeup per read and subscriber is the hot path of fan-out,
        # and the event's own future, waiter list and flag cost more than this one future.
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, batch: Batch) -> bool:
        """Buffers the batch (the entries that fit, then closes if some do not); says whether the subscriber is left
        with something to write and waits for `wake` (a closed one is woken at once)."""
        if self.closed:
            return False
        if self.buffered + len(batch.entries) > self.limit:
            if (room := self.limit - self.buffered) > 0:
                self._append(Batch(batch.entries[:room]))
            self.close()
            return False
        self._append(batch)
        return True

    def _append(self, batch: Batch) -> None:
        self.buffer.append(batch)
        self.buffered += len(batch.entries)
        self.active = True

    def take(self, sent: StreamId) -> tuple[bytes, StreamId]:
        """Empties the buffer: the messages past `sent`, as one chunk, and the id of the last entry buffered."""
        chunks = []
        batches, self.buffer, self.buffered = self.buffer, [], 0
        for batch in batches:
            if batch.last_id > sent:
                chunks.append(batch.after(sent))
                sent = batch.last_id
        return chunks[0] if len(chunks) == 1 else b"".join(chunks), sent

    def ping(self) -> None:
        if self.active:
            self.active = False
            return
        self.ping_due = True
        self.wake()

    def close(self) -> None:
        self.closed = True
        self.wake()

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Returns when an entry arrives, a keepalive is due, or the subscription closes."""
        # One wakeup takes everything buffered since the last. No timer per wait: the hub's keepalive loop pings
        # everyone, which costs far less than a timeout per wakeup.
        if self.buffer or self.ping_due or self.closed:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class EventHub:
    def __init__(self, redis: Redis, stream: str, *, buffer_size: int, keepalive: float) -> None:
        self._redis = redis
        self._stream = stream
        self._buffer_size = buffer_size
        self._keepalive = keepalive
        self._subscribers: set[Subscription] = set()
        # Who may want an entry, found without asking every subscriber: those filtering on skus are filed under
        # each of theirs, the rest by the types they filter on. Thousands of subscribers watching one widget each then
        # cost an event nothing but a dictionary lookup, and thousands watching everything share one batch per read.
        self._any_sku: dict[frozenset[str] | None, set[Subscription]] = {}
        self._by_sku: dict[str, set[Subscription]] = {}
        self._keepalive_slots: list[set[Subscription]] = [
            set() for _ in range(max(1, round(keepalive / KEEPALIVE_TICK_S)))
        ]
        self._registered = 0
        self._finish_watchers: dict[str, dict[asyncio.Event, frozenset[str] | None]] = {}
        self._position: StreamId | None = None
        self._task: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._waker: asyncio.Task[None] | None = None
        self._to_wake: deque[Subscription] = deque()
        self._waker_idle: asyncio.Future[None] | None = None
        self._stopping = False
        self._ready = asyncio.Event()
        """Set while the reader reads, with `_position` where it reads from; clear while it is parked."""
        self._unparked: asyncio.Future[None] | None = None
        # The reader also blocks on a stream of this hub's own, which `stop` writes to: the read then returns at
        # once instead of after READ_BLOCK_MS (half a second of every shutdown, and of every test's teardown).
        self._wakeup_stream = f"{stream}:hub-stop:{uuid.uuid4().hex}"
        self._wakeup_key = self._wakeup_stream.encode()

    @property
    def reading(self) -> bool:
        """Whether this process's stream reader is running (it retries Redis errors by itself)."""
        return self._task is not None and not self._task.done()

    @property
    def reading_now(self) -> bool:
        """Whether the reader is reading the stream now, rather than parked for want of anyone to read for."""
        return self._ready.is_set()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._read_forever(), name="widgetry-event-hub")
        self._pinger = asyncio.create_task(self._ping_forever(), name="widgetry-event-hub-keepalive")
        self._waker = asyncio.create_task(self._wake_forever(), name="widgetry-event-hub-waker")

    async def stop(self) -> None:
        """Ends the reader between reads rather than cancelling one: a cancelled blocking XREAD can leave
        fakeredis's connection waiting for a reply that never comes. A read returns within READ_BLOCK_MS, so the
        cancel below is only for a Redis server that stopped answering."""
        self.close_subscribers()
        self._stopping = True
        self._unpark()
        self._set_ready()  # whoever waits for the reader goes on, and finds the hub stopping
        with contextlib.suppress(Exception):  # Redis down: the read returns within READ_BLOCK_MS anyway
            await self._redis.xadd(self._wakeup_stream, {b"stop": b"1"})
        for helper in (self._pinger, self._waker):
            if helper is not None:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
        self._pinger = self._waker = None
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READ_BLOCK_MS / 1000 + STOP_GRACE_S):
                    await asyncio.shield(self._task)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self._redis.delete(self._wakeup_stream)

    def close_subscribers(self) -> None:
        """Ends every open stream (on shutdown), so clients reconnect elsewhere with their last id."""
        for subscription in list(self._subscribers):
            subscription.close()

    async def _read_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if not self._subscribers and not self._finish_watchers:
                await self._park()
                continue
            try:
                if self._position is None:
                    self._position = await self._stream_end()
                    self._set_ready()
                response = await self._redis.xread(
                    {self._stream: format_stream_id(self._position), self._wakeup_stream: "0-0"},
                    count=READ_BATCH,
                    block=READ_BLOCK_MS,
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("event stream read failed; retrying in %ss", RECONNECT_DELAY)
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            started = loop.time()
            woken = [
                subscription
                for name, entries in response or ()
                if name != self._wakeup_key
                for subscription in self._dispatch(entries)
            ]
            self._queue_wakes(woken)
            # The pause counts from the read: the hand-out took part of it, and only the rest is waited.
            pause = min(READ_PAUSE_S, len(woken) * PAUSE_PER_SUBSCRIBER_S) - (loop.time() - started)
            if pause >= 0.001:
                await asyncio.sleep(pause)

    async def _park(self) -> None:
        """Waits, reading nothing, until someone wants entries (or the hub stops). A web process nobody watches would
        otherwise read every event: a round trip and a wakeup per read, 7.4% of the web's samples (12% of its event
        loop's) in a run of lone writes with no subscriber. Unparked, the reader starts again from the stream's end,
        and each subscriber replays from its cursor up to there, as it does when the process starts."""
        self._position = None
        self._ready.clear()
        self._unparked = asyncio.get_running_loop().create_future()
        try:
            await self._unparked
        finally:
            self._unparked = None

    def _set_ready(self) -> None:
        self._ready.set()
        for subscription in self._subscribers:  # those registered while it was parked wait for this
            subscription.wake()

    def _unpark(self) -> None:
        if self._unparked is not None and not self._unparked.done():
            self._unparked.set_result(None)

    def _queue_wakes(self, subscriptions: list[Subscription]) -> None:
        for subscription in subscriptions:
            if not subscription.queued:
                subscription.queued = True
                self._to_wake.append(subscription)
        if self._to_wake and self._waker_idle is not None and not self._waker_idle.done():
            self._waker_idle.set_result(None)

    async def _wake_forever(self) -> None:
        """Wakes the queued subscribers in rounds, WAKE_SLICE per turn of the event loop; a round wakes those queued
        as it starts, and starts at most every `PAUSE_PER_SUBSCRIBER_S` per subscriber of the last (at most
        MAX_PAUSE_S) after the last one started."""
        loop = asyncio.get_running_loop()
        next_round = 0.0
        while True:
            if not self._to_wake:
                self._waker_idle = loop.create_future()
                try:
                    await self._waker_idle
                finally:
                    self._waker_idle = None
            if (wait := next_round - loop.time()) >= 0.001:
                await asyncio.sleep(wait)  # entries read meanwhile join the buffers this round takes
            started, size = loop.time(), len(self._to_wake)
            next_round = started + min(MAX_PAUSE_S, size * PAUSE_PER_SUBSCRIBER_S)
            for start in range(0, size, WAKE_SLICE):
                for _ in range(min(WAKE_SLICE, size - start)):  # only this task takes from the queue
                    subscription = self._to_wake.popleft()
                    subscription.queued = False
                    subscription.wake()
                await asyncio.sleep(0)  # the slice writes, then the loop serves what else is ready

    async def _ping_forever(self) -> None:
        """Wakes every subscriber once per keepalive interval, a slice at a time; one that sent nothing since the
        last round sends a keepalive comment."""
        tick = self._keepalive / len(self._keepalive_slots)
        while True:
            for slot in self._keepalive_slots:
                await asyncio.sleep(tick)
                for subscription in list(slot):
                    subscription.ping()

    def _dispatch(self, raw_entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Subscription]:
        """Buffers the entries for the matching subscribers; returns those to wake, which have something to write."""
        # No await in here: a subscriber registering between two reads sees either all of a batch live, or none.
        entries = []
        for raw_id, fields in raw_entries:
            stream_id = parse_stream_id(raw_id) or ORIGIN
            self._position = stream_id
            if (entry := Entry.parse(stream_id, fields)) is None:
                continue
            entries.append(entry)
            for finished, outcomes in self._finish_watchers.get(entry.command_id, {}).items():
                if entry.type in outcomes if outcomes is not None else entry.type != PROGRESS:
                    finished.set()
        if not entries:
            return []
        woken = []
        for types, subscriptions in self._any_sku.items():
            if matched := entries if types is None else [entry for entry in entries if entry.type in types]:
                batch = Batch(matched)
                woken += [subscription for subscription in subscriptions if subscription.offer(batch)]
        if self._by_sku:
            per_subscription: dict[Subscription, list[Entry]] = {}
            for entry in entries:
                for subscription in self._by_sku.get(entry.sku or "", ()):
                    if subscription.matches(entry):
                        per_subscription.setdefault(subscription, []).append(entry)
            woken += [
                subscription for subscription, matched in per_subscription.items() if subscription.offer(Batch(matched))
            ]
        return woken

    @contextlib.asynccontextmanager
    async def watch_command(
        self, command_id: str, outcomes: frozenset[str] | None = None, *, deadline: float | None = None
    ) -> AsyncIterator[asyncio.Event]:
        """An event set when this process's reader sees the command's outcome: an event of one of the `outcomes`
        types, by default any event but progress (an import's rows' events carry its id too, so it names its own).

        Enters once the reader reads (a parked one is started), so that it reads from before the command can finish;
        or, with Redis unreachable, at `deadline` (the event loop's clock): the caller's wait is bounded, and its
        outcome is then read from the database."""
        finished = asyncio.Event()
        self._finish_watchers.setdefault(command_id, {})[finished] = outcomes
        self._unpark()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._ready.wait()
            yield finished
        finally:
            waiters = self._finish_watchers[command_id]
            waiters.pop(finished, None)
            if not waiters:
                del self._finish_watchers[command_id]

    async def _stream_end(self) -> StreamId:
        info = await self._stream_info()
        return parse_stream_id(info.get("last-generated-id")) or ORIGIN if info else ORIGIN

    async def _stream_info(self) -> dict[str, object]:
        try:
            raw = await self._redis.xinfo_stream(self._stream)
        except Exception as exc:
            if "no such key" in str(exc).lower():
                return {}
            raise
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}

    async def _cursor_is_lost(self, cursor: StreamId) -> bool:
        """Unknown (newer than anything written) or older than what the stream still keeps."""
        info = await self._stream_info()
        if not info:
            return cursor != ORIGIN
        last = parse_stream_id(info.get("last-generated-id")) or ORIGIN
        if cursor > last:
            return True
        trimmed = int(info.get("entries-added", 0) or 0) > int(info.get("length", 0) or 0)  # type: ignore[call-overload]
        first = info.get("first-entry")
        first_id = parse_stream_id(first[0]) if first else None  # type: ignore[index]
        return trimmed and (first_id is None or cursor < first_id)

    async def subscribe(self, matches: Filter, cursor: str | None) -> AsyncIterator[bytes]:
        """SSE messages: the replay after `cursor` (if any), then live entries, with keepalive comments."""
        subscription = Subscription(matches, self._buffer_size)
        self._register(subscription)
        try:
            # Registered first, so a parked reader starts reading; every entry it reads from here on is buffered
            # for this subscriber, and whatever precedes `position` is the replay's. The `retry:` line comes after:
            # a client that has it is subscribed. While Redis is unreachable the reader cannot start: keepalive
            # comments meanwhile, as on any idle stream, and a close (shutdown) ends it.
            while not self._ready.is_set():
                await subscription.wait()  # woken as the reader starts, by a keepalive round, or by a close
                if subscription.closed:
                    return
                if subscription.ping_due and not self._ready.is_set():
                    subscription.ping_due = False
                    yield KEEPALIVE
            if self._stopping:
                return  # the client reconnects, with its cursor, to a process that serves
            position = self._position or ORIGIN
            yield f"retry: {RETRY_MS}\r\n\r\n".encode()
            sent = position
            if cursor is not None:
                parsed = parse_stream_id(cursor)
                if parsed is None or await self._cursor_is_lost(parsed):
                    yield ServerSentEventMessage(event=STREAM_RESET, data="{}").encode()
                else:
                    sent = max(parsed, position)
                    async for entry in self._replay(parsed, position):
                        if matches(entry):
                            yield entry.message
            while True:
                # Everything buffered since the last wakeup goes out as one write: with many subscribers, the cost is
                # in the wakeups and writes per subscriber, not in the bytes.
                if subscription.buffer:
                    messages, sent = subscription.take(sent)
                    if messages:
                        yield messages
                if subscription.closed:
                    return
                await subscription.wait()
                if subscription.ping_due:
                    subscription.ping_due = False
                    if not subscription.buffer and not subscription.closed:
                        yield KEEPALIVE
        finally:
            # Synchronous on purpose: a client disconnect cancels this generator, and an await here would be too.
            self._unregister(subscription)

    def _register(self, subscription: Subscription) -> None:
        self._subscribers.add(subscription)
        self._unpark()
        subscription.keepalive_slot = self._registered % len(self._keepalive_slots)
        self._registered += 1
        self._keepalive_slots[subscription.keepalive_slot].add(subscription)
        if (skus := subscription.matches.skus) is None:
            self._any_sku.setdefault(subscription.matches.types, set()).add(subscription)
        else:
            for sku in skus:
                self._by_sku.setdefault(sku, set()).add(subscription)

    def _unregister(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
        self._keepalive_slots[subscription.keepalive_slot].discard(subscription)
        if (skus := subscription.matches.skus) is None:
            types = subscription.matches.types
            if (watchers := self._any_sku.get(types)) is not None:
                watchers.discard(subscription)
                if not watchers:
                    del self._any_sku[types]
            return
        for sku in skus:
            if (watchers := self._by_sku.get(sku)) is not None:
                watchers.discard(subscription)
                if not watchers:
                    del self._by_sku[sku]

    async def _replay(self, after: StreamId, until: StreamId) -> AsyncIterator[Entry]:
        start = "(" + format_stream_id(after)
        while True:
            rows = await self._redis.xrange(self._stream, min=start, max=format_stream_id(until), count=READ_BATCH)
            for raw_id, fields in rows:
                if entry := Entry.parse(parse_stream_id(raw_id) or ORIGIN, fields):
                    yield entry
            if len(rows) < READ_BATCH:
                return
            start = "(" + (rows[-1][0].decode() if isinstance(rows[-1][0], bytes) else rows[-1][0])
