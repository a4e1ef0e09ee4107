"""`widgetry commands failed` and `widgetry commands retry`, run as an operator runs them (a subprocess), against
the real PostgreSQL and Redis, with the app's in-process worker applying what they queue."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar_saq import SAQPlugin
from sqlalchemy import select, update

from tests.support import API_KEY, AUTH, WAIT, free_port, serve
from tests.unit.state import queued_jobs, settled_stream, stream, widget_row
from tests.unit.test_commands import SPROCKET, create, finished, redis_down
from widgetry.app import create_app
from widgetry.domain.models import CommandRecord, WidgetHead
from widgetry.domain.problems import CommandFailed
from widgetry.services.apply import ApplyService
from widgetry.services.units import unit_of_work
from widgetry.settings import Settings
from widgetry.workers.jobs import publish_pending

SPENT = "The command could not be applied after 10 attempts."


async def widgetry(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m widgetry ...` with only the given settings, in a thread: the test's event loop goes on serving
    the app (its worker included) meanwhile."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("WIDGETRY_") and name not in ("DATABASE_URL", "REDIS_URL")
    }
    # Wide enough that the CLI's framed error messages are not wrapped mid-sentence.
    environ |= {"COLUMNS": "240", **env}
    command = [sys.executable, "-m", "widgetry", *args]
    return await asyncio.to_thread(subprocess.run, command, env=environ, cwd=cwd, capture_output=True, text=True)


def cli_env(settings: Settings) -> dict[str, str]:
    """What an operator's shell on a PostgreSQL/Redis deployment has set."""
    assert settings.database_url and settings.redis_url
    return {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "WIDGETRY_REDIS_PREFIX": settings.redis_prefix,
    }


async def unqueued(client: httpx.AsyncClient, app: Litestar, method: str, path: str, body: Any = None) -> str:
    """A command recorded while Redis refused its job: accepted, and nothing queued to apply it."""
    queue = app.plugins.get(SAQPlugin).get_queue(app.state.settings.queue_name)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(queue, "enqueue", redis_down)
        accepted = await client.request(method, path, json=body, headers=AUTH)
    assert accepted.status_code == 202, accepted.text
    return accepted.json()["id"]


async def spent(client: httpx.AsyncClient, app: Litestar, method: str, path: str, body: Any = None) -> str:
    """A command that ended `failed` with an `internal` problem, as after its job's attempts were spent."""
    command_id = await unqueued(client, app, method, path, body)
    async with unit_of_work(app.state.connections.alchemy) as session:
        sku = await ApplyService(session=session).mark_failed(UUID(command_id), CommandFailed(SPENT))
    await publish_pending(app.state.connections, [sku] if sku else [])
    return command_id


async def as_if_the_grace_had_passed(app: Litestar, command_id: str) -> None:
    """Dates the command's acceptance back past the recovery grace, instead of waiting that long."""
    accepted_at = datetime.now(UTC) - timedelta(seconds=app.state.settings.recovery_grace_seconds + 1)
    async with app.state.connections.alchemy.get_session() as session:
        await session.execute(
            update(CommandRecord).where(CommandRecord.id == UUID(command_id)).values(accepted_at=accepted_at)
        )
        await session.commit()


async def recorded_state(app: Litestar) -> tuple[list[Any], ...]:
    """Everything a retry could change: command records, sku heads, the event stream, the queue."""
    async with app.state.connections.alchemy.get_session() as session:
        commands = (await session.execute(select(CommandRecord).order_by(CommandRecord.id))).scalars().all()
        heads = (await session.execute(select(WidgetHead).order_by(WidgetHead.sku))).scalars().all()
    return (
        [(c.id, c.seq, c.status, c.accepted_at, c.finished_at, c.error) for c in commands],
        [(h.sku, h.accepted_seq, h.applied_seq) for h in heads],
        await stream(app),
        [await queued_jobs(app)],
    )


def events_of(events: list[dict[str, Any]], command_id: str) -> list[str]:
    return [event["type"] for event in events if event["command_id"] == command_id]


async def test_failed_commands_are_listed_newest_first_and_a_retry_applies_one_exactly_once(
    app: Litestar, real_settings: Settings, tmp_path: Path
) -> None:
    env = cli_env(real_settings)
    async with serve(app) as client:
        first = await spent(client, app, "POST", "/widgets", SPROCKET)
        second = await spent(client, app, "POST", "/widgets", SPROCKET | {"sku": "SPR-2"})
        first_failed = (await client.get(f"/commands/{first}")).json()

        listed = await widgetry("commands", "failed", "--json", env=env, cwd=tmp_path)
        table = await widgetry("commands", "failed", env=env, cwd=tmp_path)
        retried = await widgetry("commands", "retry", first, env=env, cwd=tmp_path)
        command = await finished(client, f"/commands/{first}")
        events = await settled_stream(app)
        row = await widget_row(app, "SPR-1")

    assert listed.returncode == 0, listed.stderr
    failed = msgspec.json.decode(listed.stdout)
    assert [entry["id"] for entry in failed] == [second, first]
    assert failed[1] | {"finished_at": None} == {
        "id": first,
        "type": "create_widget",
        "sku": "SPR-1",
        "finished_at": None,
        "problem": "internal",
        "detail": SPENT,
    }
    assert datetime.fromisoformat(failed[1]["finished_at"]) == datetime.fromisoformat(first_failed["finished_at"])
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["FINISHED", "ID", "TYPE", "SKU", "PROBLEM", "DETAIL"]
    assert [line.split()[1:5] for line in lines] == [
        [second, "create_widget", "SPR-2", "internal"],
        [first, "create_widget", "SPR-1", "internal"],
    ]
    assert all(line.endswith(SPENT) for line in lines)

    assert retried.returncode == 0, retried.stderr
    assert "Queued" in retried.stdout
    assert (command["status"], command["error"]) == ("succeeded", None)
    assert datetime.fromisoformat(command["accepted_at"]) > datetime.fromisoformat(first_failed["finished_at"])
    assert (row.name, row.version) == ("Sprocket", 1)
    assert events_of(events, first) == ["command.failed", "widget.created"]
    assert events_of(events, second) == ["command.failed"]


async def test_a_retried_command_takes_effect_after_the_commands_accepted_before_the_retry(
    app: Litestar, real_settings: Settings, tmp_path: Path
) -> None:
    async with serve(app) as client:
        failed_create = await spent(client, app, "POST", "/widgets", SPROCKET | {"name": "First"})
        created = await create(client, SPROCKET | {"name": "Second"})
        pending_delete = await unqueued(client, app, "DELETE", "/widgets/SPR-1")

        retried = await widgetry("commands", "retry", failed_create, env=cli_env(real_settings), cwd=tmp_path)
        retried_create = await finished(client, f"/commands/{failed_create}")
        deleted = (await client.get(f"/commands/{pending_delete}")).json()
        events = await settled_stream(app)
        row = await widget_row(app, "SPR-1")

    assert retried.returncode == 0, retried.stderr
    # Applied in its old place, the create would have come before the second one (which would then fail) and the
    # delete: the retry re-created the widget after both instead.
    assert (retried_create["status"], deleted["status"]) == ("succeeded", "succeeded")
    assert [(e["type"], e["command_id"]) for e in events if e["type"].startswith("widget.")] == [
        ("widget.created", created["id"]),
        ("widget.deleted", pending_delete),
        ("widget.created", failed_create),
    ]
    assert (row.name, row.version) == ("First", 1)


async def test_retrying_a_command_that_did_not_fail_is_refused_and_changes_nothing(
    app: Litestar, real_settings: Settings, tmp_path: Path
) -> None:
    env = cli_env(real_settings)
    async with serve(app) as client:
        succeeded = await create(client)
        before = await recorded_state(app)

        again = await widgetry("commands", "retry", succeeded["id"], env=env, cwd=tmp_path)
        unknown = await widgetry("commands", "retry", str(uuid4()), env=env, cwd=tmp_path)
        garbage = await widgetry("commands", "retry", "not-a-command-id", env=env, cwd=tmp_path)
        after = await recorded_state(app)

    assert again.returncode != 0
    assert f"Command {succeeded['id']} is succeeded: only a failed command can be retried." in again.stderr
    assert unknown.returncode != 0
    assert "There is no command" in unknown.stderr
    assert garbage.returncode != 0
    assert "'not-a-command-id' is not a valid UUID" in garbage.stderr
    assert after == before


async def test_no_failed_commands_is_said_plainly(real_settings: Settings, tmp_path: Path) -> None:
    env = cli_env(real_settings)

    table = await widgetry("commands", "failed", env=env, cwd=tmp_path)
    listed = await widgetry("commands", "failed", "--json", env=env, cwd=tmp_path)

    assert (table.returncode, table.stdout) == (0, "No failed commands.\n")
    assert (listed.returncode, listed.stdout) == (0, "[]\n")


async def test_a_retry_while_redis_is_unreachable_stays_accepted_and_the_recovery_pass_queues_it(
    real_settings: Settings, tmp_path: Path
) -> None:
    app = create_app(msgspec.structs.replace(real_settings, recovery_interval_seconds=1))
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    async with serve(app) as client:
        command_id = await spent(client, app, "POST", "/widgets", SPROCKET)

        retried = await widgetry(
            "commands", "retry", command_id, env=cli_env(real_settings) | {"REDIS_URL": unreachable}, cwd=tmp_path
        )
        recorded = (await client.get(f"/commands/{command_id}")).json()
        await as_if_the_grace_had_passed(app, command_id)
        command = await finished(client, f"/commands/{command_id}")
        events = await settled_stream(app)

    assert retried.returncode == 0, retried.stderr
    assert "Redis could not be reached" in retried.stdout
    assert "recovery pass queues it" in retried.stdout
    assert (recorded["status"], recorded["error"], recorded["finished_at"]) == ("accepted", None, None)
    assert command["status"] == "succeeded"
    assert events_of(events, command_id) == ["command.failed", "widget.created"]


async def test_on_the_embedded_defaults_the_servers_recovery_pass_queues_a_retried_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = create_app(Settings(api_keys=(API_KEY,), recovery_interval_seconds=1))
    async with serve(app) as client:
        command_id = await spent(client, app, "POST", "/widgets", SPROCKET)

        # No DATABASE_URL or REDIS_URL: the server's SQLite file in this directory, and a queue the CLI cannot reach.
        retried = await widgetry("commands", "retry", command_id, env={}, cwd=tmp_path)
        recorded = (await client.get(f"/commands/{command_id}")).json()
        await as_if_the_grace_had_passed(app, command_id)
        command = await finished(client, f"/commands/{command_id}")
        row = await widget_row(app, "SPR-1")

    assert retried.returncode == 0, retried.stderr
    assert "No REDIS_URL" in retried.stdout
    assert "recovery pass queues it" in retried.stdout
    assert recorded["status"] == "accepted"
    assert command["status"] == "succeeded"
    assert row is not None


async def test_commands_show_prints_a_command_its_outcome_and_its_events(
    app: Litestar, real_settings: Settings, tmp_path: Path
) -> None:
    env = cli_env(real_settings)
    async with serve(app) as client:
        created = await create(client)
        patched = (await client.patch("/widgets/SPR-1", json={"price_cents": 5}, headers=AUTH | WAIT)).json()
        shown = await widgetry("commands", "show", patched["id"], "--json", env=env, cwd=tmp_path)
        listing = await widgetry("commands", "show", created["id"], env=env, cwd=tmp_path)
        unknown = await widgetry("commands", "show", str(uuid4()), env=env, cwd=tmp_path)
        published = [entry for entry in await stream(app) if entry["command_id"] == patched["id"]]

    assert shown.returncode == 0, shown.stderr
    command = msgspec.json.decode(shown.stdout)
    assert {name: command[name] for name in ("id", "type", "sku", "seq", "status", "error", "recoveries")} == {
        "id": patched["id"],
        "type": "update_widget",
        "sku": "SPR-1",
        "seq": 2,
        "status": "succeeded",
        "error": None,
        "recoveries": 0,
    }
    assert command["payload"]["changes"] == {"price_cents": 5}
    assert [(event["type"], event["version"]) for event in command["events"]] == [("widget.updated", 2)]
    assert command["events"][0]["stream_id"] is not None
    assert len(published) == 1
    assert listing.returncode == 0, listing.stderr
    lines = dict(line.split(maxsplit=1) for line in listing.stdout.splitlines())
    assert (lines["id"], lines["status"], lines["seq"]) == (created["id"], "succeeded", "1")
    assert lines["events"].startswith('{"type":"widget.created","version":1,')
    assert unknown.returncode != 0
    assert "There is no command" in unknown.stderr
