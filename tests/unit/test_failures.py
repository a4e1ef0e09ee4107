"""Which failures fail a command at once, and which are retried: the command's own error is permanent, the
database failing is the environment's and is retried with backoff."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from advanced_alchemy.exceptions import IntegrityError as RepositoryError
from litestar import Litestar
from litestar_saq import SAQPlugin
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from tests.support import AUTH, WAIT, eventually
from tests.unit.state import CommandRecord, outbox, widget_row
from widgetry.domain.commands import CreateWidget, UpdateWidget
from widgetry.services import apply as apply_service
from widgetry.services.accept import AcceptService
from widgetry.services.units import unit_of_work
from widgetry.workers.jobs import MAX_RECOVERIES, apply_batch, requeue_unfinished


async def test_an_error_of_the_command_itself_fails_it_at_once_and_later_commands_still_apply(
    client: httpx.AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    execute = apply_service._execute  # noqa: SLF001
    runs: list[str] = []

    async def broken_for_one_sku(widgets: Any, current: Any, sku: str, command: Any) -> Any:
        runs.append(sku)
        if sku == "BROKEN-1":
            raise ValueError("this command cannot be applied")
        return await execute(widgets, current, sku, command)

    monkeypatch.setattr(apply_service, "_execute", broken_for_one_sku)

    failed = await client.post("/widgets", json={"sku": "BROKEN-1", "name": "B", "price_cents": 1}, headers=AUTH | WAIT)
    applied = await client.post("/widgets", json={"sku": "FINE-1", "name": "F", "price_cents": 2}, headers=AUTH | WAIT)

    assert failed.status_code == 500
    problem = failed.json()
    assert problem["type"].endswith("/internal")
    assert "ValueError" in problem["detail"]
    # Run with its batch, then once more on its own in a savepoint: never again by a retry of its job.
    assert runs.count("BROKEN-1") <= 2, "a permanent failure is not retried"
    assert applied.status_code == 200
    assert await widget_row(app, "BROKEN-1") is None
    assert (await widget_row(app, "FINE-1")) is not None
    events = [(event.type, event.sku) for event in await outbox(app)]
    assert events == [("command.failed", "BROKEN-1"), ("widget.created", "FINE-1")]


async def test_the_database_failing_is_retried_and_the_command_then_succeeds(
    client: httpx.AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    execute = apply_service._execute  # noqa: SLF001
    attempts: list[int] = []

    async def down_twice(widgets: Any, current: Any, sku: str, command: Any) -> Any:
        attempts.append(1)
        if len(attempts) <= 2:
            # As the repository raises it: Advanced Alchemy wraps SQLAlchemy's error, which wraps the driver's.
            dropped = OperationalError("SELECT 1", {}, ConnectionRefusedError("the database is restarting"))
            raise RepositoryError("There was an issue processing the statement.") from dropped
        return await execute(widgets, current, sku, command)

    monkeypatch.setattr(apply_service, "_execute", down_twice)

    response = await client.post(
        "/widgets", json={"sku": "RETRY-1", "name": "R", "price_cents": 3}, headers=AUTH | WAIT
    )

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    assert len(attempts) == 3
    assert [event.type for event in await outbox(app)] == ["widget.created"]


async def test_a_job_whose_command_a_later_job_already_applied_changes_nothing(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    """Batching in action: the second command's job applies both, the first's then finds nothing to do."""
    async with unit_of_work(app.state.connections.alchemy) as session:
        service = AcceptService(session=session)
        first, _ = await service.accept("ORDER-1", CreateWidget(values={"name": "One", "price_cents": 1}))
        second, _ = await service.accept("ORDER-1", UpdateWidget(changes={"price_cents": 2}))
    assert (await apply_batch(app.state.connections, [second.id])).skus == ["ORDER-1"]
    assert (await apply_batch(app.state.connections, [first.id])).skus == ["ORDER-1"]

    row = await widget_row(app, "ORDER-1")
    assert row is not None
    assert (row.price_cents, row.version) == (2, 2)
    assert [event.type for event in await outbox(app)] == ["widget.created", "widget.updated"]


async def test_a_command_that_fails_midway_leaves_nothing_of_itself(
    client: httpx.AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.post("/widgets", json={"sku": "HALF-1", "name": "Half", "price_cents": 1}, headers=AUTH | WAIT)
    execute = apply_service._execute  # noqa: SLF001

    async def fails_after_changing(widgets: Any, current: Any, sku: str, command: Any) -> Any:
        await execute(widgets, current, sku, command)  # the update is made, then something breaks
        raise ValueError("broke after the change")

    monkeypatch.setattr(apply_service, "_execute", fails_after_changing)
    response = await client.patch("/widgets/HALF-1", json={"price_cents": 2}, headers=AUTH | WAIT)

    assert response.status_code == 500
    assert response.json()["type"].endswith("/internal")
    row = await widget_row(app, "HALF-1")
    assert row is not None
    assert (row.price_cents, row.version) == (1, 1)
    assert [event.type for event in await outbox(app)] == ["widget.created", "command.failed"]


async def test_a_command_the_recovery_pass_keeps_requeueing_ends_failed(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    """A command whose job never finishes (its worker dies each time) is queued again a bounded number of times."""
    queue = app.plugins.get(SAQPlugin).get_queue(app.state.settings.queue_name)
    async with app.state.connections.alchemy.get_session() as session:
        service = AcceptService(session=session)
        lost, _ = await service.accept("LOST-1", CreateWidget(values={"name": "Lost", "price_cents": 1}))
        doomed, _ = await service.accept("DOOMED-1", CreateWidget(values={"name": "Doomed", "price_cents": 1}))
        await session.execute(
            update(CommandRecord).where(CommandRecord.id == doomed.id).values(recoveries=MAX_RECOVERIES)
        )
        await session.commit()

    assert await requeue_unfinished(app.state.connections, [queue]) == 1  # LOST-1; DOOMED-1 is given up on

    doomed_now = (await client.get(f"/commands/{doomed.id}")).json()
    assert (doomed_now["status"], doomed_now["error"]["type"]) == ("failed", "/problems/internal")
    assert f"{MAX_RECOVERIES} times" in doomed_now["error"]["detail"]
    async with app.state.connections.alchemy.get_session() as session:
        assert (await session.get(CommandRecord, lost.id)).recoveries == 1
    await eventually(lambda: _exists(app, "LOST-1"), 10, "the re-queued command to be applied")
    assert await widget_row(app, "DOOMED-1") is None
    assert ("command.failed", "DOOMED-1") in [(event.type, event.sku) for event in await outbox(app)]


async def _exists(app: Litestar, sku: str) -> bool:
    return await widget_row(app, sku) is not None
