"""`widgetry workers run` stops as quietly as it idles: SAQ's warning of tasks cut short is for jobs in flight."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import AUTH, WAIT, Process, Server, wait_until


def test_an_external_worker_applies_then_stops_idle_without_warnings(
    tmp_path: Path, external_env: dict[str, str]
) -> None:
    web = Server(external_env, tmp_path)
    worker = Process(["workers", "run", "--concurrency", "2"], external_env, tmp_path, "worker")
    try:
        wait_until(lambda: len(httpx.get(f"{web.url}/ready").json()["workers"]["heartbeats"]) == 1, 60, "the worker")
        created = httpx.post(
            f"{web.url}/widgets",
            json={"sku": "QUIET-1", "name": "Quiet", "price_cents": 1},
            headers=AUTH | WAIT,
            timeout=30,
        )
        # The event the POST waited for goes out before the job's own end is recorded: stop once it is (idle).
        wait_until(lambda: httpx.get(f"{web.url}/ready").json()["queue"]["active"] == 0, 30, "the job to end")
    finally:
        stopped = worker.stop()
        web.stop()

    assert created.status_code == 200, created.text
    assert stopped == 0, worker.output
    assert "did not finish" not in worker.output
    assert '"level": "warning"' not in worker.output
