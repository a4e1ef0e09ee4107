"""`POST /widgets/imports`: one command, its rows applied in batches with progress, bad rows reported, good rows
applied, every row ordered with the other commands on its sku."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.plugins.problem_details import ProblemDetailsException
from litestar_saq import SAQPlugin
from saq.queue import Queue
from sqlalchemy import select

from tests.support import AUTH, WAIT
from tests.unit.state import CommandRecord, count, outbox, queued_jobs, stream, unpublish_everything, widget_row
from tests.unit.test_commands import finished, redis_down
from widgetry.api import widgets as widget_routes
from widgetry.api.imports import MAX_IMPORT_BYTES, ParsedImport, parse_import
from widgetry.domain.problems import CommandFailed
from widgetry.services.commands import CommandService, RetryRefused
from widgetry.workers.jobs import fail_import, relay_unpublished, requeue_unfinished

CSV = {"Content-Type": "text/csv"}


def widgets(n: int, prefix: str = "IMP", price: int = 100) -> list[dict[str, Any]]:
    return [{"sku": f"{prefix}-{i:05d}", "name": f"Widget {i}", "price_cents": price + i} for i in range(n)]


async def imported(client: httpx.AsyncClient, **request: Any) -> dict[str, Any]:
    response = await client.post(
        "/widgets/imports", headers=AUTH | {"Prefer": "wait=30"} | request.pop("headers", {}), **request
    )
    assert response.status_code == 200, response.text
    return response.json()


def queue_of(app: Litestar) -> Queue:
    return app.plugins.get(SAQPlugin).get_queue(app.state.settings.queue_name)


async def accepted_unqueued(
    client: httpx.AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, Any]]
) -> httpx.Response:
    """An import recorded while Redis refuses to queue its job."""
    with monkeypatch.context() as patched:
        patched.setattr(queue_of(app), "enqueue", redis_down)
        return await client.post("/widgets/imports", json={"widgets": rows}, headers=AUTH)


async def test_a_json_import_creates_every_widget_and_reports_progress_then_completion(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    command = await imported(client, json={"widgets": widgets(1200)})

    assert command["type"] == "import_widgets"
    assert command["status"] == "succeeded"
    assert command["sku"] is None
    assert command["progress"] == {"done": 1200, "total": 1200}
    assert command["result"] == {
        "total": 1200,
        "created": 1200,
        "updated": 0,
        "unchanged": 0,
        "failed": 0,
        "errors": [],
    }
    assert (await widget_row(app, "IMP-01199")).price_cents == 1299
    events = [event for event in await stream(app) if event["command_id"] == command["id"]]
    created = [event for event in events if event["type"] == "widget.created"]
    progress = [event["data"]["progress"] for event in events if event["type"] == "command.progress"]
    assert len(created) == 1200
    assert {event["sku"] for event in created} == {f"IMP-{i:05d}" for i in range(1200)}
    # At least one progress event per 500 widgets, counting up to the total, and one completion, last.
    assert [p["done"] for p in progress] == [500, 1000, 1200]
    assert all(p["total"] == 1200 for p in progress)
    assert [event["type"] for event in events].count("command.completed") == 1
    assert events[-1]["type"] == "command.completed"
    assert events[-1]["data"]["result"]["created"] == 1200


async def test_a_csv_import_reports_bad_rows_and_applies_the_good_ones(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    body = (
        "sku,name,price_cents,internal_notes\n"
        "CSV-1,First,100,from the supplier\n"
        "bad sku!,Second,200,\n"
        "CSV-3,Third,-5,\n"
        "CSV-4,Fourth,four hundred,\n"
        "CSV-1,Again,100,\n"
        '"CSV-6","Sixth, with a comma",600,""\n'
    )
    command = await imported(client, content=body.encode(), headers=CSV)

    assert command["status"] == "succeeded"
    result = command["result"]
    assert (result["total"], result["created"], result["failed"]) == (6, 2, 4)
    assert [(error["row"], error["sku"]) for error in result["errors"]] == [
        (2, "bad sku!"),
        (3, "CSV-3"),
        (4, "CSV-4"),
        (5, "CSV-1"),
    ]
    assert "repeats row 1" in result["errors"][3]["reason"]
    assert result["errors"][0]["reason"].startswith("sku: must be 1 to 64 letters, digits")
    assert "price_cents" in result["errors"][1]["reason"]
    assert (await widget_row(app, "CSV-1")).internal_notes == "from the supplier"
    assert (await widget_row(app, "CSV-6")).name == "Sixth, with a comma"
    assert await widget_row(app, "CSV-3") is None


async def test_a_bad_row_is_reported_with_every_fault_it_has(client: httpx.AsyncClient, app: Litestar) -> None:
    csv_body = "sku,name,price_cents\nbad sku!,,-5\nALL-1,Fine,12\n"
    json_body = {"widgets": [{"sku": 5, "name": "", "price_cents": "x", "colour": "red"}, {"name": "No sku"}]}

    from_csv = (await imported(client, content=csv_body.encode(), headers=CSV))["result"]["errors"]
    from_json = await client.post("/widgets/imports", json=json_body, headers=AUTH)  # no valid row: refused

    [csv_reason] = [error["reason"] for error in from_csv]
    assert [part.split(":")[0] for part in csv_reason.split("; ")] == ["sku", "name", "price_cents"]
    assert from_json.status_code == 422
    first, second = [param["reason"] for param in from_json.json()["invalid_params"]]
    assert "unknown field `colour`" in first
    assert [part.split(":")[0] for part in first.split("; ")[1:]] == ["sku", "name", "price_cents"]
    assert second.count("missing required field") == 2  # sku and price_cents
    assert await widget_row(app, "ALL-1") is not None


async def test_an_import_updates_what_exists_and_leaves_unchanged_rows_alone(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    await imported(client, json={"widgets": widgets(3)})
    again = widgets(3)
    again[1]["price_cents"] = 5
    command = await imported(client, json={"widgets": again})

    assert command["result"] | {"errors": None} == {
        "total": 3,
        "created": 0,
        "updated": 1,
        "unchanged": 2,
        "failed": 0,
        "errors": None,
    }
    row = await widget_row(app, "IMP-00001")
    assert (row.price_cents, row.version) == (5, 2)
    assert (await widget_row(app, "IMP-00000")).version == 1
    updated = [e for e in await stream(app) if e["command_id"] == command["id"] and e["type"].startswith("widget.")]
    assert [(e["type"], e["sku"], e["version"]) for e in updated] == [("widget.updated", "IMP-00001", 2)]


async def test_an_import_takes_its_place_after_commands_accepted_before_it(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    await client.post("/widgets", json={"sku": "ORD-1", "name": "Old", "price_cents": 1}, headers=AUTH | WAIT)
    before = await client.patch("/widgets/ORD-1", json={"name": "Patched"}, headers=AUTH)
    command = await imported(client, json={"widgets": [{"sku": "ORD-1", "name": "Imported", "price_cents": 2}]})
    after = await client.patch("/widgets/ORD-1", json={"price_cents": 3}, headers=AUTH | WAIT)

    assert before.status_code == 202 and after.status_code == 200
    assert command["result"]["updated"] == 1
    row = await widget_row(app, "ORD-1")
    assert (row.name, row.price_cents, row.version) == ("Imported", 3, 4)
    versions = [(e["version"], e["command_id"]) for e in await stream(app) if e["sku"] == "ORD-1"]
    assert [version for version, _ in versions] == [1, 2, 3, 4]
    assert versions[2][1] == command["id"]


async def test_an_import_without_wait_is_accepted_and_can_be_followed_at_its_location(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/widgets/imports", json={"widgets": widgets(2)}, headers=AUTH)

    assert response.status_code == 202
    assert response.json()["progress"] == {"done": 0, "total": 2}
    assert response.headers["location"] == f"/commands/{response.json()['id']}"


async def test_the_same_import_with_the_same_idempotency_key_is_recorded_once(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    key = {"Idempotency-Key": "import-1"}
    first = await imported(client, json={"widgets": widgets(2)}, headers=key)
    again = await client.post("/widgets/imports", json={"widgets": widgets(2)}, headers=AUTH | key)
    other = await client.post("/widgets/imports", json={"widgets": widgets(3)}, headers=AUTH | key)

    assert (again.status_code, again.json()["id"]) == (200, first["id"])
    assert other.status_code == 422
    assert await count(app, CommandRecord) == 1 + 2


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        pytest.param(b'{"widgets": []}', {"Content-Type": "application/json"}, 422, id="no widgets"),
        pytest.param(b'{"widgets": {}}', {"Content-Type": "application/json"}, 422, id="widgets not a list"),
        pytest.param(b'{"items": []}', {"Content-Type": "application/json"}, 422, id="unknown member"),
        pytest.param(b'{"widgets": [', {"Content-Type": "application/json"}, 400, id="not json"),
        pytest.param(b"sku,name\nA,B\n", CSV, 422, id="csv without price_cents"),
        pytest.param(b"sku,name,price_cents,colour\nA,B,1,red\n", CSV, 422, id="csv unknown column"),
        pytest.param(b"sku,name,price_cents\n", CSV, 422, id="csv header only"),
        pytest.param(b"sku,name,price_cents\n\xff,B,1\n", CSV, 400, id="csv not utf-8"),
        pytest.param(b'{"widgets": [{"sku": "\xff"}]}', {"Content-Type": "application/json"}, 400, id="json not utf-8"),
        pytest.param(b"sku,name,price_cents\nbad sku,,x\n", CSV, 422, id="no valid row"),
        pytest.param(b"<widgets/>", {"Content-Type": "application/xml"}, 415, id="xml"),
        pytest.param(b"sku,name,price_cents\nA,B,1\n", {"Content-Type": "text/plain"}, 415, id="csv as text/plain"),
        pytest.param(b'{"widgets": [{"sku": "A", "name": "B", "price_cents": 1}]}', {}, 415, id="no content type"),
    ],
)
async def test_an_import_that_is_wrong_as_a_whole_is_refused_and_records_nothing(
    client: httpx.AsyncClient, app: Litestar, body: bytes, headers: dict[str, str], status: int
) -> None:
    response = await client.post("/widgets/imports", content=body, headers=AUTH | headers)

    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == status
    assert await count(app, CommandRecord) == 0
    assert await outbox(app) == []


async def test_more_than_ten_thousand_widgets_is_413(client: httpx.AsyncClient, app: Litestar) -> None:
    body = "sku,name,price_cents\n" + "".join(f"S{i},N,1\n" for i in range(10_001))
    response = await client.post("/widgets/imports", content=body.encode(), headers=AUTH | CSV)

    assert response.status_code == 413
    assert "10,000" in response.json()["detail"]
    assert await count(app, CommandRecord) == 0


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(
            b"sku,name,price_cents\n" + b"".join(b"S%d,N,1\n" % i for i in range(20_000)) + b"\xff,not UTF-8\n",
            CSV,
            id="csv",
        ),
        pytest.param(
            b'{"widgets": [' + b",".join(msgspec.json.encode(row) for row in widgets(20_000)) + b", not JSON",
            {"Content-Type": "application/json"},
            id="json",
        ),
    ],
)
async def test_reading_an_import_stops_at_the_first_row_past_ten_thousand(
    client: httpx.AsyncClient, app: Litestar, body: bytes, headers: dict[str, str]
) -> None:
    # The body ends in bytes that would be refused on their own, 10,000 rows past the cap: they are never read.
    response = await client.post("/widgets/imports", content=body, headers=AUTH | headers)

    assert response.status_code == 413, response.text
    assert "10,000" in response.json()["detail"]
    assert await count(app, CommandRecord) == 0


@pytest.mark.parametrize(
    ("media_type", "body"),
    [
        pytest.param("text/csv", b"sku,name,price_cents\n" + b"a,b,1\n" * (MAX_IMPORT_BYTES // 6 - 4), id="csv"),
        pytest.param(
            "application/json", b'{"widgets": [' + b",".join([b"{}"] * (MAX_IMPORT_BYTES // 3 - 5)) + b"]}", id="json"
        ),
    ],
)
def test_an_import_of_a_million_tiny_rows_is_refused_in_bounded_memory(media_type: str, body: bytes) -> None:
    assert len(body) <= MAX_IMPORT_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(ProblemDetailsException) as refused:
            parse_import(media_type, body)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert refused.value.status_code == 413
    # Reading at most 10,001 rows of it holds less than the body again (read whole, its rows held hundreds of MB).
    assert peak_bytes < len(body)


async def test_the_service_answers_while_an_import_is_being_read(
    client: httpx.AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    reading, go_on = threading.Event(), threading.Event()
    finished: list[str] = []

    def held_parse(media_type: str, body: bytes) -> ParsedImport:
        """The parse, held until the test lets it go on (or 10 s pass): a long parse the test sees the end of."""
        reading.set()
        go_on.wait(timeout=10)
        try:
            return parse_import(media_type, body)
        finally:
            finished.append("import read")

    monkeypatch.setattr(widget_routes, "parse_import", held_parse)
    upload = asyncio.create_task(client.post("/widgets/imports", json={"widgets": widgets(3)}, headers=AUTH))
    assert await asyncio.to_thread(reading.wait, 10)
    health = await client.get("/health")
    finished.append("health answered")
    go_on.set()

    assert health.status_code == 200
    assert (await upload).status_code == 202
    assert finished == ["health answered", "import read"]


async def test_a_csv_row_whose_cells_do_not_match_the_header_is_refused_saying_so(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    body = "sku,name,price_cents\nCELLS-1,Fine,100\nCELLS-2,Extra,200,surplus,more\nCELLS-3,Short\n"
    command = await imported(client, content=body.encode(), headers=CSV)

    assert (command["result"]["created"], command["result"]["failed"]) == (1, 2)
    assert command["result"]["errors"] == [
        {"row": 2, "sku": "CELLS-2", "reason": "5 cells where the header names 3 columns"},
        {"row": 3, "sku": "CELLS-3", "reason": "2 cells where the header names 3 columns"},
    ]
    assert await widget_row(app, "CELLS-2") is None


async def test_a_body_over_ten_megabytes_is_413(client: httpx.AsyncClient, app: Litestar) -> None:
    body = b"sku,name,price_cents,internal_notes\n" + b"A,B,1," + b"x" * (10 * 1024 * 1024) + b"\n"
    response = await client.post("/widgets/imports", content=body, headers=AUTH | CSV)

    assert response.status_code == 413
    assert await count(app, CommandRecord) == 0


async def test_an_import_needs_an_api_key(client: httpx.AsyncClient, app: Litestar) -> None:
    response = await client.post("/widgets/imports", json={"widgets": widgets(1)})

    assert response.status_code == 401
    assert await count(app, CommandRecord) == 0


async def test_an_import_whose_enqueue_failed_is_run_by_the_recovery_pass(
    client: httpx.AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted = await accepted_unqueued(client, app, monkeypatch, widgets(3))
    assert accepted.status_code == 202

    # The worker's own pass at start-up may have queued it first; either way it is queued once.
    await requeue_unfinished(app.state.connections, [queue_of(app)])

    assert await queued_jobs(app) == 1  # the import, not its three rows one by one
    command = await finished(client, accepted.headers["location"])
    assert (command["status"], command["result"]["created"]) == ("succeeded", 3)


async def test_the_relay_publishes_an_imports_own_events_left_unpublished(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    command = await imported(client, json={"widgets": widgets(2)})
    await unpublish_everything(app)

    await relay_unpublished({"connections": app.state.connections})

    published = [(e["type"], e["sku"]) for e in await stream(app) if e["command_id"] == command["id"]]
    assert sorted(published, key=str) == sorted(
        [
            ("widget.created", "IMP-00000"),
            ("widget.created", "IMP-00001"),
            ("command.progress", None),
            ("command.completed", None),
        ],
        key=str,
    )
    assert all(row.stream_id for row in await outbox(app))


async def test_an_import_that_cannot_finish_fails_with_its_rows_left_unapplied(
    client: httpx.AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted = await accepted_unqueued(client, app, monkeypatch, widgets(2))
    import_id = UUID(accepted.json()["id"])

    await fail_import(app.state.connections, import_id, CommandFailed("The import could not be applied."))
    await fail_import(app.state.connections, import_id, CommandFailed("twice"))

    command = (await client.get(accepted.headers["location"])).json()
    assert command["status"] == "failed"
    assert command["error"]["detail"] == "The import could not be applied."
    assert (command["result"]["created"], command["result"]["failed"]) == (0, 2)
    assert await widget_row(app, "IMP-00000") is None
    assert [e["type"] for e in await stream(app) if e["command_id"] == str(import_id)] == ["command.failed"]
    async with app.state.connections.alchemy.get_session() as session:
        row = await session.scalar(select(CommandRecord.id).where(CommandRecord.parent_id == import_id).limit(1))
        with pytest.raises(RetryRefused, match="is a row of import"):
            await CommandService(session=session).retry(row)
    # Its rows stay failed: a later command on their sku applies after them, not them.
    later = await client.post("/widgets", json=widgets(1)[0], headers=AUTH | WAIT)
    assert later.status_code == 200
    assert (await widget_row(app, "IMP-00000")).version == 1
