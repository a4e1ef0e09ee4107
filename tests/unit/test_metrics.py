"""`/metrics`: Litestar's HTTP metrics and the service's own, with exact values after a scripted run."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar import Litestar
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ADMIN, API_KEY, AUTH, WAIT, serve
from tests.unit.test_bad_input import assert_problem
from widgetry.app import create_app
from widgetry.observability.metrics import Exposition
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


async def test_metrics_answer_when_the_database_is_gone(app_and_client: tuple[Litestar, httpx.AsyncClient]) -> None:
    app, client = app_and_client
    database = Path("widgetry.db")
    # A directory where the file was: every new connection fails. The app's background tasks keep connecting, and
    # one may create the file again between the two calls; the pool is emptied once the directory stands.
    while not database.is_dir():
        database.unlink(missing_ok=True)
        with contextlib.suppress(FileExistsError):
            database.mkdir()
    await app.state.connections.alchemy.get_engine().dispose()

    response = await client.get("/metrics")

    assert response.status_code == 200
    found = samples(response.text)
    assert found[("widgetry_scrape_source_up", (("source", "database"),))] == 0
    assert found[("widgetry_scrape_source_up", (("source", "redis"),))] == 1
    assert ("widgetry_relay_backlog_events", ()) not in found


async def test_anonymous_scrapes_count_against_the_address_and_keyed_ones_against_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = create_app(Settings(api_keys=(API_KEY,), rate_limit_reads="2/minute"))
    async with serve(app) as client:
        anonymous = [await client.get("/metrics") for _ in range(3)]
        keyed = [(await client.get("/metrics", headers=AUTH)).status_code for _ in range(2)]

    assert [response.status_code for response in anonymous[:2]] == [200, 200]
    assert_problem(anonymous[2], 429)
    assert keyed == [200, 200]


PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;"
    "version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, "text/plain; version=0.0.4; charset=utf-8"),
        ("text/plain", "text/plain; version=0.0.4; charset=utf-8"),
        ("text/plain;q=1e999, application/openmetrics-text;q=nan", "text/plain; version=0.0.4; charset=utf-8"),
        (PROMETHEUS_3_ACCEPT, "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    ],
)
async def test_metrics_are_served_in_exactly_one_prometheus_media_type(
    client: httpx.AsyncClient, accept: str | None, content_type: str
) -> None:
    await client.get("/widgets")  # so that Litestar's HTTP metrics have a series
    response = await client.get("/metrics", headers={"Accept": accept} if accept else {})

    assert response.status_code == 200
    assert response.headers.get_list("content-type") == [content_type]
    parse = (
        openmetrics_families
        if content_type.startswith("application/openmetrics-text")
        else text_string_to_metric_families
    )
    families = {family.name for family in parse(response.text)}
    assert {"widgetry_commands_unfinished", "widgetry_http_requests"} <= families


async def test_scrapes_share_one_rendering_until_it_is_older_than_its_max_age(
    app_and_client: tuple[Litestar, httpx.AsyncClient],
) -> None:
    app, client = app_and_client
    app.state.exposition = Exposition(max_age=60)

    def accepted(response: httpx.Response) -> float:
        return samples(response.text).get(("widgetry_commands_accepted_total", (("type", "create_widget"),)), 0)

    first = await client.get("/metrics")
    created = await client.post("/widgets", json={"sku": "C-1", "name": "c", "price_cents": 1}, headers=AUTH | WAIT)
    second = await client.get("/metrics")
    app.state.exposition.max_age = 0
    third = await client.get("/metrics")

    assert created.status_code == 200
    assert second.content == first.content
    assert accepted(second) == 0
    assert accepted(third) == 1


@pytest.mark.parametrize(
    "settings",
    [{"protect_reads": True}, {"metrics_token": "scrape-token"}, {"protect_reads": True, "metrics_token": "t"}],
    ids=["protected reads", "metrics token", "both"],
)
async def test_protected_metrics_need_an_admin_key_or_the_metrics_token(
    embedded_settings: Settings, settings: dict[str, object]
) -> None:
    app = create_app(msgspec.structs.replace(embedded_settings, **settings))
    token = settings.get("metrics_token")
    async with serve(app) as client:
        anonymous = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer wrong-token"})
        writer = await client.get("/metrics", headers=AUTH)
        admin = await client.get("/metrics", headers=ADMIN)
        by_token = [
            (await client.get("/metrics", headers=headers)).status_code
            for headers in ({"X-API-Key": str(token)}, {"Authorization": f"Bearer {token}"})
            if token
        ]
        write_by_token = await client.post(
            "/widgets", json={"sku": "T-1", "name": "t", "price_cents": 1}, headers={"X-API-Key": str(token)}
        )

    assert_problem(anonymous, 401)
    assert_problem(wrong, 401)
    assert_problem(writer, 403)
    assert admin.status_code == 200
    assert by_token == ([200, 200] if token else [])
    assert_problem(write_by_token, 401)


async def test_metrics_stay_public_unless_protected(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 200


@pytest.fixture
async def app_and_client(app: Litestar) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    async with serve(app) as client:
        yield app, client
