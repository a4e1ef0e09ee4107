"""Reads: pages, search and order through Advanced Alchemy filters; one widget with its version as ETag, answered
`304 Not Modified` while the client's copy is current; `Cache-Control` that makes caches ask every time."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import ADMIN, API_KEY, AUTH, WAIT, serve
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


@pytest.mark.parametrize(("path", "headers"), [("/widgets/A-1", {}), ("/admin/widgets/A-1", ADMIN)])
async def test_if_none_match_with_the_current_etag_is_304_without_a_body_until_an_update(
    client: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> None:
    await seed(client)
    first = await client.get(path, headers=headers)
    unchanged = await client.get(path, headers=headers | {"If-None-Match": first.headers["etag"]})
    await client.patch("/widgets/A-1", json={"price_cents": 25}, headers=AUTH | WAIT)
    stale = await client.get(path, headers=headers | {"If-None-Match": first.headers["etag"]})
    current = await client.get(path, headers=headers | {"If-None-Match": stale.headers["etag"]})

    assert (first.status_code, first.headers["etag"]) == (200, '"1"')
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == '"1"'
    assert unchanged.headers["cache-control"] == first.headers["cache-control"]
    assert (stale.status_code, stale.headers["etag"], stale.json()["price_cents"]) == (200, '"2"', 25)
    assert (current.status_code, current.content) == (304, b"")


@pytest.mark.parametrize(
    ("if_none_match", "status"),
    [('W/"1"', 304), ('"7", "1"', 304), ("*", 304), ('"2"', 200), ("1", 200), ("not an etag", 200), ("", 200)],
)
async def test_if_none_match_is_compared_weakly_and_takes_a_list_or_a_star(
    client: httpx.AsyncClient, if_none_match: str, status: int
) -> None:
    await seed(client)

    response = await client.get("/widgets/A-1", headers={"If-None-Match": if_none_match})

    assert response.status_code == status
    assert response.headers["etag"] == '"1"'


async def test_a_missing_widget_is_404_whatever_the_if_none_match(client: httpx.AsyncClient) -> None:
    response = await client.get("/widgets/NOPE", headers={"If-None-Match": "*"})

    assert response.status_code == 404
    assert response.json()["type"].endswith("/widget-not-found")


async def test_widget_reads_must_be_revalidated_and_admin_reads_stay_private(client: httpx.AsyncClient) -> None:
    await seed(client)

    public = [await client.get(path) for path in ("/widgets", "/widgets/A-1")]
    admin = [await client.get(path, headers=ADMIN) for path in ("/admin/widgets", "/admin/widgets/A-1")]

    assert [response.headers["cache-control"] for response in public] == ["no-cache", "no-cache"]
    assert [response.headers["cache-control"] for response in admin] == ["no-cache, private"] * 2


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
        allowed = await client.get("/widgets", headers=AUTH)
        public = [(await client.get(path)).status_code for path in ("/health", "/ready", "/schema/openapi.json")]

    assert refused == [401, 401, 401]
    assert allowed.status_code == 200
    # Read with a key, so no shared cache may hand it to a client without one.
    assert allowed.headers["cache-control"] == "no-cache, private"
    assert public == [200, 200, 200]
