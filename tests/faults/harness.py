"""The fault suite's stack and ledger.

- `Stack`: web and worker processes started with compose.yaml's commands, which the tests kill and restart.
- `Submitter`: a client that behaves as a careful one should: every write carries an `Idempotency-Key`, and a
  503 or a cut connection is retried with the same key until the command is accepted.
- `account`: the ledger, from the database, the outbox and the Redis stream, printed as one summary line.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import redis.asyncio as aioredis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from tests.integration.test_processes import compose_command
from tests.summary import report
from tests.support import API_KEY, Process, Server, eventually
from widgetry.domain.models import CommandRecord, EventRecord, Widget
from widgetry.settings import Settings
from widgetry.workers.jobs import APPLY_JOBS

RETRYABLE_STATUS = {502, 503, 504}
SUBMIT_DEADLINE_S = 120
CLIENT_BACKOFF_S = 0.2
"""Shorter than the `Retry-After: 1` the service suggests, so outages in the tests stay short."""


def stack_env(database_url: str, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WIDGETRY_REDIS_PREFIX": prefix,
        "WIDGETRY_API_KEYS": API_KEY,
        "WIDGETRY_WORKERS": "external",
        # The suite sends thousands of writes with one key as fast as it can; throttling is tested elsewhere.
        "WIDGETRY_RATE_LIMIT_WRITES": "off",
        "WIDGETRY_RATE_LIMIT_READS": "off",
        # A killed worker's jobs are swept once their timeout has passed since they started.
        "WIDGETRY_JOB_TIMEOUT_SECONDS": "5",
        # Recovery after Redis lost its jobs is part of what is under test: run it often, not each minute.
        "WIDGETRY_RECOVERY_INTERVAL_SECONDS": "2",
        "WIDGETRY_RECOVERY_GRACE_SECONDS": "3",
        **extra,
    }


class Stack:
    """`widgetry run` and `widgetry workers run` processes, as compose.yaml starts them."""

    def __init__(self, env: dict[str, str], cwd: Path, *, webs: int = 1, workers: int = 1, concurrency: int = 10):
        self.env, self.cwd, self.concurrency = env, cwd, concurrency
        self._started = Counter[str]()
        self.workers: list[Process] = []
        self.webs: list[Server] = []
        try:
            self.workers = [self._worker(n) for n in range(workers)]
            self.webs = [Server(env, cwd, f"web-{n}", args=compose_command("web")) for n in range(webs)]
        except BaseException:
            self.close()
            raise

    @property
    def urls(self) -> list[str]:
        return [web.url for web in self.webs]

    def kill_worker(self, n: int) -> None:
        """SIGKILL: no shutdown hook runs, jobs in flight are left `active` in Redis for the sweep to find."""
        self.workers[n].stop(signal.SIGKILL)

    def restart_worker(self, n: int) -> None:
        self.workers[n] = self._worker(n)

    def close(self) -> None:
        for process in [*self.webs, *self.workers]:
            process.stop()

    def _worker(self, n: int) -> Process:
        args = compose_command("worker")
        args[args.index("--concurrency") + 1] = str(self.concurrency)
        self._started[f"worker-{n}"] += 1
        return Process(args, self.env, self.cwd, f"worker-{n}-{self._started[f'worker-{n}']}")


Write = tuple[str, str, dict[str, Any] | None]
"""(method, sku, body)"""


def widget_writes(sku: str, patches: int) -> list[Write]:
    """A create, then `patches` patches of the same widget: its row ends at version `patches + 1`."""
    create = ("POST", sku, {"sku": sku, "name": f"{sku} v1", "price_cents": 100})
    return [create, *(("PATCH", sku, {"name": f"{sku} v{n}", "price_cents": 100 * n}) for n in range(2, patches + 2))]


@dataclass
class Submitted:
    id: str
    sku: str
    method: str
    body: dict[str, Any] | None


@dataclass
class Submitter:
    """Sends writes, each with its own `Idempotency-Key`, retrying what the service could not take yet."""

    urls: list[str]
    concurrency: int = 20
    commands: list[Submitted] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    retries: int = 0
    transport_errors: int = 0
    """Requests that got no response at all (a connection cut or timed out), retried like a 503."""
    not_problems: int = 0
    """Error responses that were not `application/problem+json`."""

    async def __aenter__(self) -> Submitter:
        limits = httpx.Limits(max_connections=self.concurrency * 2)
        self._clients = [
            httpx.AsyncClient(base_url=url, headers={"X-API-Key": API_KEY}, timeout=30, limits=limits)
            for url in self.urls
        ]
        self._slots = asyncio.Semaphore(self.concurrency)
        return self

    async def __aexit__(self, *_: object) -> None:
        for client in self._clients:
            await client.aclose()

    async def sequences(self, writes: Iterable[list[Write]]) -> None:
        """Runs each list of writes in order (one sku's, so its accept order is known), the lists concurrently."""

        async def run(sequence: list[Write]) -> None:
            for method, sku, body in sequence:
                await self.submit(method, sku, body)

        await asyncio.gather(*(run(sequence) for sequence in writes))

    async def submit(self, method: str, sku: str, body: dict[str, Any] | None) -> Submitted:
        path = "/widgets" if method == "POST" else f"/widgets/{sku}"
        key = str(uuid.uuid4())
        client = self._clients[len(self.commands) % len(self._clients)]
        deadline = asyncio.get_running_loop().time() + SUBMIT_DEADLINE_S
        async with self._slots:
            while True:
                try:
                    response = await client.request(method, path, json=body, headers={"Idempotency-Key": key})
                except httpx.TransportError:
                    self.transport_errors += 1
                    response = None
                if response is not None:
                    self.statuses[response.status_code] += 1
                    problem = response.headers.get("content-type", "").startswith("application/problem+json")
                    self.not_problems += response.status_code >= 400 and not problem
                    if response.status_code not in RETRYABLE_STATUS:
                        break
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"{method} {path} not accepted in {SUBMIT_DEADLINE_S}s")
                self.retries += 1
                await asyncio.sleep(CLIENT_BACKOFF_S)  # a client's pause before it tries again, not a wait on a result
        assert response.status_code in (200, 202), (response.status_code, response.text)
        submitted = Submitted(response.json()["id"], sku, method, body)
        self.commands.append(submitted)
        return submitted


@dataclass
class Ledger:
    """What became of every accepted command, read from the database, the outbox and the stream."""

    name: str
    commands: int
    statuses: Counter[str]
    events: list[dict[str, Any]]
    lost: int
    duplicated: int
    gaps: int
    unpublished: int
    rows: dict[str, tuple[str, int, int]]
    recorded: int
    """Commands in the database, whoever sent them: equal to `commands` unless a duplicate was recorded."""
    expected_rows: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def applied(self) -> int:
        return self.statuses["succeeded"]

    @property
    def failed(self) -> int:
        return self.statuses["failed"]

    def line(self) -> str:
        extra = "".join(f" {name}={value}" for name, value in self.extra.items())
        return (
            f"faults[{self.name}]: commands={self.commands} recorded={self.recorded} applied={self.applied} "
            f"failed={self.failed} "
            f"lost={self.lost} duplicated={self.duplicated} events={len(self.events)} gaps={self.gaps} "
            f"unpublished={self.unpublished}{extra}"
        )


async def account(
    name: str, database_url: str, redis_url: str, prefix: str, submitted: list[Submitted], *, source: str = "stream"
) -> Ledger:
    """The ledger of a run. `source` is where events are counted: the Redis `stream` (what SSE clients see), or the
    `outbox` when the stream itself was flushed during the run (events published before a flush are gone)."""
    engine = create_async_engine(Settings(database_url=database_url).sqlalchemy_url)
    try:
        async with engine.connect() as connection:
            records = {
                str(record.id): record
                for record in (await connection.execute(select(CommandRecord.id, CommandRecord.status))).all()
            }
            outbox = (
                await connection.execute(
                    select(
                        EventRecord.event_id,
                        EventRecord.type,
                        EventRecord.sku,
                        EventRecord.version,
                        EventRecord.command_id,
                        EventRecord.stream_id,
                    ).order_by(EventRecord.id)
                )
            ).all()
            rows = {
                sku: (name_, price, version)
                for sku, name_, price, version in (
                    await connection.execute(select(Widget.sku, Widget.name, Widget.price_cents, Widget.version))
                ).all()
            }
    finally:
        await engine.dispose()
    if source == "stream":
        client = aioredis.from_url(redis_url)
        try:
            entries = await client.xrange(f"{prefix}:events")
        finally:
            await client.aclose()
        events = [msgspec.json.decode(fields[b"data"]) for _id, fields in entries]
    else:
        fields = ("event_id", "type", "sku", "version", "command_id")
        events = [{name: _plain(getattr(row, name)) for name in fields} for row in outbox]

    per_command = Counter(event["command_id"] for event in events)
    duplicated = sum(count - 1 for count in per_command.values() if count > 1)
    duplicated += sum(count - 1 for count in Counter(e["event_id"] for e in events).values() if count > 1)
    finished = {"succeeded", "failed"}
    lost = sum(
        1
        for command in submitted
        if (record := records.get(command.id)) is None or record.status not in finished or command.id not in per_command
    )
    return Ledger(
        name=name,
        commands=len(submitted),
        statuses=Counter(records[c.id].status for c in submitted if c.id in records),
        events=events,
        lost=lost,
        duplicated=duplicated,
        gaps=count_gaps(events),
        unpublished=sum(1 for e in outbox if e.stream_id is None),
        rows=rows,
        recorded=len(records),
    )


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int)) else str(value)


def count_gaps(events: list[dict[str, Any]]) -> int:
    """Places where a sku's `widget.*` versions do not go up by exactly one, in the order they were delivered."""
    last: dict[str, int] = {}
    gaps = 0
    for event in events:
        if not event["type"].startswith("widget."):
            continue
        expected = last.get(event["sku"], 0) + 1
        gaps += event["version"] != expected
        last[event["sku"]] = event["version"]
    return gaps


def expected_rows(submitted: list[Submitted], seqs: dict[str, int]) -> dict[str, tuple[str, int, int]]:
    """Each sku's row after its commands are applied in accept order: (name, price_cents, version)."""
    by_sku: dict[str, list[Submitted]] = defaultdict(list)
    for command in submitted:
        by_sku[command.sku].append(command)
    rows: dict[str, tuple[str, int, int]] = {}
    for sku, commands in by_sku.items():
        row: tuple[str, int, int] | None = None
        for command in sorted(commands, key=lambda c: seqs[c.id]):
            if command.method == "POST" and row is None:
                assert command.body is not None
                row = (command.body["name"], command.body["price_cents"], 1)
            elif command.method == "PATCH" and row is not None:
                changes = command.body or {}
                row = (changes.get("name", row[0]), changes.get("price_cents", row[1]), row[2] + 1)
            elif command.method == "DELETE":
                row = None
        if row is not None:
            rows[sku] = row
    return rows


class Probe:
    """Reads the run's database while it runs: how many commands have finished, what is left unpublished."""

    def __init__(self, database_url: str) -> None:
        self._engine = create_async_engine(Settings(database_url=database_url).sqlalchemy_url)

    async def close(self) -> None:
        await self._engine.dispose()

    async def finished(self) -> int:
        return await self._scalar(
            select(func.count()).select_from(CommandRecord).where(CommandRecord.status.in_(("succeeded", "failed")))
        )

    async def unpublished(self) -> int:
        return await self._scalar(select(func.count()).select_from(EventRecord).where(EventRecord.stream_id.is_(None)))

    async def accept_order(self) -> dict[str, int]:
        """Each command's place in its sku's accept order."""
        async with self._engine.connect() as connection:
            rows = (await connection.execute(select(CommandRecord.id, CommandRecord.seq))).all()
        return {str(command_id): seq for command_id, seq in rows}

    async def _scalar(self, statement: Any) -> int:
        async with self._engine.connect() as connection:
            return int(await connection.scalar(statement) or 0)


class FaultRun:
    """One fault test's run: the stack, a probe of its database, and a client, over the test's database and key
    prefix. `settle()` waits until every accepted command has finished and every event is published; leaving the
    block stops the processes; `ledger()` then accounts for the run, with the rows its commands should have made."""

    def __init__(
        self, name: str, database_url: str, redis_url: str, prefix: str, cwd: Path, *, webs: int = 1,
        workers: int = 1, concurrency: int = 10, clients: int = 20, **env: str,
    ) -> None:  # fmt: skip
        self.name, self.database_url, self.redis_url, self.prefix = name, database_url, redis_url, prefix
        self._stack_args = (stack_env(database_url, redis_url, prefix, **env), cwd)
        self._stack_options = {"webs": webs, "workers": workers, "concurrency": concurrency}
        self._clients = clients
        self.seqs: dict[str, int] = {}

    async def __aenter__(self) -> FaultRun:
        self.probe = Probe(self.database_url)
        self.stack = Stack(*self._stack_args, **self._stack_options)
        self.submitter = await Submitter(self.stack.urls, concurrency=self._clients).__aenter__()
        return self

    async def __aexit__(self, *_: object) -> None:
        try:
            await self.submitter.__aexit__()
        finally:
            self.stack.close()
            await self.probe.close()

    async def submitted(self) -> int:
        return len(self.submitter.commands)

    async def worker_holds_a_job(self, n: int) -> bool:
        """Whether worker `n` is running a job right now: SAQ records on each started job the worker's id, which
        ends with its process id. Any partition's queue (`saq:<prefix>:active`, `saq:<prefix>:<n>:active`)."""
        suffix = f"-{self.stack.workers[n].popen.pid}"
        client = aioredis.from_url(self.redis_url)
        try:
            active = [f"saq:{self.prefix}:active"]
            active += [key async for key in client.scan_iter(f"saq:{self.prefix}:*:active", count=1000)]
            job_ids = [job_id for key in active for job_id in await client.lrange(key, 0, -1)]
            records = await client.mget(job_ids) if job_ids else []
        finally:
            await client.aclose()
        jobs = [msgspec.json.decode(record) for record in records if record]
        return any(job.get("status") == "active" and str(job.get("worker_id")).endswith(suffix) for job in jobs)

    async def retried_jobs(self) -> int:
        """Apply jobs that have been started more than once (SAQ keeps each job's record, with its attempts), on any
        partition's queue (their keys all begin `saq:job:<prefix>:`)."""
        client = aioredis.from_url(self.redis_url)
        try:
            keys = [key async for key in client.scan_iter(f"saq:job:{self.prefix}:*", count=1000)]
            records = await client.mget(keys) if keys else []
        finally:
            await client.aclose()
        jobs = [msgspec.json.decode(record) for record in records if record]
        return sum(job.get("function") in APPLY_JOBS and job.get("attempts", 0) > 1 for job in jobs)

    async def settle(self, timeout: float = 120) -> None:
        commands = len(self.submitter.commands)
        await eventually(lambda: at_least(self.probe.finished, commands), timeout, "every command to finish")
        await eventually(lambda: at_most(self.probe.unpublished, 0), 60, "every event to be published")
        self.seqs = await self.probe.accept_order()

    async def ledger(self, *, source: str = "stream", reported: bool = True, **extra: Any) -> Ledger:
        """The run's ledger, its summary line reported (with `extra` and the client's retries in it) unless the
        test adds to it first."""
        ledger = await account(
            self.name, self.database_url, self.redis_url, self.prefix, self.submitter.commands, source=source
        )
        ledger.expected_rows = expected_rows(self.submitter.commands, self.seqs)
        ledger.extra = {
            **extra,
            "responses": dict(self.submitter.statuses),
            "no_response": self.submitter.transport_errors,
            "client_retries": self.submitter.retries,
        }
        if reported:
            report(ledger.line())
        return ledger


def assert_exactly_once(ledger: Ledger, commands: int) -> None:
    """Every command recorded once and applied once, in accept order, with one event each, none lost or doubled."""
    assert (ledger.commands, ledger.recorded) == (commands, commands)
    assert ledger.statuses == {"succeeded": commands}
    assert ledger.rows == ledger.expected_rows
    assert len(ledger.events) == commands
    assert (ledger.lost, ledger.duplicated, ledger.gaps, ledger.unpublished) == (0, 0, 0, 0)


async def at_least(count: Callable[[], Awaitable[int]], target: float) -> bool:
    return await count() >= target


async def at_most(count: Callable[[], Awaitable[int]], target: float) -> bool:
    return await count() <= target
