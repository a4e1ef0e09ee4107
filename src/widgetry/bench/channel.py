"""The bench and its agent processes: the messages they exchange, framed on the agent's stdin and stdout.

Agents (writers, SSE subscribers, idle connections, raw SAQ workers) are plain `python -m widgetry.bench.agent`
subprocesses rather than multiprocessing children: a spawned multiprocessing child re-imports the parent's main
module, and the `widgetry` script's is the whole CLI (over a second of CPU per child), while an agent needs only
asyncio, msgspec and this package.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from widgetry.bench.histogram import Histogram
from widgetry.bench.workload import Workload

if TYPE_CHECKING:
    from collections.abc import Callable

FRAME_HEADER = struct.Struct(">I")
STOP_TIMEOUT_S = 10
WAIT_POLL_S = 0.05


class Message(msgspec.Struct, tag=True, frozen=True):
    pass


# The bench's orders.


class WriterJob(Message):
    urls: list[str]
    api_key: str
    workload: Workload
    part: int
    parts: int
    connections: int
    rate: float
    """Commands per second this writer offers (an open loop); 0: as fast as replies come (a closed loop)."""


class SubscriberJob(Message):
    urls: list[str]
    first: int
    """The global index of this agent's first subscriber: subscriber `i` uses `urls[i % len(urls)]`."""
    count: int
    path: str
    sku_prefix: str


class IdleJob(Message):
    urls: list[str]
    first: int
    count: int
    path: str


class SaqWorkerJob(Message):
    redis_url: str
    queue: str
    concurrency: int


class Go(Message):
    at_ns: int
    """When to send the first write (wall clock), the same for every writer."""


class Stop(Message):
    pass


# The agents' reports.


class Ready(Message):
    connections: int


class Accepted(Message):
    commands: list[tuple[str, int]]
    """(command id, 202 receipt time in ns) of each write accepted since the last report."""
    errors: dict[str, int]
    """Writes answered otherwise since the last report, by status (or `transport`)."""


class WriterDone(Message):
    post_to_202: Histogram
    first_send_ns: int | None
    last_reply_ns: int | None
    cpu_s: float
    """CPU the agent used, so a report shows whether the load generator kept up."""


class Seen(Message):
    commands: list[tuple[str, int, int, bool]]
    """(command id, when the agent's last subscriber saw its event, the event's `occurred_at`, whether it was a
    `command.failed`) of each command every subscriber of the agent has seen since the last report."""


class SubscribersDone(Message):
    latency: Histogram
    """POST -> event seen, per delivery."""
    deliveries: int
    reconnects: int
    cpu_s: float


class IdleDone(Message):
    held: int
    cpu_s: float


class Failed(Message):
    reason: str


Job = WriterJob | SubscriberJob | IdleJob | SaqWorkerJob
Report = Ready | Accepted | WriterDone | Seen | SubscribersDone | IdleDone | Failed
_encoder = msgspec.msgpack.Encoder()


def frame(message: Message) -> bytes:
    body = _encoder.encode(message)
    return FRAME_HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader, decoder: msgspec.msgpack.Decoder) -> object:
    (length,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
    return decoder.decode(await reader.readexactly(length))


REPORTS = msgspec.msgpack.Decoder(Report)
ORDERS = msgspec.msgpack.Decoder(Job | Go | Stop)


class AgentFailed(Exception):
    pass


class Agent:
    """An agent process seen from the bench: its job sent at start, its reports handed to `on_report` as they come,
    its stderr in a log file."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.log = log
        self._process = process
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False

    @classmethod
    async def start(cls, name: str, job: Job, log_dir: Path, on_report: Callable[[Agent, Report], None]) -> Agent:
        log = log_dir / f"{name}.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "widgetry.bench.agent",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        agent = cls(name, process, log)
        agent.send(job)
        agent._reader = asyncio.create_task(agent._read(on_report), name=f"bench-{name}")
        return agent

    def send(self, message: Message) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(frame(message))

    async def _read(self, on_report: Callable[[Agent, Report], None]) -> None:
        assert self._process.stdout is not None
        while True:
            try:
                report = await read_frame(self._process.stdout, REPORTS)
            except asyncio.IncompleteReadError:
                code = await self._process.wait()
                if code != 0 and not self._stopping:  # an agent exits 0 only after its last report
                    on_report(self, Failed(f"{self.name} exited with {code}; see {self.log}"))
                return
            on_report(self, report)  # type: ignore[arg-type]

    async def stop(self) -> None:
        """Closes its stdin (an agent ends when it does), then kills it if it lingers."""
        self._stopping = True
        if self._process.stdin is not None and not self._process.stdin.is_closing():
            self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()


class Agents:
    """The agent processes of one phase, started and stopped together. Reports other than `Ready` and `Failed` go
    to `on_report`; a `Failed` one (or an agent dying) fails whatever the bench waits for next."""

    def __init__(self, log_dir: Path, on_report: Callable[[Agent, Report], None] | None = None) -> None:
        self._log_dir = log_dir
        self._on_report = on_report
        self.agents: list[Agent] = []
        self.ready: dict[str, int] = {}
        """Connections each ready agent holds, by its name."""
        self.failures: list[str] = []

    async def __aenter__(self) -> Agents:
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.gather(*(agent.stop() for agent in self.agents))

    async def start(self, name: str, job: Job) -> Agent:
        agent = await Agent.start(name, job, self._log_dir, self._receive)
        self.agents.append(agent)
        return agent

    def _receive(self, agent: Agent, report: Report) -> None:
        if isinstance(report, Ready):
            self.ready[agent.name] = report.connections
        elif isinstance(report, Failed):
            self.failures.append(f"{agent.name}: {report.reason} (log: {agent.log})")
        elif self._on_report is not None:
            self._on_report(agent, report)

    def check(self) -> None:
        if self.failures:
            raise AgentFailed("; ".join(self.failures))

    async def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not done():
            self.check()
            if asyncio.get_running_loop().time() > deadline:
                raise AgentFailed(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(WAIT_POLL_S)

    async def all_ready(self, agents: list[Agent], timeout: float, what: str) -> int:
        """Waits until each of `agents` is ready; the connections they hold."""
        await self.wait(lambda: all(agent.name in self.ready for agent in agents), timeout, what)
        return sum(self.ready[agent.name] for agent in agents)
