"""Scoped keys: `write` sends commands; `admin` also reads widgets' internal fields (`/admin/widgets`) and opens the
operator routes (`/saq`, and `/metrics` when reads are protected). A key without the scope is 403 `forbidden`, no key
401. Whatever the key, the public reads, the event stream and the logs never carry `internal_notes`."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from litestar import Litestar

from tests.support import ADMIN, ADMIN_KEY, API_KEY, AUTH, WAIT, Server, serve
from tests.unit.test_bad_input import assert_problem
from tests.unit.test_keys import issue
from widgetry.api.security import ApiKeys
from widgetry.app import create_app
from widgetry.domain.models import Scope
from widgetry.settings import Settings

SPROCKET = {"sku": "S-1", "name": "Sprocket", "price_cents": 1999, "internal_notes": "supplier: Acme"}
PUBLIC_FIELDS = {"sku", "name", "price_cents", "version", "created_at", "updated_at"}


def assert_forbidden(response: httpx.Response) -> None:
    problem = assert_problem(response, 403)
    assert problem["type"].endswith("/problems/forbidden")
    assert "'admin' scope" in problem["detail"]


async def test_a_write_key_creates_but_is_forbidden_on_the_admin_reads_and_the_queue_ui(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post("/widgets", json=SPROCKET, headers=AUTH | WAIT)
    refused = [
        await client.get(path, headers=AUTH) for path in ("/admin/widgets/S-1", "/admin/widgets", "/saq/api/queues")
    ]
    anonymous = [await client.get(path) for path in ("/admin/widgets/S-1", "/admin/widgets")]
    unknown = await client.get("/admin/widgets/S-1", headers={"X-API-Key": "made-up"})
    page = await client.get("/problems/forbidden")

    assert created.status_code == 200, created.text
    for response in refused:
        assert_forbidden(response)
    for response in [*anonymous, unknown]:
        assert assert_problem(response, 401)["type"].endswith("/problems/unauthorized")
    assert page.json()["status"] == 403


async def test_an_admin_key_reads_internal_notes_on_the_admin_routes_and_not_on_the_public_ones(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post("/widgets", json=SPROCKET, headers=ADMIN | WAIT)
    await client.post("/widgets", json={"sku": "G-7", "name": "Gear", "price_cents": 450}, headers=AUTH | WAIT)
    one = await client.get("/admin/widgets/S-1", headers=ADMIN)
    bearer = await client.get("/admin/widgets/S-1", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    page = await client.get("/admin/widgets", params={"search": "sprock"}, headers=ADMIN)
    public = await client.get("/widgets/S-1", headers=ADMIN)
    public_page = await client.get("/widgets", headers=ADMIN)
    missing = await client.get("/admin/widgets/NOPE", headers=ADMIN)

    assert created.status_code == 200, created.text  # an admin key writes too
    assert one.status_code == 200, one.text
    assert one.json().items() >= {"sku": "S-1", "internal_notes": "supplier: Acme", "version": 1}.items()
    assert set(one.json()) == PUBLIC_FIELDS | {"internal_notes"}
    assert one.headers["etag"] == '"1"'
    assert bearer.json() == one.json()
    assert (page.json()["total"], [item["internal_notes"] for item in page.json()["items"]]) == (1, ["supplier: Acme"])
    assert set(public.json()) == PUBLIC_FIELDS
    assert all(set(item) == PUBLIC_FIELDS for item in public_page.json()["items"])
    assert assert_problem(missing, 404)["type"].endswith("/problems/widget-not-found")


async def test_stored_keys_have_the_scopes_they_were_made_with(client: httpx.AsyncClient, app: Litestar) -> None:
    operator = await issue(app, "operator", frozenset({Scope.ADMIN}))
    writer = await issue(app, "writer", frozenset({Scope.WRITE}))

    operator_writes = await client.post("/widgets", json=SPROCKET, headers={"X-API-Key": operator})
    writer_writes = await client.post("/widgets", json=SPROCKET, headers={"X-API-Key": writer} | WAIT)
    operator_reads = await client.get("/admin/widgets/S-1", headers={"X-API-Key": operator})
    writer_reads = await client.get("/admin/widgets/S-1", headers={"X-API-Key": writer})

    problem = assert_problem(operator_writes, 403)
    assert problem["type"].endswith("/problems/forbidden") and "'write' scope" in problem["detail"]
    assert writer_writes.status_code == 200, writer_writes.text
    assert operator_reads.json()["internal_notes"] == "supplier: Acme"
    assert_forbidden(writer_reads)


async def test_the_development_key_has_both_scopes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    dev = {"X-API-Key": settings.effective_api_keys[0]}
    async with serve(create_app(settings)) as client:
        created = await client.post("/widgets", json=SPROCKET, headers=dev | WAIT)
        admin = await client.get("/admin/widgets/S-1", headers=dev)
        queues = await client.get("/saq/api/queues", headers=dev)

    assert settings.dev_key_generated
    assert created.status_code == 200, created.text
    assert admin.json()["internal_notes"] == "supplier: Acme"
    assert queues.status_code == 200


async def test_configured_keys_have_the_scopes_of_their_variable() -> None:
    settings = Settings.from_env(
        {"WIDGETRY_API_KEYS": "writer-1, writer-2", "WIDGETRY_ADMIN_KEYS": "admin-1", "REDIS_URL": "redis://x"}
    )
    keys = ApiKeys.configured(settings, alchemy=None)  # type: ignore[arg-type]

    writer, admin, unknown = [await keys.authenticate(key) for key in ("writer-2", "admin-1", "admin-2")]

    assert writer is not None and writer.scopes == {Scope.WRITE}
    assert admin is not None and admin.scopes == {Scope.WRITE, Scope.ADMIN}
    assert unknown is None
    assert not settings.dev_key_generated


async def test_metrics_need_an_admin_key_when_reads_are_protected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(api_keys=(API_KEY,), admin_keys=(ADMIN_KEY,), protect_reads=True)
    async with serve(create_app(settings)) as client:
        anonymous = await client.get("/metrics")
        writer = await client.get("/metrics", headers=AUTH)
        admin = await client.get("/metrics", headers=ADMIN)
        reads = await client.get("/widgets", headers=AUTH)

    assert anonymous.status_code == 401
    assert assert_problem(writer, 403)["type"].endswith("/problems/forbidden")
    assert admin.status_code == 200 and "widgetry_http_requests_total" in admin.text
    assert reads.status_code == 200  # reading needs a key, any key


async def test_the_schema_declares_how_to_send_a_key_and_which_scope_each_operation_needs(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    paths = schema["paths"]

    assert schema["components"]["securitySchemes"] == {
        "apiKey": {"type": "apiKey", "name": "X-API-Key", "in": "header"},
        "bearer": {"type": "http", "scheme": "bearer", "description": "The same API key, as a bearer token."},
    }
    for path, method in (("/widgets", "post"), ("/widgets/{sku}", "patch"), ("/widgets/{sku}", "delete")):
        assert paths[path][method]["security"] == [{"apiKey": ["write"]}, {"bearer": ["write"]}]
    for path in ("/admin/widgets", "/admin/widgets/{sku}"):
        assert paths[path]["get"]["security"] == [{"apiKey": ["admin"]}, {"bearer": ["admin"]}]
        assert {"401", "403"} <= paths[path]["get"]["responses"].keys()  # no key; a key without `admin`
        assert {"401", "403"}.isdisjoint(paths[path.removeprefix("/admin")]["get"]["responses"])  # public: neither
    assert "internal_notes" in schema["components"]["schemas"]["AdminWidget"]["properties"]
    assert "security" not in paths["/widgets/{sku}"]["get"]
    assert "security" not in schema  # reads are public unless protected


async def test_with_reads_protected_the_schema_asks_a_key_of_reads_but_not_of_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with serve(create_app(Settings(api_keys=(API_KEY,), protect_reads=True))) as client:
        schema = (await client.get("/schema/openapi.json")).json()

    assert schema["security"] == [{"apiKey": []}, {"bearer": []}]
    assert "security" not in schema["paths"]["/widgets/{sku}"]["get"]  # the document's default applies
    assert schema["paths"]["/health"]["get"]["security"] == [{}]
    assert schema["paths"]["/widgets"]["post"]["security"] == [{"apiKey": ["write"]}, {"bearer": ["write"]}]
    for path in ("/widgets", "/widgets/{sku}", "/commands/{command_id}", "/events"):
        assert "401" in schema["paths"][path]["get"]["responses"], path  # no key
    assert "401" not in schema["paths"]["/health"]["get"]["responses"]


async def test_internal_notes_reach_no_public_route_no_event_and_no_log_line(tmp_path: Path) -> None:
    marker = f"notes-marker-{uuid.uuid4().hex}"
    server = Server(
        {
            "WIDGETRY_API_KEYS": API_KEY,
            "WIDGETRY_ADMIN_KEYS": ADMIN_KEY,
            "WIDGETRY_LOG_LEVEL": "DEBUG",
            "WIDGETRY_LOG_FORMAT": "json",
        },
        tmp_path,
    )
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
            watching = asyncio.Event()
            events = asyncio.create_task(events_until(http, "END", watching))
            await asyncio.wait_for(watching.wait(), 10)
            public, admin = await exercise(http, marker)
            streamed = await asyncio.wait_for(events, 30)
    finally:
        server.stop()

    assert marker in admin.json()["internal_notes"]  # the notes are really there to be leaked
    assert {event["type"] for event in streamed} >= {
        "widget.created",
        "widget.updated",
        "command.failed",
        "command.progress",
        "command.completed",
    }
    for response in public:
        assert response.status_code < 500, response.text
        assert marker not in response.text, f"{response.request.method} {response.request.url}"
        assert marker not in str(response.headers)
    assert not [event for event in streamed if marker in str(event)]
    assert "command.accepted" in server.output  # the log was written, at the debug level
    assert marker not in server.output


async def events_until(http: httpx.AsyncClient, last_sku: str, watching: asyncio.Event) -> list[dict[str, Any]]:
    """The envelopes of the live stream, up to the first event about `last_sku`."""
    envelopes: list[dict[str, Any]] = []
    async with aconnect_sse(http, "GET", "/events") as source:
        source.response.raise_for_status()
        watching.set()
        async for event in source.aiter_sse():
            if event.data:
                envelopes.append(event.json())
                if envelopes[-1]["sku"] == last_sku:
                    return envelopes
    return envelopes


async def exercise(http: httpx.AsyncClient, marker: str) -> tuple[list[httpx.Response], httpx.Response]:
    """Every way a widget's notes could come back out: the writes' own answers, their commands, failures, imports,
    idempotent replays, rejected input, reads, searches, conditional reads, metrics and the dashboard's reads. Returns
    the public responses and one admin read."""
    notes = {"internal_notes": marker}
    idempotent = AUTH | WAIT | {"Idempotency-Key": "notes-1"}
    public = [
        created := await http.post("/widgets", json=SPROCKET | notes, headers=idempotent),
        await http.post("/widgets", json=SPROCKET | notes, headers=idempotent),
        await http.post("/widgets", json=SPROCKET | notes, headers=AUTH | WAIT),  # fails: the sku exists
        await http.patch("/widgets/S-1", json={"internal_notes": f"{marker} again"}, headers=ADMIN | WAIT),
        await http.patch("/widgets/S-1", json={"internal_notes": marker + "x" * 10_001}, headers=AUTH | WAIT),
        await http.patch("/widgets/S-1", json={"name": "Sprocket II"}, headers=AUTH | WAIT | {"If-Match": '"9"'}),
        await http.post(
            "/widgets/imports",
            json={"widgets": [{"sku": "I-1", "name": "Imported", "price_cents": 1} | notes, {"sku": "bad!"} | notes]},
            headers=AUTH | WAIT,
        ),
        await http.post(
            "/widgets/imports",
            content=f"sku,name,price_cents,internal_notes\nI-2,From CSV,2,{marker}\n",
            headers=AUTH | WAIT | {"Content-Type": "text/csv"},
        ),
    ]
    commands = [response.headers["location"] for response in public if "location" in response.headers]
    public += [await http.get(location) for location in commands]
    for headers in ({}, AUTH, ADMIN):
        public += [
            await http.get("/widgets", headers=headers),
            # Half the marker: a search that matched notes would find the widget, and the access log shows the URL.
            await http.get("/widgets", params={"search": marker[: len(marker) // 2]}, headers=headers),
            await http.get("/widgets/S-1", headers=headers),
            await http.get("/widgets/S-1", headers=headers | {"If-None-Match": '"1"'}),
        ]
    public.append(await http.get("/metrics"))
    await http.post("/ui/sign-in", data={"key": ADMIN_KEY})
    public.append(await http.get("/ui/widgets"))
    public.append(await http.post("/widgets", json={"sku": "END", "name": "End", "price_cents": 0}, headers=AUTH))
    admin = await http.get("/admin/widgets/S-1", headers=ADMIN)
    assert created.status_code == 200, created.text
    assert public[-2].status_code == 200 and public[-2].json()["total"] == 3, public[-2].text
    searched = [response for response in public if "search" in response.request.url.params]
    assert [response.json()["total"] for response in searched] == [0, 0, 0]
    return public, admin
