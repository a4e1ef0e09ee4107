"""Each command type, applied by the in-process worker: the row, the command's status, exactly one event."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from litestar import Litestar
from litestar_saq import SAQPlugin
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support import API_KEY, AUTH, WAIT, eventually, serve
from tests.unit.state import CommandRecord, count, outbox, settled_stream, stream, unpublish_everything, widget_row
from widgetry.app import create_app
from widgetry.domain.commands import CreateWidget, UpdateWidget
from widgetry.domain.problems import CommandFailed
from widgetry.services import apply as apply_service
from widgetry.services.accept import AcceptService
from widgetry.services.apply import ApplyService
from widgetry.services.units import unit_of_work
from widgetry.settings import Settings
from widgetry.workers.jobs import apply_batch, publish_applied, publish_pending, relay_unpublished, requeue_unfinished

PUBLIC_FIELDS = {"sku", "name", "price_cents", "version", "created_at", "updated_at"}
SPROCKET = {"sku": "SPR-1", "name": "  Sprocket  ", "price_cents": 1999, "internal_notes": "supplier: Acme"}


async def finished(client: httpx.AsyncClient, location: str) -> dict:
    """The command at `location` once it has finished (polled: GET has no `Prefer: wait`)."""
    command: dict = {}

    async def done() -> bool:
        command.update((await client.get(location)).json())
        return command["status"] in ("succeeded", "failed")

    await eventually(done, 10, f"{location} to finish")
    return command


async def create(client: httpx.AsyncClient, body: dict = SPROCKET) -> dict:
    response = await client.post("/widgets", json=body, headers=AUTH | WAIT)
    assert response.status_code == 200, response.text
    return response.json()


async def test_create_is_accepted_with_location_then_applied_by_the_worker(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    accepted = await client.post("/widgets", json=SPROCKET, headers=AUTH)

    assert accepted.status_code == 202
    command = accepted.json()
    assert accepted.headers["location"] == f"/commands/{command['id']}"
    assert command["type"] == "create_widget"
    assert command["sku"] == "SPR-1"
    assert command["links"] == {"self": f"/commands/{command['id']}", "widget": "/widgets/SPR-1"}

    status = await finished(client, accepted.headers["location"])
    assert status["status"] == "succeeded"
    assert status["finished_at"] is not None
    row = await widget_row(app, "SPR-1")
    assert row is not None
    assert (row.name, row.price_cents, row.internal_notes, row.version) == ("Sprocket", 1999, "supplier: Acme", 1)


async def test_create_writes_one_widget_created_event_in_the_public_shape(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    command = await create(client)

    events = await stream(app)
    assert [e["type"] for e in events] == ["widget.created"]
    event = events[0]
    assert event["command_id"] == command["id"]
    assert (event["sku"], event["version"]) == ("SPR-1", 1)
    assert set(event["data"]) == PUBLIC_FIELDS
    assert event["data"]["name"] == "Sprocket"
    assert [row.event_id.hex for row in await outbox(app)] == [event["event_id"].replace("-", "")]

    async def marked_published() -> bool:
        # The event goes on the stream, then its stream id is recorded: a client may see it a moment before.
        entries = await app.state.connections.redis.xrange(app.state.settings.events_stream)
        return [row.stream_id for row in await outbox(app)] == [entry_id.decode() for entry_id, _ in entries]

    await eventually(marked_published, 10, "the outbox row to carry the event's stream id")


async def test_update_changes_only_the_given_fields_and_bumps_the_version(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    await create(client)

    response = await client.patch("/widgets/SPR-1", json={"price_cents": 2500}, headers=AUTH | WAIT)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    row = await widget_row(app, "SPR-1")
    assert (row.name, row.price_cents, row.internal_notes, row.version) == ("Sprocket", 2500, "supplier: Acme", 2)
    events = await stream(app)
    assert [(e["type"], e["version"]) for e in events] == [("widget.created", 1), ("widget.updated", 2)]
    assert events[1]["data"]["price_cents"] == 2500
    assert events[1]["command_id"] == response.json()["id"]


async def test_delete_removes_the_row_and_emits_widget_deleted(client: httpx.AsyncClient, app: Litestar) -> None:
    await create(client)

    response = await client.delete("/widgets/SPR-1", headers=AUTH | WAIT)

    assert response.status_code == 200, response.text
    assert await widget_row(app, "SPR-1") is None
    assert (await client.get("/widgets/SPR-1")).status_code == 404
    deleted = (await stream(app))[-1]
    assert (deleted["type"], deleted["sku"], deleted["version"], deleted["data"]) == (
        "widget.deleted",
        "SPR-1",
        2,
        {"sku": "SPR-1"},
    )


async def test_creating_an_existing_sku_fails_with_widget_exists(client: httpx.AsyncClient, app: Litestar) -> None:
    await create(client)

    response = await client.post("/widgets", json=SPROCKET | {"name": "Other"}, headers=AUTH | WAIT)

    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"].endswith("/widget-exists")
    assert problem["status"] == 409
    command = (await client.get(response.headers["location"])).json()
    assert command["status"] == "failed"
    assert command["error"]["type"].endswith("/widget-exists")
    assert (await widget_row(app, "SPR-1")).name == "Sprocket"
    failed = [e for e in await stream(app) if e["command_id"] == command["id"]]
    assert [(e["type"], e["data"]["status"]) for e in failed] == [("command.failed", "failed")]
    assert failed[0]["data"]["error"]["type"].endswith("/widget-exists")


async def test_changing_a_missing_widget_fails_with_widget_not_found(client: httpx.AsyncClient, app: Litestar) -> None:
    patched = await client.patch("/widgets/NOPE", json={"name": "x"}, headers=AUTH | WAIT)
    deleted = await client.delete("/widgets/NOPE", headers=AUTH | WAIT)

    for response in (patched, deleted):
        assert response.status_code == 404
        assert response.json()["type"].endswith("/widget-not-found")
        command = (await client.get(response.headers["location"])).json()
        assert command["status"] == "failed"
        assert command["error"]["type"].endswith("/widget-not-found")
    assert [e["type"] for e in await stream(app)] == ["command.failed", "command.failed"]
    assert await count(app, CommandRecord) == 2


async def test_if_match_applies_only_at_that_version(client: httpx.AsyncClient, app: Litestar) -> None:
    await create(client)

    stale = await client.patch("/widgets/SPR-1", json={"name": "B"}, headers=AUTH | WAIT | {"If-Match": '"7"'})
    fresh = await client.patch("/widgets/SPR-1", json={"name": "C"}, headers=AUTH | WAIT | {"If-Match": '"1"'})

    assert stale.status_code == 412
    assert stale.json()["type"].endswith("/conflict")
    assert fresh.status_code == 200
    assert (await widget_row(app, "SPR-1")).name == "C"


async def test_commands_on_one_sku_apply_in_the_order_accepted(client: httpx.AsyncClient, app: Litestar) -> None:
    await create(client)
    for price in range(1, 21):
        response = await client.patch("/widgets/SPR-1", json={"price_cents": price}, headers=AUTH)
        assert response.status_code == 202
    last = await client.patch("/widgets/SPR-1", json={"name": "Last"}, headers=AUTH | WAIT)

    assert last.status_code == 200
    row = await widget_row(app, "SPR-1")
    assert (row.price_cents, row.name, row.version) == (20, "Last", 22)
    updates = [e for e in await stream(app) if e["type"] == "widget.updated"]
    assert [e["version"] for e in updates] == list(range(2, 23))
    assert [e["data"]["price_cents"] for e in updates[:20]] == list(range(1, 21))


async def test_unknown_command_is_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/commands/01a21eea-94ba-779a-84aa-f8017b1178e9")

    assert response.status_code == 404
    assert response.json()["type"].endswith("/command-not-found")


async def test_a_command_that_keeps_failing_ends_failed_internal_once_attempts_are_spent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: ApplyService, command_id: object) -> None:
        raise RuntimeError("database on fire")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ApplyService, "apply_many", broken)
    app = create_app(Settings(api_keys=(API_KEY,), job_attempts=2))
    async with serve(app) as client:
        response = await client.post("/widgets", json=SPROCKET, headers=AUTH | WAIT)
        command = (await client.get(response.headers["location"])).json()
        events = await stream(app)

    assert response.status_code == 500
    assert response.json()["type"].endswith("/internal")
    assert command["status"] == "failed"
    assert command["error"]["type"].endswith("/internal")
    assert "2 attempts" in command["error"]["detail"]
    assert [(e["type"], e["command_id"]) for e in events] == [("command.failed", command["id"])]
    assert await widget_row(app, "SPR-1") is None


async def redis_down(*_: object, **__: object) -> None:
    raise RedisConnectionError("Redis is down")


async def test_a_command_whose_enqueue_failed_is_recorded_and_queued_by_the_recovery_pass(
    client: httpx.AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = app.plugins.get(SAQPlugin).get_queue(app.state.settings.queue_name)
    with monkeypatch.context() as patched:
        patched.setattr(queue, "enqueue", redis_down)
        accepted = await client.post("/widgets", json=SPROCKET, headers=AUTH)
    assert accepted.status_code == 202
    assert (await client.get(accepted.headers["location"])).json()["status"] == "accepted"

    requeued = await requeue_unfinished(app.state.connections, [queue])

    assert requeued == 1
    assert (await finished(client, accepted.headers["location"]))["status"] == "succeeded"
    assert (await widget_row(app, "SPR-1")).name == "Sprocket"
    assert [e["type"] for e in await settled_stream(app)] == ["widget.created"]


async def test_a_failed_command_keeps_its_outcome_when_a_later_one_on_its_sku_applies(
    client: httpx.AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create(client)
    queue = app.plugins.get(SAQPlugin).get_queue(app.state.settings.queue_name)
    with monkeypatch.context() as patched:
        patched.setattr(queue, "enqueue", redis_down)
        stuck = await client.patch("/widgets/SPR-1", json={"name": "Never"}, headers=AUTH)
    async with unit_of_work(app.state.connections.alchemy) as session:
        sku = await ApplyService(session=session).mark_failed(UUID(stuck.json()["id"]), CommandFailed("spent"))
    await publish_pending(app.state.connections, [sku] if sku else [])

    later = await client.patch("/widgets/SPR-1", json={"price_cents": 1}, headers=AUTH | WAIT)

    assert later.status_code == 200
    assert (await client.get(stuck.headers["location"])).json()["status"] == "failed"
    row = await widget_row(app, "SPR-1")
    assert (row.name, row.price_cents, row.version) == ("Sprocket", 1, 2)
    assert [e["type"] for e in await stream(app)] == ["widget.created", "command.failed", "widget.updated"]


async def test_marking_an_applied_command_failed_changes_nothing(client: httpx.AsyncClient, app: Litestar) -> None:
    command = await create(client)

    async with unit_of_work(app.state.connections.alchemy) as session:
        await ApplyService(session=session).mark_failed(UUID(command["id"]), CommandFailed("too late"))

    assert (await client.get(f"/commands/{command['id']}")).json()["status"] == "succeeded"
    assert [event.type for event in await outbox(app)] == ["widget.created"]


async def test_a_job_that_times_out_on_its_last_attempt_ends_the_command_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hangs(self: ApplyService, command_id: object) -> None:
        await asyncio.sleep(60)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ApplyService, "apply_many", hangs)
    app = create_app(Settings(api_keys=(API_KEY,), job_attempts=1, job_timeout_seconds=1))
    async with serve(app) as client:
        response = await client.post("/widgets", json=SPROCKET, headers=AUTH | WAIT)
        command = (await client.get(response.headers["location"])).json()

    assert response.status_code == 500
    assert (command["status"], command["error"]["type"]) == ("failed", "/problems/internal")


async def test_an_update_to_the_same_values_is_still_a_new_version(client: httpx.AsyncClient, app: Litestar) -> None:
    await create(client)

    response = await client.patch("/widgets/SPR-1", json={"price_cents": 1999}, headers=AUTH | WAIT)

    assert response.status_code == 200
    assert (await widget_row(app, "SPR-1")).version == 2
    assert [(e["type"], e["version"]) for e in await stream(app)] == [("widget.created", 1), ("widget.updated", 2)]


async def test_the_relay_publishes_events_committed_but_never_published(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    await create(client)
    await unpublish_everything(app)

    relayed = await relay_unpublished({"connections": app.state.connections})

    assert relayed == 1
    assert [e["type"] for e in await stream(app)] == ["widget.created"]
    assert all(row.stream_id for row in await outbox(app))
    assert await relay_unpublished({"connections": app.state.connections}) == 0


async def test_a_command_shows_running_while_it_is_applied(
    client: httpx.AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    execute = apply_service._execute  # noqa: SLF001
    reached, release = asyncio.Event(), asyncio.Event()

    async def paused(*args: Any) -> Any:
        reached.set()
        await release.wait()
        return await execute(*args)

    monkeypatch.setattr(apply_service, "_execute", paused)
    accepted = await client.post("/widgets", json=SPROCKET, headers=AUTH)
    location = accepted.headers["location"]
    await asyncio.wait_for(reached.wait(), 10)
    while_applied = (await client.get(location)).json()
    release.set()
    after = await finished(client, location)

    assert [accepted.json()["status"], while_applied["status"], after["status"]] == ["accepted", "running", "succeeded"]
    assert while_applied["finished_at"] is None
    assert await widget_row(app, "SPR-1") is not None


async def test_publishes_racing_over_one_sku_keep_its_order_and_add_nothing_twice(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    """Publishing takes no lock: the first batch's publish may come after the second's. The second batch finds the
    first's event still unpublished as it applies, so it publishes from the outbox, that event first; the first's
    late publish then finds its event on the stream already."""
    connections = app.state.connections
    async with unit_of_work(connections.alchemy) as session:
        service = AcceptService(session=session)
        first, _ = await service.accept("RACE-1", CreateWidget(values={"name": "Race", "price_cents": 1}))
        second, _ = await service.accept("RACE-1", UpdateWidget(changes={"price_cents": 2}))

    first_batch = await apply_batch(connections, [first.id])
    second_batch = await apply_batch(connections, [second.id])
    assert first_batch.events is not None, "a batch that found nothing unpublished publishes what it wrote"
    assert second_batch.events is None, "the first batch's event was still unpublished: the second reads the outbox"
    await publish_applied(connections, [second_batch])
    await publish_applied(connections, [first_batch])

    entries = await connections.redis.xrange(app.state.settings.events_stream)
    assert [(envelope["type"], envelope["version"]) for envelope in await stream(app)] == [
        ("widget.created", 1),
        ("widget.updated", 2),
    ]
    assert [event.stream_id for event in await outbox(app)] == [entry_id.decode() for entry_id, _ in entries]


async def test_a_batch_publishes_what_an_earlier_publish_of_its_skus_left_behind(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    """A job run again after its publish failed finds its command applied: its event, still unpublished, goes out
    with the events of the batch it is in, not only later by the relay."""
    connections = app.state.connections
    async with unit_of_work(connections.alchemy) as session:
        service = AcceptService(session=session)
        left, _ = await service.accept("LEFT-1", CreateWidget(values={"name": "Left", "price_cents": 1}))
        fresh, _ = await service.accept("FRESH-1", CreateWidget(values={"name": "Fresh", "price_cents": 1}))
    await apply_batch(connections, [left.id])  # applied; its publish never happened

    batch = await apply_batch(connections, [left.id, fresh.id])
    assert batch.events is None, "LEFT-1 has an event left unpublished: the publish reads the outbox"
    await publish_applied(connections, [batch])

    assert sorted(envelope["sku"] for envelope in await stream(app)) == ["FRESH-1", "LEFT-1"]
    assert all(event.stream_id for event in await outbox(app))
