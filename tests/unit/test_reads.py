"""Reads: pages, search and order through Advanced Alchemy filters; one widget with its version as ETag."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import API_KEY, AUTH, WAIT, serve
from widgetry.app import create_app
from widgetry.settings import Settings

WIDGETS = [("B-2", "Bolt", 30), ("A-1", "Anchor", 20), ("C-3", "Cog wheel", 10), ("D-4", "big COG", 40)]


async def seed(client: httpx.AsyncClient) -> None:
    for sku, name, price in WIDGETS:
        body = {"sku": sku, "name": name, "price_cents": price, "internal_notes": "private"}
        assert (await client.post("/widgets", json=body, headers=AUTH | WAIT)).status_code == 200


async def test_list_defaults_to_sku_order_with_paging_fields(client: httpx.AsyncClient) -> None:
    await seed(client)

    page = (await client.get("/widgets")).json()

    assert (page["total"], page["limit"], page["offset"]) == (4, 50, 0)
    assert [w["sku"] for w in page["items"]] == ["A-1", "B-2", "C-3", "D-4"]
    assert all(set(w) == {"sku", "name", "price_cents", "version", "created_at", "updated_at"} for w in page["items"])


async def test_limit_and_offset_page_through(client: httpx.AsyncClient) -> None:
    await seed(client)

    page = (await client.get("/widgets", params={"limit": 2, "offset": 1})).json()

    assert (page["total"], page["limit"], page["offset"]) == (4, 2, 1)
    assert [w["sku"] for w in page["items"]] == ["B-2", "C-3"]


async def test_search_matches_sku_or_name_ignoring_case(client: httpx.AsyncClient) -> None:
    await seed(client)

    by_name = (await client.get("/widgets", params={"search": "cog"})).json()
    by_sku = (await client.get("/widgets", params={"search": "a-1"})).json()
    wildcard = (await client.get("/widgets", params={"search": "%"})).json()

    assert [w["sku"] for w in by_name["items"]] == ["C-3", "D-4"]
    assert by_name["total"] == 2
    assert [w["sku"] for w in by_sku["items"]] == ["A-1"]
    assert wildcard["total"] == 0


async def test_order_by_and_sort(client: httpx.AsyncClient) -> None:
    await seed(client)

    page = (await client.get("/widgets", params={"order_by": "price_cents", "sort": "desc"})).json()

    assert [w["price_cents"] for w in page["items"]] == [40, 30, 20, 10]


async def test_get_one_has_the_version_as_etag_and_hides_private_fields(client: httpx.AsyncClient) -> None:
    await seed(client)
    await client.patch("/widgets/A-1", json={"name": "Anchor II"}, headers=AUTH | WAIT)

    response = await client.get("/widgets/A-1")

    assert response.status_code == 200
    assert response.headers["etag"] == '"2"'
    widget = response.json()
    assert (widget["name"], widget["version"]) == ("Anchor II", 2)
    assert "internal_notes" not in widget
    assert "id" not in widget


async def test_get_missing_is_widget_not_found_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/widgets/NOPE")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"].endswith("/widget-not-found")


async def test_health_ready_and_schema_are_public(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ready")).json().items() >= {"database": "ok", "redis": "ok", "events": "ok"}.items()
    schema = (await client.get("/schema/openapi.json")).json()
    assert {"/widgets", "/widgets/{sku}", "/commands/{command_id}", "/events"} <= set(schema["paths"])


async def test_a_setting_puts_reads_and_events_behind_keys_but_not_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with serve(create_app(Settings(api_keys=(API_KEY,), protect_reads=True))) as client:
        refused = [(await client.get(path)).status_code for path in ("/widgets", "/widgets/A-1", "/events")]
        allowed = (await client.get("/widgets", headers=AUTH)).status_code
        public = [(await client.get(path)).status_code for path in ("/health", "/ready", "/schema/openapi.json")]

    assert refused == [401, 401, 401]
    assert allowed == 200
    assert public == [200, 200, 200]
