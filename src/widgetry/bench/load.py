"""The load phase: writers, SSE subscribers and idle connections in agent processes, and the ledger of the run.

A command is complete once its `widget.*` event has reached every subscriber. Each subscriber agent reports the
commands all of its own subscribers have seen; the ledger counts a command complete once every subscriber agent
has reported it, at the latest of their times. Latencies come back as histograms, once, at the end.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from widgetry.bench.channel import (
    Accepted,
    Agent,
    Agents,
    Go,
    IdleDone,
    IdleJob,
    Report,
    Seen,
    Stop,
    SubscriberJob,
    SubscribersDone,
    WriterDone,
    WriterJob,
)
from widgetry.bench.histogram import Histogram
from widgetry.bench.stack import StackFailed
from widgetry.bench.system import tree_memory_mb

if TYPE_CHECKING:
    from collections.abc import Iterable

    from rich.console import Console

    from widgetry.bench.stack import Stack
    from widgetry.bench.workload import Workload

SUBSCRIBERS_PER_AGENT = 250
IDLE_PER_AGENT = 2_500
READY_TIMEOUT_S = 120
START_DELAY_S = 0.2
"""Writers start together, this long after the bench gives the word."""
TICK_S = 0.25
RSS_SAMPLE_S = 1.0
WARMED_UP_SHARE = 0.10
"""Worker memory "after warm-up" is sampled once this share of the commands is complete."""
LOST_AFTER_S = 60
"""Once every write is answered, commands still incomplete after this long without progress are lost."""
FINAL_REPORTS_TIMEOUT_S = 30


@dataclass(frozen=True)
class LoadPlan:
    workload: Workload
    urls: list[str]
    api_key: str
    subscribers: int
    clients: int
    connections: int
    rate: float
    idle_connections: int

    @property
    def idle_path(self) -> str:
        """A filter no event of the run matches: idle connections get keepalives only."""
        return f"/events?sku={self.workload.run_id}-idle"


@dataclass
class MemoryFigures:
    web_peak_mb: list[float | None]
    workers_peak_mb: list[float | None]
    workers_after_warmup_mb: float | None
    workers_end_mb: float | None


@dataclass
class IdleFigures:
    connections: int
    opened: int
    held: int = 0
    web_rss_mb_before: float | None = None
    web_rss_mb_with: float | None = None


@dataclass
class LoadResult:
    workload: Workload
    subscribers: int
    accepted: int
    completed: int
    failed: int
    lost: int
    errors: dict[str, int]
    first_send_ns: int | None
    last_reply_ns: int | None
    last_done_ns: int | None
    post_to_202: Histogram
    accepted_to_applied: Histogram
    accepted_to_applied_clamped: int
    e2e_latency: Histogram
    deliveries: int
    reconnects: int
    cpu_s: dict[str, float]
    """CPU used by the load generator's agents, by role."""
    memory: MemoryFigures | None = None
    idle: IdleFigures | None = None


class MemoryWatch:
    """The service's processes' memory (each with its children): worker RSS sampled every second, peaks at the end."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._next_sample = 0.0
        self.workers_after_warmup: float | None = None
        self.workers_last: float | None = None

    def web_rss_mb(self) -> float | None:
        return _total(tree_memory_mb(pid, "VmRSS") for pid in self._stack.web_pids)

    def tick(self, warmed_up: bool) -> None:
        if time.monotonic() < self._next_sample:
            return
        self._next_sample = time.monotonic() + RSS_SAMPLE_S
        self.workers_last = _total(tree_memory_mb(pid, "VmRSS") for pid in self._stack.worker_pids)
        if warmed_up and self.workers_after_warmup is None:
            self.workers_after_warmup = self.workers_last

    def figures(self) -> MemoryFigures:
        self._next_sample = 0.0
        self.tick(warmed_up=True)
        return MemoryFigures(
            web_peak_mb=[tree_memory_mb(pid, "VmHWM") for pid in self._stack.web_pids],
            workers_peak_mb=[tree_memory_mb(pid, "VmHWM") for pid in self._stack.worker_pids],
            workers_after_warmup_mb=self.workers_after_warmup,
            workers_end_mb=self.workers_last,
        )


def _total(figures: Iterable[float | None]) -> float | None:
    known = [figure for figure in figures if figure is not None]
    return round(sum(known), 1) if known else None


@dataclass
class CommandSeen:
    agents: int
    last_ns: int
    occurred_ns: int
    failed: bool


@dataclass
class Ledger:
    """What the agents have reported so far."""

    subscriber_agents: int
    accepted: dict[str, int] = field(default_factory=dict)
    """Command id -> when its 202 arrived (ns)."""
    errors: Counter[str] = field(default_factory=Counter)
    seen: dict[str, CommandSeen] = field(default_factory=dict)
    finished: int = 0
    """Accepted commands every subscriber has seen (completed or failed)."""
    post_to_202: Histogram = field(default_factory=Histogram)
    e2e_latency: Histogram = field(default_factory=Histogram)
    first_send_ns: int | None = None
    last_reply_ns: int | None = None
    writers_done: int = 0
    subscribers_done: int = 0
    deliveries: int = 0
    reconnects: int = 0
    idle_done: int = 0
    idle_held: int = 0
    cpu_s: Counter[str] = field(default_factory=Counter)
    last_progress: float = field(default_factory=time.monotonic)

    def receive(self, _agent: Agent, report: Report) -> None:
        if isinstance(report, Accepted):
            for command_id, accepted_ns in report.commands:
                self.accepted[command_id] = accepted_ns
                if (seen := self.seen.get(command_id)) is not None and seen.agents == self.subscriber_agents:
                    self.finished += 1  # its event outran its 202's report
            self.errors.update(report.errors)
            self.last_progress = time.monotonic()
        elif isinstance(report, Seen):
            for command_id, seen_ns, occurred_ns, failed in report.commands:
                self._saw(command_id, seen_ns, occurred_ns, failed)
            self.last_progress = time.monotonic()
        elif isinstance(report, WriterDone):
            self.writers_done += 1
            self.post_to_202.merge(report.post_to_202)
            self.first_send_ns = _earliest(self.first_send_ns, report.first_send_ns)
            self.last_reply_ns = _latest(self.last_reply_ns, report.last_reply_ns)
            self.cpu_s["writers"] += report.cpu_s
        elif isinstance(report, SubscribersDone):
            self.subscribers_done += 1
            self.e2e_latency.merge(report.latency)
            self.deliveries += report.deliveries
            self.reconnects += report.reconnects
            self.cpu_s["subscribers"] += report.cpu_s
        elif isinstance(report, IdleDone):
            self.idle_done += 1
            self.idle_held += report.held
            self.cpu_s["idle"] += report.cpu_s

    def _saw(self, command_id: str, seen_ns: int, occurred_ns: int, failed: bool) -> None:
        seen = self.seen.get(command_id)
        if seen is None:
            seen = self.seen[command_id] = CommandSeen(0, seen_ns, occurred_ns, failed)
        seen.agents += 1
        seen.last_ns = max(seen.last_ns, seen_ns)
        if seen.agents == self.subscriber_agents and command_id in self.accepted:
            self.finished += 1

    def result(self, workload: Workload, subscribers: int) -> LoadResult:
        completed = failed = clamped = 0
        last_done_ns: int | None = None
        applied = Histogram()
        for command_id, accepted_ns in self.accepted.items():
            if (seen := self.seen.get(command_id)) is None:
                continue
            # The worker can apply a command before its writer has read the 202 (the reply was still on its way):
            # that shows as a negative time, recorded as 0 and counted.
            applied_ms = (seen.occurred_ns - accepted_ns) / 1e6
            clamped += applied_ms < 0
            applied.record(max(0.0, applied_ms))
            if seen.agents < self.subscriber_agents:
                continue
            if seen.failed:
                failed += 1
            else:
                completed += 1
                last_done_ns = _latest(last_done_ns, seen.last_ns)
        return LoadResult(
            workload=workload,
            subscribers=subscribers,
            accepted=len(self.accepted),
            completed=completed,
            failed=failed,
            lost=len(self.accepted) - completed - failed,
            errors=dict(self.errors),
            first_send_ns=self.first_send_ns,
            last_reply_ns=self.last_reply_ns,
            last_done_ns=last_done_ns,
            post_to_202=self.post_to_202,
            accepted_to_applied=applied,
            accepted_to_applied_clamped=clamped,
            e2e_latency=self.e2e_latency,
            deliveries=self.deliveries,
            reconnects=self.reconnects,
            cpu_s={role: round(seconds, 2) for role, seconds in self.cpu_s.items()},
        )


def _earliest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def shares(total: int, per_agent: int) -> list[tuple[int, int]]:
    """(first index, count) of each agent, as few agents as hold `per_agent` each, evenly loaded."""
    agents = math.ceil(total / per_agent)
    return [(total * n // agents, total * (n + 1) // agents - total * n // agents) for n in range(agents)]


async def run_load(plan: LoadPlan, stack: Stack | None, log_dir: Path, console: Console) -> LoadResult:
    """Opens the idle connections and the subscribers, then lets the writers go and follows the run until every
    accepted command is complete, or nothing has moved for LOST_AFTER_S after the last reply."""
    subscriber_shares = shares(plan.subscribers, SUBSCRIBERS_PER_AGENT)
    ledger = Ledger(subscriber_agents=len(subscriber_shares))
    watch = MemoryWatch(stack) if stack is not None else None
    async with Agents(log_dir, ledger.receive) as agents:
        idle_agents, idle = await _open_idle(agents, plan, watch, console)
        console.print(f"bench: opening {plan.subscribers} SSE subscribers")
        subscribers = [
            await agents.start(
                f"subscribers-{n}", SubscriberJob(plan.urls, first, count, "/events", plan.workload.sku_prefix)
            )
            for n, (first, count) in enumerate(subscriber_shares)
        ]
        await agents.all_ready(subscribers, READY_TIMEOUT_S, "the SSE subscribers to connect")
        writers = [
            await agents.start(
                f"writer-{n}",
                WriterJob(
                    plan.urls, plan.api_key, plan.workload, n, plan.clients, plan.connections, plan.rate / plan.clients
                ),
            )
            for n in range(plan.clients)
        ]
        await agents.all_ready(writers, READY_TIMEOUT_S, "the writers to connect")
        go = Go(time.time_ns() + int(START_DELAY_S * 1e9))
        for writer in writers:
            writer.send(go)
        await _follow(plan, ledger, agents, stack, watch, console)
        memory = watch.figures() if watch is not None else None
        for agent in [*subscribers, *idle_agents]:
            agent.send(Stop())
        await agents.wait(
            lambda: ledger.subscribers_done == len(subscribers) and ledger.idle_done == len(idle_agents),
            FINAL_REPORTS_TIMEOUT_S,
            "the subscribers' last reports",
        )
    result = ledger.result(plan.workload, plan.subscribers)
    result.memory = memory
    if idle is not None:
        idle.held = ledger.idle_held
        result.idle = idle
    return result


async def _open_idle(
    agents: Agents, plan: LoadPlan, watch: MemoryWatch | None, console: Console
) -> tuple[list[Agent], IdleFigures | None]:
    if not plan.idle_connections:
        return [], None
    console.print(f"bench: opening {plan.idle_connections} idle SSE connections")
    before = watch.web_rss_mb() if watch is not None else None
    idle_agents = [
        await agents.start(f"idle-{n}", IdleJob(plan.urls, first, count, plan.idle_path))
        for n, (first, count) in enumerate(shares(plan.idle_connections, IDLE_PER_AGENT))
    ]
    opened = await agents.all_ready(idle_agents, READY_TIMEOUT_S, "the idle connections to open")
    figures = IdleFigures(plan.idle_connections, opened, web_rss_mb_before=before)
    figures.web_rss_mb_with = watch.web_rss_mb() if watch is not None else None
    return idle_agents, figures


async def _follow(
    plan: LoadPlan, ledger: Ledger, agents: Agents, stack: Stack | None, watch: MemoryWatch | None, console: Console
) -> None:
    commands = plan.workload.commands
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("complete", total=commands, status="")
        while True:
            agents.check()
            if stack is not None and (exited := stack.exited()) is not None:
                raise StackFailed(exited)
            if watch is not None:
                watch.tick(warmed_up=ledger.finished >= WARMED_UP_SHARE * commands)
            errors = sum(ledger.errors.values())
            progress.update(task, completed=ledger.finished, status=f"accepted {len(ledger.accepted)}, errors {errors}")
            if ledger.writers_done == plan.clients and (
                ledger.finished >= len(ledger.accepted) or time.monotonic() - ledger.last_progress > LOST_AFTER_S
            ):
                return
            await asyncio.sleep(TICK_S)
