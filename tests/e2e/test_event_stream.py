"""Against a live server: commands in, events out over SSE, in order, resumable exactly by id."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from tests.support import AUTH, WAIT, Server, collect_events

PUBLIC_FIELDS = {"sku", "name", "price_cents", "version", "created_at", "updated_at"}


async def write_lifecycle(url: str, sku: str) -> list[str]:
    """Creates, patches and deletes a widget, each applied before the next; returns the command ids."""
    async with httpx.AsyncClient(base_url=url, headers=AUTH | WAIT) as client:
        responses = [
            await client.post(
                "/widgets", json={"sku": sku, "name": "Gear", "price_cents": 500, "internal_notes": "secret"}
            ),
            await client.patch(f"/widgets/{sku}", json={"price_cents": 650}),
            await client.delete(f"/widgets/{sku}"),
        ]
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    return [r.json()["id"] for r in responses]


async def watch_while(url: str, count: int, action, **kwargs):  # type: ignore[no-untyped-def]
    """Opens the stream, waits until it is connected, runs `action`, and returns the first `count` events."""
    started = asyncio.Event()
    watcher = asyncio.create_task(collect_events(url, count, started=started, **kwargs))
    connected = asyncio.create_task(started.wait())
    await asyncio.wait([watcher, connected], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if watcher.done():
        watcher.result()
    assert started.is_set(), "the event stream did not connect"
    result = await action()
    return await watcher, result


async def test_create_patch_delete_arrive_in_order_with_the_public_shape(server: Server) -> None:
    events, command_ids = await watch_while(
        f"{server.url}/events", 3, lambda: write_lifecycle(server.url, "E2E-1"), params={"sku": "E2E-1"}
    )

    assert [e.event for e in events] == ["widget.created", "widget.updated", "widget.deleted"]
    envelopes = [json.loads(e.data) for e in events]
    assert [env["command_id"] for env in envelopes] == command_ids
    assert [env["version"] for env in envelopes] == [1, 2, 3]
    assert set(envelopes[0]["data"]) == PUBLIC_FIELDS
    assert set(envelopes[1]["data"]) == PUBLIC_FIELDS
    assert envelopes[1]["data"]["price_cents"] == 650
    assert envelopes[2]["data"] == {"sku": "E2E-1"}
    assert "secret" not in "".join(e.data for e in events)
    ids = [e.id for e in events]
    assert len(set(ids)) == 3


async def test_reconnecting_with_the_last_id_gets_exactly_the_events_after_it(server: Server) -> None:
    first_run, _ = await watch_while(
        f"{server.url}/events", 3, lambda: write_lifecycle(server.url, "E2E-2"), params={"sku": "E2E-2"}
    )
    first_id = first_run[0].id

    by_header = await collect_events(
        f"{server.url}/events", 2, headers={"Last-Event-ID": first_id}, params={"sku": "E2E-2"}
    )
    by_query = await collect_events(f"{server.url}/events", 2, params={"sku": "E2E-2", "last_event_id": first_id})

    for resumed in (by_header, by_query):
        assert [(e.id, e.event, e.data) for e in resumed] == [(e.id, e.event, e.data) for e in first_run[1:]]


async def test_a_resumed_stream_goes_live_without_repeating_what_it_replayed(server: Server) -> None:
    first_run, _ = await watch_while(
        f"{server.url}/events", 3, lambda: write_lifecycle(server.url, "E2E-3"), params={"sku": "E2E-3"}
    )

    async def create_again() -> None:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH | WAIT) as client:
            response = await client.post("/widgets", json={"sku": "E2E-3", "name": "Again", "price_cents": 1})
            assert response.status_code == 200

    resumed, _ = await watch_while(
        f"{server.url}/events", 3, create_again, headers={"Last-Event-ID": first_run[0].id}, params={"sku": "E2E-3"}
    )

    assert [e.id for e in resumed[:2]] == [e.id for e in first_run[1:]]
    assert resumed[2].event == "widget.created"
    assert json.loads(resumed[2].data)["data"]["name"] == "Again"
    assert resumed[2].id not in {e.id for e in first_run}


async def test_a_garbage_cursor_gets_stream_reset_then_live_events(server: Server) -> None:
    async def create() -> None:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH | WAIT) as client:
            assert (
                await client.post("/widgets", json={"sku": "E2E-4", "name": "x", "price_cents": 1})
            ).status_code == 200

    events, _ = await watch_while(
        f"{server.url}/events", 2, create, headers={"Last-Event-ID": "not-a-cursor"}, params={"sku": "E2E-4"}
    )

    assert [e.event for e in events] == ["stream.reset", "widget.created"]
    assert events[0].id == ""


async def test_a_cursor_from_the_future_is_unknown_and_gets_stream_reset(server: Server) -> None:
    events = await collect_events(f"{server.url}/events", 1, headers={"Last-Event-ID": "99999999999999-0"})

    assert [e.event for e in events] == ["stream.reset"]


async def test_widget_stream_and_type_filter_select_events(server: Server) -> None:
    events, _ = await watch_while(
        f"{server.url}/widgets/E2E-5/events",
        1,
        lambda: write_lifecycle(server.url, "E2E-5"),
        params={"types": "widget.updated"},
    )

    assert [(e.event, json.loads(e.data)["sku"]) for e in events] == [("widget.updated", "E2E-5")]


async def test_stream_sends_retry_once_and_keepalive_comments(tmp_path: Path) -> None:
    live = Server({"WIDGETRY_API_KEYS": "k", "WIDGETRY_KEEPALIVE_SECONDS": "0.2"}, tmp_path)
    try:
        lines: list[str] = []
        async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", f"{live.url}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            async for line in response.aiter_lines():
                lines.append(line)
                if lines.count(": ping") >= 2:
                    break
    finally:
        live.stop()

    assert lines[0] == "retry: 3000"
    assert lines.count(": ping") == 2
    assert not [line for line in lines if line.startswith("data:")]


HOSTILE_HEADERS = [b"\xb2-1", b"1-\xb9", ("9" * 5_000 + "-0").encode(), ("0-" + "9" * 5_000).encode(), b"\xff\xfe-\x80"]
"""`Last-Event-ID` values as they come off the wire (bytes past ASCII are Latin-1 to the server)."""
HOSTILE_QUERIES = ["²-1", "١٢-٣", "9" * 5_000 + "-0", "%FF-1"]


async def test_hostile_cursors_get_stream_reset_then_live_events_and_no_server_error(server: Server) -> None:
    cases = [{"headers": {"Last-Event-ID": value}} for value in HOSTILE_HEADERS]
    cases += [{"params": {"last_event_id": value}} for value in HOSTILE_QUERIES]
    for number, case in enumerate(cases):
        sku = f"E2E-H{number}"

        async def create(sku: str = sku) -> None:
            async with httpx.AsyncClient(base_url=server.url, headers=AUTH | WAIT) as client:
                response = await client.post("/widgets", json={"sku": sku, "name": "x", "price_cents": 1})
                assert response.status_code == 200

        events, _ = await watch_while(f"{server.url}/widgets/{sku}/events", 2, create, **case)

        assert [e.event for e in events] == ["stream.reset", "widget.created"], case
    assert "Exception in ASGI application" not in server.output
    assert "Traceback" not in server.output
