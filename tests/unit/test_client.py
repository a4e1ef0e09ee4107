"""`widgetry.client` against the app in-process (requests) and behind a live server on this loop (the event stream)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from itertools import islice
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from litestar import Litestar

from tests.support import API_KEY, running
from tests.unit.state import widget_row
from tests.unit.test_access import live
from widgetry.app import create_app
from widgetry.client import (
    STREAM_RESET,
    AsyncWidgetryClient,
    Command,
    CommandTimeout,
    Event,
    ProblemError,
    Widget,
    WidgetryClient,
)
from widgetry.settings import Settings, WorkerMode


@pytest.fixture
async def widgetry(app: Litestar) -> AsyncIterator[AsyncWidgetryClient]:
    async with (
        running(app),
        AsyncWidgetryClient("http://widgetry", API_KEY, transport=httpx.ASGITransport(app=app)) as client,
    ):
        yield client


async def test_a_widget_is_created_changed_and_deleted_through_the_client(
    widgetry: AsyncWidgetryClient, app: Litestar
) -> None:
    accepted = await widgetry.create("CL-1", "Clamp", 250, internal_notes="from the client")
    created = await widgetry.wait(accepted, timeout=10)
    widget = await widgetry.get_widget("CL-1")
    updated = await widgetry.update("CL-1", if_match=widget.version, price_cents=300, wait=10)
    page = await widgetry.list_widgets(search="clamp")
    deleted = await widgetry.delete("CL-1", if_match=2, wait=10)

    assert (accepted.status, accepted.type, accepted.sku) == ("accepted", "create_widget", "CL-1")
    assert (created.id, created.status, created.error) == (accepted.id, "succeeded", None)
    assert (widget.sku, widget.name, widget.price_cents, widget.version) == ("CL-1", "Clamp", 250, 1)
    assert (updated.type, updated.status) == ("update_widget", "succeeded")
    assert [(item.sku, item.price_cents, item.version) for item in page.items] == [("CL-1", 300, 2)]
    assert page.total == 1
    assert (deleted.type, deleted.status) == ("delete_widget", "succeeded")
    assert await widget_row(app, "CL-1") is None


async def test_problems_become_errors_carrying_the_problem(widgetry: AsyncWidgetryClient, app: Litestar) -> None:
    with pytest.raises(ProblemError) as invalid:
        await widgetry.create("-bad", "", 12)
    with pytest.raises(ProblemError) as missing:
        await widgetry.get_widget("NOPE-1")
    async with AsyncWidgetryClient("http://widgetry", "wrong-key", transport=httpx.ASGITransport(app=app)) as keyless:
        with pytest.raises(ProblemError) as unauthorized:
            await keyless.create("CL-2", "Clamp", 1)

    assert invalid.value.status == 422
    assert [param["name"] for param in invalid.value.invalid_params] == ["sku", "name"]
    assert (missing.value.status, missing.value.type.rsplit("/", 1)[-1]) == (404, "widget-not-found")
    assert unauthorized.value.status == 401
    assert unauthorized.value.problem["status"] == 401
    assert await widget_row(app, "CL-2") is None


async def test_a_failed_command_is_waited_for_or_raised_when_the_server_waits(widgetry: AsyncWidgetryClient) -> None:
    await widgetry.create("CL-3", "Clamp", 1, wait=10)
    duplicate = await widgetry.create("CL-3", "Clamp again", 2)
    failed = await widgetry.wait(duplicate, timeout=10)
    with pytest.raises(ProblemError) as refused:
        await widgetry.create("CL-3", "Clamp thrice", 3, wait=10)

    assert failed.status == "failed"
    assert failed.error is not None and failed.error["type"].endswith("/widget-exists")
    assert refused.value.status == 409
    assert refused.value.type.endswith("/widget-exists")
    assert refused.value.problem["command"].startswith("/commands/")


async def test_an_idempotency_key_returns_the_original_command(widgetry: AsyncWidgetryClient) -> None:
    first = await widgetry.create("CL-4", "Clamp", 1, idempotency_key="order-77")
    again = await widgetry.create("CL-4", "Clamp", 1, idempotency_key="order-77")

    assert again.id == first.id
    assert (await widgetry.wait(first.id, timeout=10)).status == "succeeded"


async def test_an_import_is_sent_as_json_and_reports_its_result(widgetry: AsyncWidgetryClient) -> None:
    rows = [{"sku": f"IMP-{n}", "name": f"Imported {n}", "price_cents": n} for n in range(3)]
    command = await widgetry.import_widgets([*rows, {"sku": "IMP-x", "name": "", "price_cents": 1}])
    finished = await widgetry.wait(command, timeout=30)

    assert (command.type, finished.status) == ("import_widgets", "succeeded")
    assert finished.result is not None
    assert (finished.result["created"], finished.result["failed"]) == (3, 1)
    assert (await widgetry.get_widget("IMP-2")).price_cents == 2


async def test_waiting_past_the_timeout_raises_with_the_command_as_it_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = create_app(Settings(api_keys=(API_KEY,), workers=WorkerMode.EXTERNAL))  # nothing applies commands
    async with (
        running(app),
        AsyncWidgetryClient("http://widgetry", API_KEY, transport=httpx.ASGITransport(app=app)) as widgetry,
    ):
        accepted = await widgetry.create("CL-5", "Clamp", 1)
        with pytest.raises(CommandTimeout) as timed_out:
            await widgetry.wait(accepted, timeout=0.3)

    assert (timed_out.value.command.id, timed_out.value.command.status) == (accepted.id, "accepted")


async def take(events: AsyncIterator[Event], count: int) -> list[Event]:
    async with asyncio.timeout(15):
        return [await anext(events) for _ in range(count)]


async def test_events_resume_by_id_across_a_dropped_connection_exactly(app: Litestar) -> None:
    async with live(app) as http, AsyncWidgetryClient(str(http.base_url), API_KEY) as widgetry:
        commands = [await widgetry.create("EV-1", "Evented", 1, wait=10)]
        commands.append(await widgetry.update("EV-1", price_cents=2, wait=10))
        events = widgetry.events(sku="EV-1", last_event_id="0-0")
        seen = await take(events, 2)
        app.state.hub.close_subscribers()  # the server drops every stream, as it does when it shuts down
        for price in (3, 4):
            commands.append(await widgetry.update("EV-1", price_cents=price, wait=10))
        seen += await take(events, 2)
        await events.aclose()

    assert [(event.type, event.version, event.command_id) for event in seen] == [
        ("widget.created", 1, commands[0].id),
        ("widget.updated", 2, commands[1].id),
        ("widget.updated", 3, commands[2].id),
        ("widget.updated", 4, commands[3].id),
    ]
    assert len({event.id for event in seen}) == 4


async def test_events_after_a_cursor_are_replayed_then_live_and_a_lost_cursor_is_reset(app: Litestar) -> None:
    async with live(app) as http, AsyncWidgetryClient(str(http.base_url), API_KEY) as widgetry:
        commands = [await widgetry.create(f"EV-{n}", "Evented", n, wait=10) for n in range(3)]
        replay = widgetry.events(last_event_id="0-0")
        everything = await take(replay, 3)
        after_first = await take(widgetry.events(last_event_id=everything[0].id), 2)
        only_ev2 = await take(widgetry.events(sku=["EV-2"], last_event_id="0-0"), 1)
        reset = await take(widgetry.events(last_event_id="not-a-cursor"), 1)
        await replay.aclose()

    assert [event.command_id for event in everything] == [command.id for command in commands]
    assert [(event.type, event.sku, event.version) for event in everything] == [
        ("widget.created", f"EV-{n}", 1) for n in range(3)
    ]
    assert isinstance(everything[0].event_id, UUID)
    assert everything[2].data["price_cents"] == 2
    assert after_first == everything[1:]
    assert [event.command_id for event in only_ev2] == [commands[2].id]
    assert [(event.type, event.id) for event in reset] == [(STREAM_RESET, None)]


async def test_the_sync_client_writes_waits_and_reads_the_stream(app: Litestar) -> None:
    def session(url: str) -> tuple[list[Command], list[Event], Widget]:
        with WidgetryClient(url, API_KEY) as widgetry:
            commands = [widgetry.create("SY-1", "Synced", 1)]
            commands[0] = widgetry.wait(commands[0], timeout=10)
            commands.append(widgetry.update("SY-1", price_cents=5, wait=10))
            stream = widgetry.events(sku=["SY-1"], last_event_id="0-0")
            events = list(islice(stream, 2))
            stream.close()
            return commands, events, widgetry.get_widget("SY-1")

    async with live(app) as http:
        commands, events, widget = await asyncio.to_thread(session, str(http.base_url))

    assert [command.status for command in commands] == ["succeeded", "succeeded"]
    assert [(event.type, event.version, event.command_id) for event in events] == [
        ("widget.created", 1, commands[0].id),
        ("widget.updated", 2, commands[1].id),
    ]
    assert (widget.price_cents, widget.version) == (5, 2)
