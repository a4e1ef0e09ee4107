"""A bench agent: one process of load, given its job on stdin, reporting on stdout (see `channel`).

- writer: sends its share of the workload's writes over keep-alive connections, each sku's writes in order, each
  after the previous one's 202; as fast as replies come (closed loop) or at scheduled times (open loop);
- subscribers: hold SSE connections, time every delivery, and report the commands all of them have seen;
- idle: hold SSE connections that never get an event, as a crowd of idle clients would;
- SAQ worker: a plain SAQ worker running no-op jobs, for the raw queue baseline.

An agent ends when its stdin closes (the bench stopped it, or is gone); it ignores Ctrl-C, which is the bench's to
handle.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from functools import partial
from itertools import count
from typing import Any

import msgspec

from widgetry.bench.channel import (
    ORDERS,
    Accepted,
    Failed,
    Go,
    IdleDone,
    IdleJob,
    Message,
    Ready,
    SaqWorkerJob,
    Seen,
    Stop,
    SubscriberJob,
    SubscribersDone,
    WriterDone,
    WriterJob,
    frame,
    read_frame,
)
from widgetry.bench.histogram import Histogram
from widgetry.bench.http import TRANSPORT_ERRORS, Connection, Endpoint, EventStream, open_event_stream, run
from widgetry.bench.workload import FAILED_EVENT, WIDGET_EVENTS, sent_ns_of, stamped_values

REPORT_INTERVAL_S = 0.25
REQUEST_TIMEOUT_S = 60
OPEN_AT_ONCE = 50
"""Connections opened concurrently: a burst beyond the server's listen backlog is dropped, and retried a second
later by the kernel, which would only slow the start."""
REOPEN_DELAY_S = 0.2
NOOP_JOB = "noop"


async def noop(_ctx: dict[str, Any]) -> None:
    """The raw queue baseline's job: nothing, so only the queue's own cost is measured."""


class Reports:
    """Frames to the bench on the original stdout; fd 1 is pointed at stderr, so a stray print cannot corrupt one."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    @classmethod
    async def open(cls) -> Reports:
        reports = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, reports)
        return cls(asyncio.StreamWriter(transport, protocol, None, loop))

    def send(self, message: Message) -> None:
        self._writer.write(frame(message))

    async def flush(self) -> None:
        await self._writer.drain()


class Orders:
    """The bench's orders after the job: `go` resolves with the start time, `stopped` is set by a Stop or EOF."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self.go: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.stopped = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                order = await read_frame(self._reader, ORDERS)
                if isinstance(order, Go):
                    self.go.set_result(order.at_ns)
                elif isinstance(order, Stop):
                    break
        except asyncio.IncompleteReadError:
            pass
        self.stopped.set()


async def until_stopped(orders: Orders, work: Awaitable[None]) -> None:
    """Runs `work` unless the bench stops the agent first."""
    task = asyncio.ensure_future(work)
    stop = asyncio.create_task(orders.stopped.wait())
    await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if task.done():
        task.result()
    else:
        task.cancel()


async def every(interval: float, action: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(interval)
        action()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 2)


class CommandId(msgspec.Struct):
    id: str


_command_id = msgspec.json.Decoder(CommandId)
_json = msgspec.json.Encoder()


class Writer:
    """A writer agent: its share of the skus (all of one sku's writes come from one writer, in order), sent over its
    connections; reports what was accepted as it goes, and its POST -> 202 histogram at the end."""

    def __init__(self, job: WriterJob, reports: Reports) -> None:
        self.job = job
        self.workload = job.workload
        self.skus = job.workload.part(job.part, job.parts)
        self.reports = reports
        self.post_to_202 = Histogram()
        self.accepted: list[tuple[str, int]] = []
        self.errors: Counter[str] = Counter()
        self.first_send_ns: int | None = None
        self.last_reply_ns: int | None = None
        endpoints = [Endpoint.of(url) for url in job.urls]
        headers = {"X-API-Key": job.api_key, "Content-Type": "application/json"}
        self.connections = [
            Connection(endpoints[(job.part + n) % len(endpoints)], headers) for n in range(job.connections)
        ]

    async def run(self, orders: Orders) -> None:
        await asyncio.gather(*(connection.open() for connection in self.connections))
        self.reports.send(Ready(len(self.connections)))
        await until_stopped(orders, self._load(orders.go))

    async def _load(self, go: Awaitable[int]) -> None:
        at_ns = await go
        await asyncio.sleep(max(0.0, (at_ns - time.time_ns()) / 1e9))
        reporter = asyncio.create_task(every(REPORT_INTERVAL_S, self._report))
        try:
            await (self._open_loop() if self.job.rate else self._closed_loop())
        finally:
            reporter.cancel()
        self._report()
        self.reports.send(WriterDone(self.post_to_202, self.first_send_ns, self.last_reply_ns, cpu_seconds()))

    def _report(self) -> None:
        if self.accepted or self.errors:
            self.reports.send(Accepted(self.accepted, dict(self.errors)))
            self.accepted, self.errors = [], Counter()

    async def _closed_loop(self) -> None:
        """Each connection takes the next sku and sends its writes, each as soon as the previous one is answered."""
        skus = iter(self.skus)

        async def lane(connection: Connection) -> None:
            for sku in skus:
                for step in range(self.workload.writes(sku)):
                    await self._write(connection, sku, step)

        await asyncio.gather(*(lane(connection) for connection in self.connections))

    async def _open_loop(self) -> None:
        """Writes at scheduled times, `rate` a second, on whichever connection is free; a sku's write whose
        predecessor is still unanswered waits for it (the order per sku is the contract)."""
        free: asyncio.LifoQueue[Connection] = asyncio.LifoQueue()  # reuse the warmest connection first
        for connection in self.connections:
            free.put_nowait(connection)
        latest: dict[int, asyncio.Task[None]] = {}

        async def send(previous: asyncio.Task[None] | None, sku: int, step: int) -> None:
            if previous is not None:
                await previous
            connection = await free.get()
            try:
                await self._write(connection, sku, step)
            finally:
                free.put_nowait(connection)

        start, interval = time.monotonic(), 1 / self.job.rate
        for n, (sku, step) in zip(count(), self._schedule(), strict=False):
            if (delay := start + n * interval - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            latest[sku] = asyncio.create_task(send(latest.get(sku), sku, step))
        await asyncio.gather(*latest.values())

    def _schedule(self) -> Iterator[tuple[int, int]]:
        """Round-robin over the skus, so a sku's consecutive writes are as far apart as the workload allows."""
        rounds = max((self.workload.writes(sku) for sku in self.skus), default=0)
        for step in range(rounds):
            for sku in self.skus:
                if step < self.workload.writes(sku):
                    yield sku, step

    async def _write(self, connection: Connection, sku_index: int, step: int) -> None:
        sku = self.workload.sku(sku_index)
        sent_ns = time.time_ns()
        values = stamped_values(step, sent_ns)
        if step == 0:
            method, path, values = "POST", "/widgets", {"sku": sku, **values}
        else:
            method, path = "PATCH", f"/widgets/{sku}"
        if self.first_send_ns is None:
            self.first_send_ns = sent_ns
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                reply = await connection.request(method, path, _json.encode(values))
        except TimeoutError:
            self.errors["timeout"] += 1
            return
        except TRANSPORT_ERRORS:
            self.errors["transport"] += 1
            return
        self.last_reply_ns = received_ns = time.time_ns()
        if reply.status != 202:
            self.errors[str(reply.status)] += 1
            return
        self.post_to_202.record((received_ns - sent_ns) / 1e6)
        self.accepted.append((_command_id.decode(reply.body).id, received_ns))


class EventData(msgspec.Struct):
    name: str | None = None


class Envelope(msgspec.Struct):
    type: str
    command_id: str
    occurred_at: datetime
    sku: str | None = None
    data: EventData | None = None


_envelope = msgspec.json.Decoder(Envelope)


class Delivered:
    """One event as this agent's subscribers see it: decoded once, then counted per delivery."""

    __slots__ = ("command_id", "failed", "occurred_ns", "seen", "sent_ns")

    def __init__(self, command_id: str | None, sent_ns: int | None, occurred_ns: int, failed: bool) -> None:
        self.command_id = command_id
        """`None` for an event that is not the run's: counted to be forgotten, never reported."""
        self.sent_ns = sent_ns
        self.occurred_ns = occurred_ns
        self.failed = failed
        self.seen = 0


class Deliveries:
    """What the agent's subscribers have seen: each event decoded once (by its id) however many subscribers get it,
    each delivery timed, and each command reported once every subscriber here has seen its event."""

    def __init__(self, subscribers: int, sku_prefix: str) -> None:
        self.subscribers = subscribers
        self.sku_prefix = sku_prefix
        self.pending: dict[bytes, Delivered] = {}
        self.latency = Histogram()
        self.count = 0
        self.seen: list[tuple[str, int, int, bool]] = []

    def deliver(self, event_id: bytes, message: bytes, received_ns: int) -> None:
        event = self.pending.get(event_id)
        if event is None:
            event = self.pending[event_id] = self._decode(message)
        event.seen += 1
        if event.command_id is not None:
            self.count += 1
            if event.sent_ns is not None:
                self.latency.record((received_ns - event.sent_ns) / 1e6)
        if event.seen == self.subscribers:
            del self.pending[event_id]
            if event.command_id is not None:
                self.seen.append((event.command_id, received_ns, event.occurred_ns, event.failed))

    def _decode(self, message: bytes) -> Delivered:
        start = message.index(b"\ndata: ") + 7
        end = message.find(b"\r\n", start)
        envelope = _envelope.decode(message[start : end if end >= 0 else len(message)])
        occurred_ns = int(envelope.occurred_at.timestamp() * 1e9)
        failed = envelope.type == FAILED_EVENT
        # A failure the run cannot place by sku may still be one of its commands: the bench matches it by id.
        ours = (envelope.sku or "").startswith(self.sku_prefix) or (failed and envelope.sku is None)
        if not ours or not (failed or envelope.type in WIDGET_EVENTS):
            return Delivered(None, None, occurred_ns, failed=False)
        sent_ns = sent_ns_of(envelope.data.name if envelope.data else None)
        return Delivered(envelope.command_id, sent_ns, occurred_ns, failed=failed)


class Subscriber:
    """One SSE client of the run; dropped by the service, it resumes from its last event id, as clients should."""

    def __init__(self, endpoint: Endpoint, path: str, deliveries: Deliveries) -> None:
        self.endpoint = endpoint
        self.path = path
        self.deliveries = deliveries
        self.last_id: bytes | None = None
        self.reconnects = 0
        self.stream: EventStream | None = None

    def on_message(self, message: bytes, received_ns: int) -> None:
        if message.startswith(b"id: "):  # not `retry:`, nor a `: ping` comment
            event_id = message[4 : message.index(b"\r\n")]
            self.last_id = event_id
            self.deliveries.deliver(event_id, message, received_ns)

    async def open(self) -> None:
        self.stream = await open_event_stream(self.endpoint, self.path, self.on_message, last_event_id=self.last_id)

    async def hold(self) -> None:
        """Keeps the stream open until cancelled, resuming it whenever it ends."""
        while True:
            assert self.stream is not None
            await self.stream.closed
            self.reconnects += 1
            await asyncio.sleep(REOPEN_DELAY_S)
            try:
                await self.open()
            except TRANSPORT_ERRORS:
                continue

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


async def open_all(openers: list[Callable[[], Awaitable[None]]]) -> None:
    slots = asyncio.Semaphore(OPEN_AT_ONCE)

    async def bounded(opener: Callable[[], Awaitable[None]]) -> None:
        async with slots:
            await opener()

    await asyncio.gather(*(bounded(opener) for opener in openers))


async def run_subscribers(job: SubscriberJob, orders: Orders, reports: Reports) -> None:
    deliveries = Deliveries(job.count, job.sku_prefix)
    endpoints = [Endpoint.of(url) for url in job.urls]
    subscribers = [
        Subscriber(endpoints[index % len(endpoints)], job.path, deliveries)
        for index in range(job.first, job.first + job.count)
    ]
    await open_all([subscriber.open for subscriber in subscribers])
    reports.send(Ready(len(subscribers)))

    def report() -> None:
        if deliveries.seen:
            reports.send(Seen(deliveries.seen))
            deliveries.seen = []

    holders = [asyncio.create_task(subscriber.hold()) for subscriber in subscribers]
    reporter = asyncio.create_task(every(REPORT_INTERVAL_S, report))
    await orders.stopped.wait()
    for task in [reporter, *holders]:
        task.cancel()
    for subscriber in subscribers:
        subscriber.close()
    report()
    reconnects = sum(subscriber.reconnects for subscriber in subscribers)
    reports.send(SubscribersDone(deliveries.latency, deliveries.count, reconnects, cpu_seconds()))


async def run_idle(job: IdleJob, orders: Orders, reports: Reports) -> None:
    endpoints = [Endpoint.of(url) for url in job.urls]
    streams: list[EventStream] = []

    async def open_one(endpoint: Endpoint) -> None:
        streams.append(await open_event_stream(endpoint, job.path, lambda _message, _at: None))

    await open_all([partial(open_one, endpoints[i % len(endpoints)]) for i in range(job.first, job.first + job.count)])
    reports.send(Ready(len(streams)))
    await orders.stopped.wait()
    held = sum(not stream.closed.done() for stream in streams)
    for stream in streams:
        stream.close()
    reports.send(IdleDone(held, cpu_seconds()))


async def run_saq_worker(job: SaqWorkerJob, orders: Orders, reports: Reports) -> None:
    from saq import Queue, Worker  # noqa: PLC0415 - only this role needs SAQ

    queue = Queue.from_url(job.redis_url, name=job.queue)
    await queue.connect()
    worker = Worker(queue, functions=[(NOOP_JOB, noop)], concurrency=job.concurrency)
    worker.SIGNALS = []  # stopping is the bench's call, through stdin
    working = asyncio.create_task(worker.start())
    reports.send(Ready(job.concurrency))
    await orders.stopped.wait()
    await worker.stop()
    await working
    await queue.disconnect()


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reports = await Reports.open()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    job = await read_frame(stdin, ORDERS)
    orders = Orders(stdin)
    try:
        if isinstance(job, WriterJob):
            await Writer(job, reports).run(orders)
        elif isinstance(job, SubscriberJob):
            await run_subscribers(job, orders, reports)
        elif isinstance(job, IdleJob):
            await run_idle(job, orders, reports)
        elif isinstance(job, SaqWorkerJob):
            await run_saq_worker(job, orders, reports)
        else:
            raise TypeError(f"not a job: {job!r}")
    except Exception as error:
        reports.send(Failed(f"{type(error).__name__}: {error}"))
        await reports.flush()
        raise
    await reports.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run(serve())


if __name__ == "__main__":
    main()
