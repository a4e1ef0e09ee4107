"""The OpenAPI document teaches: every operation described, bodies with examples, every error a documented problem
type whose `type` URI answers with its explanation."""

from __future__ import annotations

from typing import Any

import httpx

from widgetry.api.docs import PROBLEM_TYPES
from widgetry.api.limits import STREAMS_SLUG
from widgetry.api.problems import SLUGS
from widgetry.domain.problems import PROBLEM_BASE, Problem


def subclasses(kind: type) -> list[type]:
    return [kind, *[sub for direct in kind.__subclasses__() for sub in subclasses(direct)]]


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    return response.json()


async def test_every_operation_is_described_and_every_body_has_an_example(client: httpx.AsyncClient) -> None:
    document = await openapi(client)
    operations = [
        (f"{method.upper()} {path}", op) for path, ops in document["paths"].items() for method, op in ops.items()
    ]

    assert {"POST /widgets", "PATCH /widgets/{sku}", "POST /widgets/imports", "GET /events"} <= dict(operations).keys()
    for name, operation in operations:
        assert operation.get("description"), f"{name} has no description"
        for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
            example = content.get("examples") or content["schema"].get("examples")
            assert example, f"{name} {media_type} body has no example"
    imports = dict(operations)["POST /widgets/imports"]
    assert set(imports["requestBody"]["content"]) == {"application/json", "text/csv"}
    assert imports["responses"]["202"]["content"]["application/json"]["examples"]


async def test_every_error_response_is_a_documented_problem_with_an_example(client: httpx.AsyncClient) -> None:
    document = await openapi(client)

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                content = response["content"]
                assert list(content) == ["application/problem+json"], f"{method} {path} {status}"
                assert content["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/ProblemDocument"}
                for example in content["application/problem+json"]["examples"].values():
                    assert example["value"]["type"].removeprefix(PROBLEM_BASE) in PROBLEM_TYPES
                    assert example["value"]["status"] == int(status)


async def test_every_reference_in_the_document_resolves(client: httpx.AsyncClient) -> None:
    document = await openapi(client)

    for ref in refs(document):
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in document["components"]["schemas"], ref


async def test_every_problem_type_the_service_answers_with_is_explained_at_its_type_uri(
    client: httpx.AsyncClient,
) -> None:
    emitted = {*SLUGS.values(), *(kind.slug for kind in subclasses(Problem)), STREAMS_SLUG, "command-not-found"}

    assert emitted <= PROBLEM_TYPES.keys()
    listed = (await client.get("/problems")).json()
    assert {kind["type"] for kind in listed} == {PROBLEM_BASE + slug for slug in PROBLEM_TYPES}
    explained = await client.get("/problems/widget-exists")
    assert explained.status_code == 200
    assert explained.json()["status"] == 409
    assert "already" in explained.json()["description"] or "found a widget" in explained.json()["description"]
    unknown = await client.get("/problems/no-such-thing")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")
