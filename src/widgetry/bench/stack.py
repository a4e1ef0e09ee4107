"""The service under test, when the bench starts it: `widgetry run` and `widgetry workers run` processes on the
environment's PostgreSQL and Redis, or one `widgetry run` with its in-process worker on the embedded defaults.

Every process writes to a log file in the run's directory. The stack is up once every web process answers
`/ready` and a warm-up write sent with `Prefer: wait` comes back applied, which only a running worker can do.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import httpx

from widgetry.client import AsyncWidgetryClient, ProblemError
from widgetry.settings import DEFAULT_WORKER_CONCURRENCY

STOP_TIMEOUT_S = 15
"""SIGTERM, then SIGKILL after this long (a web process drains for up to 5 s)."""
READY_TIMEOUT_S = 60
WARM_UP_TIMEOUT_S = 60
WARM_UP_WAIT_S = 10
POLL_S = 0.2
READY_REQUEST_TIMEOUT_S = 5
SSE_CONNECTIONS_PER_CLIENT = 1_000_000
"""Every subscriber and idle connection comes from this one address."""
RATE_LIMITED_HINT = (
    "it rate limits this API key: raise WIDGETRY_RATE_LIMIT_WRITES on the target (or set it to off) and run again"
)
"""What to do when the service under test refuses writes for their rate."""


class StackFailed(Exception):
    pass


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Stack:
    """`webs` web processes and `workers` worker processes, or with `embedded` one web process and its in-process
    worker; `env` is added to the environment they inherit."""

    log_dir: Path
    env: dict[str, str]
    embedded: bool
    webs: int = 1
    workers: int = 1
    concurrency: int = DEFAULT_WORKER_CONCURRENCY
    web_services: list[Service] = field(default_factory=list)
    worker_services: list[Service] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    @property
    def web_pids(self) -> list[int]:
        return [service.process.pid for service in self.web_services]

    @property
    def worker_pids(self) -> list[int]:
        """The processes that run jobs: on the embedded defaults, the web process itself."""
        return self.web_pids if self.embedded else [service.process.pid for service in self.worker_services]

    async def start(self) -> None:
        env = {
            **os.environ,
            **self.env,
            "WIDGETRY_RATE_LIMIT_WRITES": "off",
            "WIDGETRY_RATE_LIMIT_READS": "off",
            "WIDGETRY_SSE_CONNECTIONS_PER_CLIENT": str(SSE_CONNECTIONS_PER_CLIENT),
            "WIDGETRY_WORKER_CONCURRENCY": str(self.concurrency),
        }
        if self.embedded:
            env["WIDGETRY_WORKERS"] = "inprocess"
            self._launch("web-0", ["run", *self._web_args()], env, self.web_services)
        else:
            env["WIDGETRY_WORKERS"] = "external"
            await self._upgrade_database(env)
            for n in range(self.workers):
                args = ["workers", "run", "--concurrency", str(self.concurrency)]
                self._launch(f"worker-{n}", args, env, self.worker_services)
            for n in range(self.webs):
                self._launch(f"web-{n}", ["run", *self._web_args()], env, self.web_services)
        await asyncio.gather(
            *(self._ready(service, url) for service, url in zip(self.web_services, self.urls, strict=True))
        )

    def _web_args(self) -> list[str]:
        port = free_port()
        self.urls.append(f"http://127.0.0.1:{port}")
        return ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]

    def _launch(self, name: str, args: list[str], env: dict[str, str], into: list[Service]) -> None:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as output:
            # A process group of its own: Ctrl-C reaches the bench alone, which stops the stack in its own time.
            process = subprocess.Popen(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "widgetry", *args],
                env=env,
                cwd=self.log_dir,
                stdout=output,
                stderr=output,
                process_group=0,
            )
        into.append(Service(name, process, log))

    async def _upgrade_database(self, env: dict[str, str]) -> None:
        log = self.log_dir / "database-upgrade.log"
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "widgetry", "database", "upgrade", "--no-prompt",
                env=env, cwd=self.log_dir, stdout=output, stderr=output,
            )  # fmt: skip
            if await process.wait() != 0:
                raise StackFailed(f"`widgetry database upgrade` failed; see {log}")

    async def _ready(self, service: Service, url: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with AsyncWidgetryClient(url, timeout=READY_REQUEST_TIMEOUT_S) as client:
            while True:
                if (exited := self.exited()) is not None:
                    raise StackFailed(exited)
                try:
                    if await client.ready():
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise StackFailed(f"{service.name} not ready after {READY_TIMEOUT_S} s; see {service.log}")
                await asyncio.sleep(POLL_S)

    def exited(self) -> str | None:
        """Which process has ended, if one has: a stack that loses one mid-run is broken."""
        for service in [*self.web_services, *self.worker_services]:
            if (code := service.process.poll()) is not None:
                return f"{service.name} exited with {code}; see {service.log}"
        return None

    def stop(self) -> None:
        """SIGTERM to all, then SIGKILL to any still running after STOP_TIMEOUT_S."""
        services = [*self.web_services, *self.worker_services]
        for service in services:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for service in services:
            try:
                service.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
        self.web_services.clear()
        self.worker_services.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def warm_up(url: str, api_key: str, run_id: str) -> None:
    """Sends a create with `Prefer: wait` until one comes back applied, so a worker is up and consuming. One still
    unfinished after the wait (a worker still starting) leaves the next queued behind it."""
    deadline = time.monotonic() + WARM_UP_TIMEOUT_S
    async with AsyncWidgetryClient(url, api_key) as client:
        try:
            for attempt in count():
                command = await client.create(f"warmup-{run_id}-{attempt}", "bench warm-up", 0, wait=WARM_UP_WAIT_S)
                if command.status == "succeeded":
                    return
                if time.monotonic() > deadline:
                    raise StackFailed(f"no worker applied a warm-up write within {WARM_UP_TIMEOUT_S} s")
        except ProblemError as refused:
            hint = f"; {RATE_LIMITED_HINT}" if refused.status == 429 else ""
            raise StackFailed(f"the warm-up write to {url} was answered {refused}{hint}") from refused
        except httpx.TransportError as error:
            raise StackFailed(f"the warm-up write to {url} got no answer: {error!r}") from error
