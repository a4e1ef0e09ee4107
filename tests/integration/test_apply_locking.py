"""An apply locks its skus' heads and reads their pending commands in one statement (PostgreSQL). What a transaction
it waited for committed is not in that statement's snapshot: these check that it is read again, not applied stale."""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg
import httpx
from litestar import Litestar

from tests.support import eventually
from tests.unit.state import outbox, widget_row
from widgetry.domain.commands import CreateWidget
from widgetry.domain.problems import CommandFailed
from widgetry.services.accept import AcceptService
from widgetry.services.apply import ApplyService
from widgetry.services.units import unit_of_work
from widgetry.workers.jobs import apply_batch

WAITING_FOR_A_LOCK = """
SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()
"""


async def record(app: Litestar, sku: str) -> UUID:
    """A create recorded and not queued: nothing applies it but the test."""
    async with unit_of_work(app.state.connections.alchemy) as session:
        command, _ = await AcceptService(session=session).accept(
            sku, CreateWidget(values={"name": "Cog", "price_cents": 5})
        )
    return command.id


async def waits_for_a_lock(database_url: str) -> bool:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval(WAITING_FOR_A_LOCK) > 0
    finally:
        await connection.close()


async def test_an_apply_that_waited_for_its_head_reads_what_the_holder_committed(
    client: httpx.AsyncClient, app: Litestar, empty_database: str
) -> None:
    command_id = await record(app, "COG-1")
    connections = app.state.connections

    async with unit_of_work(connections.alchemy) as holder:
        # Ends the command failed under its head's lock, left uncommitted while the apply starts and waits on that lock.
        assert await ApplyService(session=holder).mark_failed(command_id, CommandFailed("given up")) == "COG-1"
        applying = asyncio.create_task(apply_batch(connections, [command_id]))
        await eventually(lambda: waits_for_a_lock(empty_database), 10, "the apply waiting for the head's lock")
    applied = await asyncio.wait_for(applying, 10)

    assert await widget_row(app, "COG-1") is None  # the failed command was not applied after all
    assert [event.type for event in await outbox(app)] == ["command.failed"]
    assert (await client.get(f"/commands/{command_id}")).json()["status"] == "failed"
    assert applied.skus == ["COG-1"]


async def test_an_apply_that_did_not_wait_applies_what_it_read_with_the_lock(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    first, second = await record(app, "COG-2"), await record(app, "COG-3")

    applied = await apply_batch(app.state.connections, [first, second])

    assert applied.skus == ["COG-2", "COG-3"]
    assert [(event.type, event.sku) for event in applied.events or ()] == [
        ("widget.created", "COG-2"),
        ("widget.created", "COG-3"),
    ]
    assert (await widget_row(app, "COG-3")) is not None
