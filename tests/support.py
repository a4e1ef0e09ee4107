"""Helpers the suites share: a live server in a subprocess, SSE collection, waiting on a condition."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse
from litestar import Litestar

API_KEY = "test-api-key"
AUTH = {"X-API-Key": API_KEY}
ADMIN_KEY = "test-admin-key"
ADMIN = {"X-API-Key": ADMIN_KEY}
WAIT = {"Prefer": "wait=10"}
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def run_cli(*args: str, cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One `widgetry` command to its end, in an environment with none of the caller's widgetry settings: only
    `env`'s. A wide terminal, so tables are not wrapped."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("WIDGETRY_") and name not in ("DATABASE_URL", "REDIS_URL")
    }
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "widgetry", *args],
        env=environ | {"COLUMNS": "240", **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Process:
    """A `widgetry` command running in a subprocess, its output in a log file."""

    def __init__(self, args: list[str], env: Mapping[str, str], cwd: Path, name: str) -> None:
        self.env = dict(env)
        self.log_path = cwd / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "widgetry", *args],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


class Server(Process):
    """`widgetry run` on a free port, started and ready (`/health` answers)."""

    def __init__(self, env: Mapping[str, str], cwd: Path, name: str = "web", args: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([*(args or ["run"]), "--host", "127.0.0.1", "--port", str(self.port)], env, cwd, name)
        wait_until(self._healthy, 60, f"{name} to answer /health\n{self.output}")

    def _healthy(self) -> bool:
        if self.popen.poll() is not None:
            raise RuntimeError(f"server exited with {self.popen.returncode}:\n{self.output}")
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


async def collect_events(
    url: str,
    count: int,
    *,
    headers: dict[str, str] | None = None,
    params: Any = None,
    timeout: float = 15,
    started: asyncio.Event | None = None,
) -> list[ServerSentEvent]:
    """The first `count` events of an SSE stream (comments and empty phantom events skipped)."""
    events: list[ServerSentEvent] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, read=timeout)) as client:
        async with asyncio.timeout(timeout):
            async with aconnect_sse(client, "GET", url, headers=dict(headers or {}), params=params) as source:
                source.response.raise_for_status()
                if started is not None:
                    started.set()
                async for event in source.aiter_sse():
                    if event.data:
                        events.append(event)
                    if len(events) >= count:
                        return events
    return events


@contextlib.asynccontextmanager
async def running(app: Litestar) -> AsyncIterator[None]:
    """Runs the app's lifespan in a task of its own: its startup and shutdown must happen in one task, and
    pytest-asyncio sets fixtures up and tears them down in different ones."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(lifespan())
    await asyncio.wait([task, asyncio.create_task(started.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def serve(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """The app, its lifespan (worker, event reader) running on this event loop, behind an HTTP client.

    Litestar's AsyncTestClient runs the lifespan on another thread's loop, which the app's background tasks and
    connection pools cannot share with requests served on the test's loop.
    """
    transport = httpx.ASGITransport(app=app)
    async with running(app), httpx.AsyncClient(transport=transport, base_url="http://widgetry") as client:
        yield client


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
