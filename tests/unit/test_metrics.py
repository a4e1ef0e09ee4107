"""`/metrics`: Litestar's HTTP metrics and the service's own, with exact values after a scripted run."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import API_KEY, AUTH, WAIT, serve
from widgetry.app import create_app
from widgetry.settings import Settings, WorkerMode


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scripted_run(client: httpx.AsyncClient) -> list[int]:
    """Three creates, an update, a create of a sku that exists (fails), a delete; each waited for."""
    statuses = [
        (
            await client.post("/widgets", json={"sku": sku, "name": sku, "price_cents": 1}, headers=AUTH | WAIT)
        ).status_code
        for sku in ("M-1", "M-2", "M-3")
    ]
    statuses.append((await client.patch("/widgets/M-1", json={"name": "renamed"}, headers=AUTH | WAIT)).status_code)
    statuses.append(
        (
            await client.post("/widgets", json={"sku": "M-1", "name": "x", "price_cents": 1}, headers=AUTH | WAIT)
        ).status_code
    )
    statuses.append((await client.delete("/widgets/M-2", headers=AUTH | WAIT)).status_code)
    return statuses


def assert_scripted_run_counted(found: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
    def by_type(name: str) -> dict[str, float]:
        return {dict(labels)["type"]: value for (sample, labels), value in found.items() if sample == name}

    assert by_type("widgetry_commands_accepted_total") == {"create_widget": 4, "update_widget": 1, "delete_widget": 1}
    assert by_type("widgetry_commands_applied_total") == {"create_widget": 3, "update_widget": 1, "delete_widget": 1}
    assert by_type("widgetry_commands_failed_total") == {"create_widget": 1}
    assert by_type("widgetry_command_apply_seconds_count") == {
        "create_widget": 4,
        "update_widget": 1,
        "delete_widget": 1,
    }
    inf = {
        dict(labels)["type"]: value
        for (sample, labels), value in found.items()
        if sample == "widgetry_command_apply_seconds_bucket" and dict(labels)["le"] == "+Inf"
    }
    assert inf == {"create_widget": 4, "update_widget": 1, "delete_widget": 1}
    # Five widget events and one `command.failed`.
    assert found[("widgetry_events_published_total", ())] == 6
    assert found[("widgetry_commands_unfinished", ())] == 0
    assert found[("widgetry_oldest_unfinished_command_age_seconds", ())] == 0
    assert found[("widgetry_relay_backlog_events", ())] == 0
    assert found[("widgetry_scrape_source_up", (("source", "database"),))] == 1
    assert found[("widgetry_scrape_source_up", (("source", "redis"),))] == 1


async def test_metrics_count_each_command_by_type_and_outcome(client: httpx.AsyncClient) -> None:
    assert await scripted_run(client) == [200, 200, 200, 200, 409, 200]

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert_scripted_run_counted(found)
    assert found[("widgetry_queue_jobs", (("state", "queued"),))] == 0
    assert found[("widgetry_workers", ())] == 1  # the in-process worker's heartbeat
    assert found[("widgetry_sse_subscribers", ())] == 0
    posts = sum(
        value
        for (sample, labels), value in found.items()
        if sample == "widgetry_http_requests_total"
        and dict(labels).get("path") == "/widgets"
        and dict(labels).get("method") == "POST"
    )
    assert posts >= 4  # Litestar's HTTP metrics (process-wide: other tests' requests count too)


async def test_metrics_show_unfinished_commands_while_no_worker_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = create_app(Settings(api_keys=(API_KEY,), workers=WorkerMode.EXTERNAL))
    async with serve(app) as client:
        accepted = await client.post("/widgets", json={"sku": "Q-1", "name": "q", "price_cents": 1}, headers=AUTH)
        found = samples((await client.get("/metrics")).text)

    assert accepted.status_code == 202
    assert found[("widgetry_commands_accepted_total", (("type", "create_widget"),))] == 1
    assert found[("widgetry_commands_unfinished", ())] == 1
    assert found[("widgetry_oldest_unfinished_command_age_seconds", ())] > 0
    assert found[("widgetry_queue_jobs", (("state", "queued"),))] == 1
    assert found[("widgetry_workers", ())] == 0


async def test_metrics_answer_when_the_database_is_gone(app_and_client: tuple[object, httpx.AsyncClient]) -> None:
    app, client = app_and_client
    await app.state.connections.alchemy.get_engine().dispose()  # type: ignore[attr-defined]
    Path("widgetry.db").unlink()
    Path("widgetry.db").mkdir()  # a directory where the file was: every connection fails

    response = await client.get("/metrics")

    assert response.status_code == 200
    found = samples(response.text)
    assert found[("widgetry_scrape_source_up", (("source", "database"),))] == 0
    assert found[("widgetry_scrape_source_up", (("source", "redis"),))] == 1
    assert ("widgetry_relay_backlog_events", ()) not in found


async def test_metrics_are_never_rate_limited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = create_app(Settings(api_keys=(API_KEY,), rate_limit_reads="2/minute"))
    async with serve(app) as client:
        scrapes = [(await client.get("/metrics")).status_code for _ in range(4)]
        reads = [(await client.get("/widgets")).status_code for _ in range(3)]

    assert scrapes == [200, 200, 200, 200]
    assert reads[-1] == 429


@pytest.fixture
async def app_and_client(app: object) -> object:
    async with serve(app) as client:  # type: ignore[arg-type]
        yield app, client
