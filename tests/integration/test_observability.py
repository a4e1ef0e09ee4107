"""`/metrics` with the worker in a process of its own: what it applies shows on the web process's scrape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_processes import compose_command
from tests.support import Process, Server, eventually
from tests.unit.test_metrics import assert_scripted_run_counted, samples, scripted_run

pytestmark = pytest.mark.integration


@pytest.fixture
def web_and_worker(external_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Server, Process]]:
    env = external_env | {"WIDGETRY_LOG_FORMAT": "json"}
    worker = Process(compose_command("worker"), env, tmp_path, "worker")
    web = Server(env, tmp_path, "web", args=compose_command("web"))
    yield web, worker
    for process in (web, worker):
        process.stop()


async def test_metrics_count_what_a_separate_worker_applied(web_and_worker: tuple[Server, Process]) -> None:
    web, worker = web_and_worker
    async with httpx.AsyncClient(base_url=web.url, timeout=30) as client:
        assert await scripted_run(client) == [200, 200, 200, 200, 409, 200], worker.output

        async def all_finished_counted() -> bool:
            found = samples((await client.get("/metrics")).text)
            # Both counts: a flush (once a second) can carry a command's outcome before its event's publish.
            finished = sum(
                value for (name, _), value in found.items() if name.endswith(("_applied_total", "_failed_total"))
            )
            return finished >= 6 and found.get(("widgetry_events_published_total", ()), 0) >= 6

        await eventually(all_finished_counted, 10, "the worker's counts on the web process's /metrics")
        found = samples((await client.get("/metrics")).text)
        ready = (await client.get("/ready")).json()

    assert_scripted_run_counted(found)
    assert found[("widgetry_workers", ())] == 1
    assert ready["workers"]["mode"] == "external" and len(ready["workers"]["heartbeats"]) == 1
