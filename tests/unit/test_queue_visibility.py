"""SAQ's web UI at `/saq` behind an admin key, and `/ready` reporting the queue and the workers' heartbeats."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import ADMIN, API_KEY, AUTH, eventually, serve
from widgetry.app import create_app
from widgetry.observability.queues import WORKER_INFO_INTERVAL_S
from widgetry.settings import Settings, WorkerMode


async def test_the_queue_ui_needs_an_admin_key(client: httpx.AsyncClient) -> None:
    anonymous = await client.get("/saq/api/queues")
    wrong = await client.get("/saq/api/queues", headers={"X-API-Key": "not-a-key"})
    writer = await client.get("/saq/api/queues", headers=AUTH)
    page = await client.get("/saq", headers=ADMIN)
    queues = await client.get("/saq/api/queues", headers=ADMIN)

    assert (anonymous.status_code, wrong.status_code, writer.status_code) == (401, 401, 403)
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    assert writer.json()["type"].endswith("/problems/forbidden")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert queues.status_code == 200
    assert [queue["name"] for queue in queues.json()["queues"]] == ["widgetry"]


async def test_ready_reports_the_queue_and_the_in_process_worker(client: httpx.AsyncClient) -> None:
    async def heartbeat_seen() -> bool:
        return bool((await client.get("/ready")).json()["workers"]["heartbeats"])

    await eventually(heartbeat_seen, WORKER_INFO_INTERVAL_S + 5, "the in-process worker's first heartbeat")
    response = await client.get("/ready")

    assert response.status_code == 200
    body = response.json()
    assert body["queue"] == {"queued": 0, "active": 0, "scheduled": body["queue"]["scheduled"]}
    assert body["workers"]["mode"] == "inprocess"
    [(_worker, age)] = body["workers"]["heartbeats"].items()
    assert 0 <= age <= WORKER_INFO_INTERVAL_S + 1


async def test_ready_stays_ready_without_external_workers_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = create_app(Settings(api_keys=(API_KEY,), workers=WorkerMode.EXTERNAL))
    async with serve(app) as client:
        accepted = await client.post("/widgets", json={"sku": "R-1", "name": "r", "price_cents": 1}, headers=AUTH)

        async def queued() -> bool:
            # The command is queued as its request is answered, not before: the answer waits only for the record.
            return (await client.get("/ready")).json()["queue"]["queued"] == 1

        await eventually(queued, 5, "the command's job on the queue")
        response = await client.get("/ready")

    assert accepted.status_code == 202
    assert response.status_code == 200
    body = response.json()
    assert body["queue"]["queued"] == 1
    assert body["workers"]["heartbeats"] == {}
    assert "no external worker" in body["workers"]["note"]
