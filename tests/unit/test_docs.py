"""The docs teach what the service does: the OpenAPI document describes every operation, with examples, and every
error is a documented problem type whose `type` URI explains it; docs/api.md names every route, event type, problem
type and command status the app has, and nothing it lacks; docs/operations.md names every setting; the docs' links
lead somewhere inside the repository."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from litestar import Litestar

from tests.support import ROOT
from widgetry.api.docs import PROBLEM_TYPES
from widgetry.api.limits import STREAMS_SLUG
from widgetry.api.problems import SLUGS
from widgetry.domain.commands import CommandStatus
from widgetry.domain.events import STREAM_RESET, EventType
from widgetry.domain.problems import PROBLEM_BASE, Problem
from widgetry.settings import Settings

DOCS = ROOT / "docs"
API_DOC = (DOCS / "api.md").read_text()
AUTOMATIC_METHODS = {"OPTIONS", "HEAD"}
"""Litestar answers OPTIONS on every path and HEAD on static files by itself: nothing of the service's own."""
DOCS_UI_INTERNALS = {"/schema/{path}", "/schema/oauth2-redirect.html"}
"""Litestar's OpenAPI plugin's catch-all for its renderers and Swagger UI's OAuth helper page: parts of the docs
page, which api.md names as `/schema`, not routes a client calls."""
NAMED_ROUTE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s?]*)")
PATH_PARAMETER_TYPE = re.compile(r"\{(\w+):\w+\}")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


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


def app_routes(app: Litestar) -> set[str]:
    """Every `METHOD /path` the app serves, path parameters without their types (`{sku}`)."""
    paths = {route: PATH_PARAMETER_TYPE.sub(r"{\1}", route.path) for route in app.routes}
    return {
        f"{method} {path}"
        for route, path in paths.items()
        for method in getattr(route, "methods", ())
        if method not in AUTOMATIC_METHODS and path not in DOCS_UI_INTERNALS
    }


def test_api_doc_names_every_route_of_the_app_and_no_other(app: Litestar) -> None:
    served = app_routes(app)
    named = {f"{method} {path}" for method, path in NAMED_ROUTE.findall(API_DOC)}

    assert {"POST /widgets", "GET /events", "GET /ready", "GET /ui/events", "GET /saq/api/queues"} <= served
    assert sorted(served - named) == [], "routes the app serves that docs/api.md does not name"
    assert sorted(named - served) == [], "routes docs/api.md names that the app does not serve"


def test_api_doc_names_every_event_type_problem_type_and_command_status() -> None:
    event_types = {kind.value for kind in EventType} | {STREAM_RESET}
    named_problems = set(re.findall(r"/problems/([a-z][a-z-]*)", API_DOC))

    assert sorted(kind for kind in event_types if f"`{kind}`" not in API_DOC) == []
    assert sorted(set(PROBLEM_TYPES) - named_problems) == []
    assert sorted(named_problems - set(PROBLEM_TYPES)) == [], "problem types docs/api.md names that do not exist"
    assert sorted(status.value for status in CommandStatus if f"`{status.value}`" not in API_DOC) == []


class ReadNames(dict[str, str]):
    """An empty environment that notes which variables are looked up in it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def get(self, name: str, default: Any = None) -> Any:
        self.names.append(name)
        return default


def test_operations_doc_names_every_setting() -> None:
    environment = ReadNames()
    Settings.from_env(environment)
    operations = (DOCS / "operations.md").read_text()

    assert "WIDGETRY_API_KEYS" in environment.names
    assert sorted(name for name in environment.names if f"`{name}`" not in operations) == []


def anchors(page: Path) -> set[str]:
    """The fragment ids GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_in_the_readme_and_docs_leads_to_a_file_and_heading() -> None:
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *DOCS.glob("*.md")]
    broken = []
    for page in pages:
        for target in MARKDOWN_LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (fragment and fragment not in anchors(linked)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")

    assert len(pages) > 5
    assert broken == []


def test_the_readme_links_every_docs_page() -> None:
    linked = {target.partition("#")[0] for target in MARKDOWN_LINK.findall((ROOT / "README.md").read_text())}

    assert sorted(f"docs/{page.name}" for page in DOCS.glob("*.md") if f"docs/{page.name}" not in linked) == []


def test_no_page_or_module_cites_a_document_outside_the_repository() -> None:
    files = [ROOT / "README.md", *DOCS.rglob("*.md"), *(ROOT / "src").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]
    citing = [str(path.relative_to(ROOT)) for path in files if re.search(r"\b(API|DESIGN)\.md\b", path.read_text())]

    assert citing == []
