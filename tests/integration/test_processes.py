"""Two web processes and one external worker, started with the commands compose.yaml runs: a command POSTed to
web A is applied by the worker and streamed to a client of web B."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from tests.support import AUTH, ROOT, WAIT, Process, Server, collect_events, wait_until
from widgetry.services.queue import partition_of


def compose_command(service: str) -> list[str]:
    """The service's command from compose.yaml, without the leading `widgetry` (the tests run `python -m widgetry`)."""
    command = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"][service]["command"]
    assert command[0] == "widgetry"
    return [arg for arg in command[1:] if arg not in ("--host", "0.0.0.0", "--port", "8000")]  # noqa: S104


@pytest.fixture
def stack(external_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Server, Server, Process]]:
    env = external_env
    worker = Process(compose_command("worker"), env, tmp_path, "worker")
    web_a = Server(env, tmp_path, "web-a", args=compose_command("web"))
    web_b = Server(env, tmp_path, "web-b", args=compose_command("web"))
    yield web_a, web_b, worker
    for process in (web_a, web_b, worker):
        process.stop()


async def test_a_command_posted_to_one_web_process_streams_from_another(
    stack: tuple[Server, Server, Process],
) -> None:
    web_a, web_b, worker = stack
    started = asyncio.Event()
    watcher = asyncio.create_task(
        collect_events(f"{web_b.url}/events", 2, params={"sku": "MP-1"}, started=started, timeout=30)
    )
    await asyncio.wait_for(started.wait(), 10)

    async with httpx.AsyncClient(base_url=web_a.url, headers=AUTH | WAIT, timeout=30) as client:
        created = await client.post("/widgets", json={"sku": "MP-1", "name": "Multi", "price_cents": 7})
        patched = await client.patch("/widgets/MP-1", json={"name": "Multi II"})
    events = await watcher

    assert (created.status_code, patched.status_code) == (200, 200), worker.output
    assert [e.event for e in events] == ["widget.created", "widget.updated"]
    assert [json.loads(e.data)["command_id"] for e in events] == [created.json()["id"], patched.json()["id"]]
    async with httpx.AsyncClient(base_url=web_b.url) as client:
        assert (await client.get("/widgets/MP-1")).json()["name"] == "Multi II"
    assert run_health_check("worker", worker.env).returncode == 0, worker.output


async def test_an_import_posted_to_one_web_process_is_run_by_the_external_worker(
    stack: tuple[Server, Server, Process],
) -> None:
    web_a, web_b, worker = stack
    body = "sku,name,price_cents\n" + "".join(f"MPI-{i:04d},Widget {i},{i}\n" for i in range(1_200))
    async with httpx.AsyncClient(base_url=web_a.url, headers=AUTH | {"Prefer": "wait=30"}, timeout=40) as client:
        imported = await client.post("/widgets/imports", content=body, headers={"Content-Type": "text/csv"})

    assert imported.status_code == 200, worker.output
    assert imported.json()["result"]["created"] == 1_200
    async with httpx.AsyncClient(base_url=web_b.url) as client:
        listed = (await client.get("/widgets", params={"search": "MPI-", "limit": 1})).json()
    assert listed["total"] == 1_200


def run_health_check(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """The service's compose health check, run here against the local processes."""
    kind, *command = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"][service]["healthcheck"]["test"]
    assert kind == "CMD" and command[0] == "python"
    return subprocess.run([sys.executable, *command[1:]], env={**os.environ, **env}, capture_output=True, timeout=30)  # noqa: S603


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_workers_run_with_more_processes_stops_them_all(external_env: dict[str, str], tmp_path: Path) -> None:
    """SIGTERM to `workers run --processes 3` stops the processes it forked too, quietly, and the command ends."""
    workers = Process([*compose_command("worker"), "--processes", "3"], external_env, tmp_path, "workers")
    wait_until(lambda: len(children_of(workers.popen.pid)) == 2, 30, f"two forked workers\n{workers.output}")
    forked = children_of(workers.popen.pid)
    # Stopped once all three run, as a supervisor stops a running service: a SIGTERM in litestar-saq's first moments,
    # before a process's event loop takes the signal over, ends that process with a traceback (a known gap).
    prefix = external_env["WIDGETRY_REDIS_PREFIX"]
    heartbeats = redis.Redis.from_url(external_env["REDIS_URL"])
    try:
        wait_until(
            lambda: len(list(heartbeats.scan_iter(f"saq:{prefix}:worker_info:*"))) == 3,
            30,
            f"a heartbeat from each of the three processes\n{workers.output}",
        )
    finally:
        heartbeats.close()

    assert workers.stop(timeout=30) == 0, workers.output
    assert [pid for pid in forked if Path(f"/proc/{pid}").exists()] == [], workers.output
    assert "did not finish" not in workers.output


async def test_partitions_each_have_their_worker_processes_and_stop_with_the_first(
    external_env: dict[str, str], tmp_path: Path
) -> None:
    """`workers run --processes 2` with two partitions: four processes, two on each partition's queue, each beating
    under its own id; commands of skus on either partition are applied; SIGTERM to the command stops every one."""
    env = external_env | {"WIDGETRY_QUEUE_PARTITIONS": "2"}
    skus = {partition_of(f"PT-{n}", 2): f"PT-{n}" for n in range(8)}
    assert sorted(skus) == [0, 1]
    workers = Process([*compose_command("worker"), "--processes", "2"], env, tmp_path, "workers")
    web = Server(env, tmp_path, "web", args=compose_command("web"))
    try:
        wait_until(lambda: len(children_of(workers.popen.pid)) == 3, 30, f"three forked workers\n{workers.output}")
        pids = {workers.popen.pid, *children_of(workers.popen.pid)}
        async with httpx.AsyncClient(base_url=web.url, headers=AUTH | WAIT, timeout=30) as client:
            created = [
                await client.post("/widgets", json={"sku": sku, "name": sku, "price_cents": 1}) for sku in skus.values()
            ]
            assert [response.status_code for response in created] == [200, 200], workers.output
            assert [response.json()["status"] for response in created] == ["succeeded", "succeeded"]

            def beating() -> set[int]:
                heartbeats = httpx.get(f"{web.url}/ready").json()["workers"]["heartbeats"]
                return {int(worker.rsplit("-", 1)[1]) for worker in heartbeats}

            wait_until(lambda: beating() == pids, 30, f"a heartbeat from each of {pids}")
    finally:
        web.stop()
    forked = children_of(workers.popen.pid)

    assert workers.stop(timeout=30) == 0, workers.output
    assert [pid for pid in forked if Path(f"/proc/{pid}").exists()] == [], workers.output
    assert "did not finish" not in workers.output


def test_a_worker_process_that_dies_stops_the_command(external_env: dict[str, str], tmp_path: Path) -> None:
    """One of the forked processes killed: the command stops the others and exits non-zero, so that a supervisor
    starts it again rather than leave a partition with nobody taking its jobs. A container taking partition 1 alone
    passes the compose health check while it runs."""
    env = external_env | {"WIDGETRY_QUEUE_PARTITIONS": "3"}
    alone = Process([*compose_command("worker"), "--partition", "1"], env, tmp_path, "partition-1")
    try:
        wait_until(lambda: run_health_check("worker", env).returncode == 0, 30, f"a heartbeat\n{alone.output}")
        workers = Process(compose_command("worker"), env, tmp_path, "workers")
        try:
            wait_until(lambda: len(children_of(workers.popen.pid)) == 2, 30, f"two forked workers\n{workers.output}")
            victim, survivor = children_of(workers.popen.pid)
            os.kill(victim, signal.SIGKILL)

            workers.popen.wait(30)
            assert workers.popen.returncode == 1, workers.output
            assert "ended on their own (pid, exit code)" in workers.output
            assert not Path(f"/proc/{survivor}").exists(), workers.output
        finally:
            workers.stop()
    finally:
        assert alone.stop(timeout=30) == 0, alone.output


def test_forked_worker_processes_stop_when_the_command_is_killed(external_env: dict[str, str], tmp_path: Path) -> None:
    """SIGKILL to `workers run` (no handler runs): the processes it forked stop by themselves, rather than go on
    taking jobs beside the ones a restart brings."""
    env = external_env | {"WIDGETRY_QUEUE_PARTITIONS": "2"}
    workers = Process([*compose_command("worker"), "--processes", "2"], env, tmp_path, "workers")
    wait_until(lambda: len(children_of(workers.popen.pid)) == 3, 30, f"three forked workers\n{workers.output}")
    forked = children_of(workers.popen.pid)

    workers.stop(signal.SIGKILL)

    def gone() -> bool:
        # Reparented to init (or a subreaper), which reaps them as they end.
        return not [pid for pid in forked if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]

    wait_until(gone, 30, f"the forked workers {forked} to stop\n{workers.output}")
    assert "is gone: stopping" in workers.output


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
