"""Input that is invalid on its face is refused at once with a problem, and nothing is recorded or queued."""

from __future__ import annotations

import json

import httpx
import pytest
from litestar import Litestar

from tests.support import API_KEY, AUTH
from tests.unit.state import CommandRecord, count, queued_jobs
from widgetry.api.problems import from_recursion

GOOD = {"sku": "W-1", "name": "Widget", "price_cents": 100}

BAD_CREATES = {
    "price as a string": ({**GOOD, "price_cents": "100"}, 422, "price_cents"),
    "price as a float": ({**GOOD, "price_cents": 1.5}, 422, "price_cents"),
    "missing price": ({"sku": "W-1", "name": "Widget"}, 422, "body"),
    "missing sku": ({"name": "Widget", "price_cents": 1}, 422, "body"),
    "negative price": ({**GOOD, "price_cents": -1}, 422, "price_cents"),
    "price above 10^12": ({**GOOD, "price_cents": 10**12 + 1}, 422, "price_cents"),
    "sku starting with a dash": ({**GOOD, "sku": "-W"}, 422, "sku"),
    "sku with a space": ({**GOOD, "sku": "W 1"}, 422, "sku"),
    "sku with a trailing newline": ({**GOOD, "sku": "W-1\n"}, 422, "sku"),
    "sku of 65 characters": ({**GOOD, "sku": "W" * 65}, 422, "sku"),
    "blank name": ({**GOOD, "name": "   "}, 422, "name"),
    "name of 201 characters": ({**GOOD, "name": "n" * 201}, 422, "name"),
    "notes of 10,001 characters": ({**GOOD, "internal_notes": "x" * 10_001}, 422, "internal_notes"),
    "unknown field": ({**GOOD, "colour": "red"}, 422, "body"),
    "client-set version": ({**GOOD, "version": 5}, 422, "body"),
    "array body": ([GOOD], 422, "body"),
}


def assert_problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert {"type", "title", "status", "detail"} <= problem.keys()
    assert problem["status"] == status
    return problem


async def assert_nothing_happened(app: Litestar) -> None:
    assert await count(app, CommandRecord) == 0
    assert await queued_jobs(app) == 0


@pytest.mark.parametrize(("body", "status", "param"), BAD_CREATES.values(), ids=BAD_CREATES.keys())
async def test_invalid_create_is_refused_with_invalid_params(
    client: httpx.AsyncClient, app: Litestar, body: object, status: int, param: str
) -> None:
    response = await client.post("/widgets", json=body, headers=AUTH)

    problem = assert_problem(response, status)
    assert problem["type"].endswith("/invalid")
    assert [p["name"] for p in problem["invalid_params"]] == [param]
    assert all(p["reason"] for p in problem["invalid_params"])
    await assert_nothing_happened(app)


async def test_a_body_that_is_not_json_is_400(client: httpx.AsyncClient, app: Litestar) -> None:
    response = await client.post("/widgets", content=b"sku=W-1", headers=AUTH | {"Content-Type": "application/json"})

    assert_problem(response, 400)
    await assert_nothing_happened(app)


BAD_PATCHES = {
    "empty object": ({}, "body"),
    "unknown field": ({"colour": "red"}, "body"),
    "sku in the body": ({"sku": "OTHER"}, "body"),
    "null name": ({"name": None}, "name"),
    "blank name": ({"name": " "}, "name"),
    "negative price": ({"price_cents": -5}, "price_cents"),
    "long notes": ({"internal_notes": "x" * 10_001}, "internal_notes"),
}


@pytest.mark.parametrize(("body", "param"), BAD_PATCHES.values(), ids=BAD_PATCHES.keys())
async def test_invalid_patch_is_refused(client: httpx.AsyncClient, app: Litestar, body: object, param: str) -> None:
    response = await client.patch("/widgets/W-1", json=body, headers=AUTH)

    problem = assert_problem(response, 422)
    assert [p["name"] for p in problem["invalid_params"]] == [param]
    await assert_nothing_happened(app)


@pytest.mark.parametrize("if_match", ["abc", '"v1"', '"-1"', ""])
async def test_a_malformed_if_match_is_400(client: httpx.AsyncClient, app: Litestar, if_match: str) -> None:
    response = await client.delete("/widgets/W-1", headers=AUTH | {"If-Match": if_match})

    assert_problem(response, 400)
    await assert_nothing_happened(app)


@pytest.mark.parametrize("path", ["/widgets/-bad", "/widgets/" + "x" * 65])
async def test_a_bad_sku_in_the_path_is_refused(client: httpx.AsyncClient, app: Litestar, path: str) -> None:
    assert_problem(await client.patch(path, json={"name": "x"}, headers=AUTH), 422)
    assert_problem(await client.delete(path, headers=AUTH), 422)
    await assert_nothing_happened(app)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {API_KEY}"},
        {"X-API-Key": ""},
    ],
    ids=["missing", "wrong x-api-key", "wrong bearer", "not bearer", "empty"],
)
async def test_writes_without_a_valid_key_are_401(
    client: httpx.AsyncClient, app: Litestar, headers: dict[str, str]
) -> None:
    for response in (
        await client.post("/widgets", json=GOOD, headers=headers),
        await client.patch("/widgets/W-1", json={"name": "x"}, headers=headers),
        await client.delete("/widgets/W-1", headers=headers),
    ):
        problem = assert_problem(response, 401)
        assert problem["type"].endswith("/unauthorized")
    await assert_nothing_happened(app)


async def test_bearer_key_is_accepted_like_x_api_key(client: httpx.AsyncClient, app: Litestar) -> None:
    response = await client.post("/widgets", json=GOOD, headers={"Authorization": f"Bearer {API_KEY}"})

    assert response.status_code == 202
    assert await count(app, CommandRecord) == 1


async def test_a_body_over_one_mebibyte_is_413(client: httpx.AsyncClient, app: Litestar) -> None:
    body = json.dumps({**GOOD, "internal_notes": "x" * (1024 * 1024)})

    response = await client.post("/widgets", content=body, headers=AUTH | {"Content-Type": "application/json"})

    assert_problem(response, 413)
    await assert_nothing_happened(app)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/widgets?limit=0", 422),
        ("/widgets?limit=501", 422),
        ("/widgets?offset=-1", 422),
        ("/widgets?order_by=internal_notes", 422),
        ("/widgets?sort=sideways", 422),
        ("/events?types=widget.exploded", 422),
        ("/commands/not-a-uuid", 404),
        ("/nowhere", 404),
    ],
)
async def test_bad_reads_are_problems_too(client: httpx.AsyncClient, path: str, status: int) -> None:
    assert_problem(await client.get(path), status)


async def test_an_unsupported_method_is_405_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.put("/widgets", json=GOOD, headers=AUTH), 405)


@pytest.mark.parametrize("field", ["name", "internal_notes"])
async def test_a_nul_character_is_refused(client: httpx.AsyncClient, app: Litestar, field: str) -> None:
    response = await client.post("/widgets", json={**GOOD, field: "a\x00b"}, headers=AUTH)

    problem = assert_problem(response, 422)
    assert [p["name"] for p in problem["invalid_params"]] == [field]
    await assert_nothing_happened(app)


async def test_a_search_with_a_nul_character_is_422(client: httpx.AsyncClient) -> None:
    problem = assert_problem(await client.get("/widgets", params={"search": "a\x00b"}), 422)

    assert [p["name"] for p in problem["invalid_params"]] == ["search"]


async def test_an_idempotency_key_with_a_nul_character_is_refused(client: httpx.AsyncClient, app: Litestar) -> None:
    response = await client.post("/widgets", json=GOOD, headers=AUTH | {"Idempotency-Key": "key\x00"})

    problem = assert_problem(response, 422)
    assert problem["type"].endswith("/invalid")
    await assert_nothing_happened(app)


@pytest.mark.parametrize("if_match", ['"²"', '"¹"', "³", '"1²"'])
async def test_an_if_match_of_digits_other_than_0_to_9_is_400(
    client: httpx.AsyncClient, app: Litestar, if_match: str
) -> None:
    # Header values are Latin-1 on the wire, where "²" is one byte that Python's `isdigit` takes for a digit.
    response = await client.delete("/widgets/W-1", headers=AUTH | {"If-Match": if_match.encode("latin-1")})

    assert_problem(response, 400)
    await assert_nothing_happened(app)


async def test_the_schema_says_which_write_bodies_are_refused(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/schema/openapi.json")).json()

    def body(method: str, path: str) -> dict:  # type: ignore[type-arg]
        described = schema["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        # With examples, the body's schema is the component wrapped in `allOf`, the examples beside it.
        reference = described["allOf"][0]["$ref"] if "allOf" in described else described["$ref"]
        return schema["components"]["schemas"][reference.rsplit("/", 1)[1]]

    create, patch = body("post", "/widgets"), body("patch", "/widgets/{sku}")
    assert create["additionalProperties"] is False
    assert patch["additionalProperties"] is False
    assert patch["minProperties"] == 1
    assert patch["properties"]["price_cents"]["minimum"] == 0


DEEP_LEVELS = 100_000
"""Far deeper than any JSON decoder here recurses (about 1,000 levels)."""
DEEP_ARRAY = b"[" * DEEP_LEVELS + b"]" * DEEP_LEVELS
DEEP_OBJECT = b'{"a": ' * DEEP_LEVELS + b"1" + b"}" * DEEP_LEVELS
DEEP_BODIES = {
    "deep array": DEEP_ARRAY,
    "deep object": DEEP_OBJECT,
    "deep array in a field": b'{"sku": "W-1", "name": ' + DEEP_ARRAY + b', "price_cents": 1}',
    "deep object in an unknown field": b'{"colour": ' + DEEP_OBJECT + b"}",
    "deep array as an import's widgets": b'{"widgets": ' + DEEP_ARRAY + b"}",
    "deep array as an import's row": b'{"widgets": [' + DEEP_ARRAY + b"]}",
    "deep object as an import's row": b'{"widgets": [' + DEEP_OBJECT + b"]}",
}
JSON_WRITES = [("POST", "/widgets"), ("PATCH", "/widgets/W-1"), ("POST", "/widgets/imports")]


@pytest.mark.parametrize(("method", "path"), JSON_WRITES, ids=[f"{method} {path}" for method, path in JSON_WRITES])
@pytest.mark.parametrize("body", DEEP_BODIES.values(), ids=DEEP_BODIES.keys())
async def test_a_deeply_nested_json_body_is_a_4xx_problem_on_every_json_route(
    client: httpx.AsyncClient, app: Litestar, method: str, path: str, body: bytes
) -> None:
    response = await client.request(method, path, content=body, headers=AUTH | {"Content-Type": "application/json"})

    assert response.status_code in (400, 422), response.text
    assert_problem(response, response.status_code)
    await assert_nothing_happened(app)


def test_a_recursion_error_not_raised_by_a_decoder_stays_a_fault_of_the_service() -> None:
    assert from_recursion(RecursionError("maximum recursion depth exceeded")).status_code == 500
    assert (
        from_recursion(RecursionError("maximum recursion depth exceeded while deserializing an object")).status_code
        == 400
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/widgets", b'{"sku": "W-1", "name": "Wid\xffget", "price_cents": 1}'),
        ("PATCH", "/widgets/W-1", b'{"name": "\xc3"}'),
        ("POST", "/widgets/imports", b'{"widgets": [{"sku": "W-1", "name": "\xed\xa0\x80", "price_cents": 1}]}'),
    ],
)
async def test_a_json_body_that_is_not_utf_8_is_400(
    client: httpx.AsyncClient, app: Litestar, method: str, path: str, body: bytes
) -> None:
    response = await client.request(method, path, content=body, headers=AUTH | {"Content-Type": "application/json"})

    problem = assert_problem(response, 400)
    assert problem["type"].endswith("/bad-request")
    await assert_nothing_happened(app)


MEDIA_TYPE_MISMATCHES = {
    "create as text/plain": ("POST", "/widgets", GOOD, "text/plain"),
    "create without a content type": ("POST", "/widgets", GOOD, None),
    "create as a form": ("POST", "/widgets", GOOD, "application/x-www-form-urlencoded"),
    "update as text/plain": ("PATCH", "/widgets/W-1", {"name": "x"}, "text/plain"),
    "update as a merge patch": ("PATCH", "/widgets/W-1", {"name": "x"}, "application/merge-patch+json"),
    "import as text/plain": ("POST", "/widgets/imports", {"widgets": [GOOD]}, "text/plain"),
    "import without a content type": ("POST", "/widgets/imports", {"widgets": [GOOD]}, None),
}


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type"), MEDIA_TYPE_MISMATCHES.values(), ids=MEDIA_TYPE_MISMATCHES.keys()
)
async def test_a_body_sent_as_a_media_type_its_route_does_not_take_is_415(
    client: httpx.AsyncClient, app: Litestar, method: str, path: str, body: object, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    content = json.dumps(body).encode()

    response = await client.request(method, path, content=content, headers=AUTH | headers)
    keyless = await client.request(method, path, content=content, headers=headers)

    problem = assert_problem(response, 415)
    assert problem["type"].endswith("/unsupported-media-type")
    assert "application/json" in response.headers["accept"]
    if method == "PATCH":
        assert response.headers["accept-patch"] == "application/json"
    assert_problem(keyless, 401)
    await assert_nothing_happened(app)


async def test_a_json_content_type_with_parameters_is_taken(client: httpx.AsyncClient, app: Litestar) -> None:
    response = await client.post(
        "/widgets", content=json.dumps(GOOD), headers=AUTH | {"Content-Type": "Application/JSON; charset=utf-8"}
    )

    assert response.status_code == 202, response.text
    assert await count(app, CommandRecord) == 1
