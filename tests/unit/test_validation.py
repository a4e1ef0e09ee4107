"""A body that breaks several rules is refused once, with every field at fault and why."""

from __future__ import annotations

import httpx
from litestar import Litestar

from tests.support import AUTH
from tests.unit.state import CommandRecord, count


def invalid_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return {param["name"]: param["reason"] for param in response.json()["invalid_params"]}


async def test_a_create_breaking_three_rules_is_refused_with_all_three(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    response = await client.post("/widgets", json={"sku": "-bad", "name": "", "price_cents": "12"}, headers=AUTH)

    reasons = invalid_params(response)
    assert list(reasons) == ["sku", "name", "price_cents"]
    assert reasons["sku"].startswith("must be 1 to 64 letters")
    assert reasons["name"].startswith("must be 1 to 200 characters")
    assert reasons["price_cents"] == "Expected `int`, got `str`"
    assert await count(app, CommandRecord) == 0


async def test_missing_and_unknown_fields_are_the_body_s_faults_beside_the_fields(client: httpx.AsyncClient) -> None:
    response = await client.post("/widgets", json={"name": "ok", "price_cents": -1, "colour": "red"}, headers=AUTH)

    assert response.status_code == 422
    assert response.json()["invalid_params"] == [
        {"name": "body", "reason": "Object missing required field `sku`"},
        {"name": "body", "reason": "Object contains unknown field `colour`"},
        {"name": "price_cents", "reason": "Expected `int` >= 0"},
    ]


async def test_a_patch_breaking_two_rules_is_refused_with_both(client: httpx.AsyncClient) -> None:
    response = await client.patch("/widgets/W-1", json={"price_cents": 10**13, "name": None}, headers=AUTH)

    assert list(invalid_params(response)) == ["price_cents", "name"]


async def test_one_fault_is_one_param(client: httpx.AsyncClient) -> None:
    response = await client.post("/widgets", json={"sku": "W-1", "name": "ok", "price_cents": 1.5}, headers=AUTH)

    assert invalid_params(response) == {"price_cents": "Expected `int`, got `float`"}
