"""Turning a write request into a recorded, queued command, and the command into the response."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Sequence
from typing import Annotated, Any

from litestar import Request, Response
from litestar.params import HeaderParameter
from saq.queue import Queue
from uuid_utils.compat import uuid7

from widgetry.api.imports import ParsedImport
from widgetry.api.schemas import CommandResource, command_url
from widgetry.connections import Connections
from widgetry.domain.commands import Command, CommandStatus
from widgetry.domain.events import EventType
from widgetry.domain.models import CommandRecord
from widgetry.observability import outcomes
from widgetry.services.accept import AcceptService, CommandIntake
from widgetry.services.commands import UNFINISHED, CommandService, Submission
from widgetry.services.imports import ImportService
from widgetry.services.queue import enqueue_or_leave_to_recovery
from widgetry.services.units import unit_of_work
from widgetry.streaming.hub import EventHub

MAX_WAIT_S = 30
IMPORT_OUTCOMES = frozenset({EventType.COMMAND_COMPLETED.value, EventType.COMMAND_FAILED.value})
PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,6})\b", re.IGNORECASE)

PreferHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Prefer",
        description=f"`wait=<seconds>` (at most {MAX_WAIT_S}): answer with the outcome if "
        "the command finishes in that time.",
    ),
]


IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        # No NUL: a key is a token sent in a header, and one with a NUL is a client's mistake worth telling.
        pattern=r"^[^\x00]*$",
        description="Repeating a write with the same key and body returns the original command and queues nothing.",
    ),
]


class Intake:
    """Records a command (committed before anyone is told), queues it, and answers `202 Accepted`; with
    `Prefer: wait=N`, waits up to N seconds for the outcome and answers 200 or the command's problem instead.

    Commands without an idempotency key go through the process's group commit; one with a key is recorded on its
    own, since its key must first be looked up (and raced for) in the database.
    """

    def __init__(
        self,
        intake: CommandIntake,
        connections: Connections,
        queues: Sequence[Queue],
        hub: EventHub,
        wait: float,
        idempotency_key: str | None,
    ) -> None:
        self._intake = intake
        self._connections = connections
        self._queues = queues
        self._hub = hub
        self._wait = wait
        self._idempotency_key = idempotency_key
        self._deadline = 0.0
        """When a `Prefer: wait` request stops waiting (the event loop's clock)."""

    async def submit(self, sku: str, command: Command) -> Response[Any]:
        # The id is chosen here so the outcome can be watched for before any worker can finish the command.
        submission = Submission(id=uuid7(), sku=sku, command=command)
        self._deadline = asyncio.get_running_loop().time() + self._wait
        async with self._watch(str(submission.id)) as finished:
            if self._idempotency_key is None:
                record = await self._intake.accept(submission)
            else:
                async with unit_of_work(self._connections.alchemy) as session:
                    record, created = await AcceptService(session=session).accept(
                        sku, command, self._idempotency_key, command_id=submission.id
                    )
                if not created:
                    return replay_response(record)
                await enqueue_or_leave_to_recovery(self._queues, self._connections.settings, [record])
            outcomes.accepted(self._connections, record)
            return await self._answer(record, finished)

    async def submit_import(self, parsed: ParsedImport) -> Response[Any]:
        """Records an import with its rows (one transaction) and queues its job; answers as `submit` does."""
        import_id = uuid7()
        self._deadline = asyncio.get_running_loop().time() + self._wait
        async with self._watch(str(import_id), IMPORT_OUTCOMES) as finished:
            async with unit_of_work(self._connections.alchemy) as session:
                record, created = await ImportService(session=session).accept_import(
                    parsed.rows, parsed.rejected, self._idempotency_key, command_id=import_id
                )
            if not created:
                return replay_response(record)
            await enqueue_or_leave_to_recovery(self._queues, self._connections.settings, [record])
            outcomes.accepted(self._connections, record)
            return await self._answer(record, finished)

    def _watch(
        self, command_id: str, outcomes: frozenset[str] | None = None
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Event | None]:
        """Watches for the command's outcome only when the client will wait for it (`Prefer: wait`)."""
        if not self._wait:
            return contextlib.nullcontext()
        return self._hub.watch_command(command_id, outcomes, deadline=self._deadline)

    async def _answer(self, record: CommandRecord, finished: asyncio.Event | None) -> Response[Any]:
        """`202` with the command at once; with `Prefer: wait`, its outcome if it comes in time."""
        if finished is None:
            return command_response(record)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(self._deadline):
                await finished.wait()
        async with self._connections.alchemy.get_session() as session:
            return command_response(await CommandService(session=session).get(record.id))


def command_response(record: CommandRecord) -> Response[Any]:
    headers = {"Location": command_url(record.id)}
    if record.status == CommandStatus.SUCCEEDED.value:
        return Response(CommandResource.of(record), status_code=200, headers=headers)
    if record.status == CommandStatus.FAILED.value and record.error:
        return Response(
            {**record.error, "command": command_url(record.id)},
            status_code=record.error["status"],
            headers=headers,
            media_type="application/problem+json",
        )
    return Response(CommandResource.of(record), status_code=202, headers=headers)


def replay_response(record: CommandRecord) -> Response[Any]:
    """A repeated request (same idempotency key, same command) gets the original command and queues nothing."""
    finished = record.status not in UNFINISHED
    return Response(
        CommandResource.of(record), status_code=200 if finished else 202, headers={"Location": command_url(record.id)}
    )


def provide_intake(
    request: Request[Any, Any, Any], prefer: PreferHeader = None, idempotency_key: IdempotencyKeyHeader = None
) -> Intake:
    # The process's parts are taken from the app's state rather than declared as dependencies: Litestar resolves
    # sibling dependencies in a task group of their own, a cost paid on every write.
    wait = min(int(found[1]), MAX_WAIT_S) if prefer and (found := PREFER_WAIT.search(prefer)) else 0
    state = request.app.state
    scoped_key = None
    if idempotency_key is not None:
        # Set by the write guard: the fingerprint of the API key, or of the key the dashboard's session signed in with.
        client = request.state.get("client", "")
        scoped_key = scope_idempotency_key(client, idempotency_key)
    return Intake(state.intake, state.connections, state.queues, state.hub, wait, scoped_key)


def scope_idempotency_key(client: str, key: str) -> str:
    """The key as stored: a digest of the client's API key digest and the key it sent. Each client has keys of its
    own (two clients sending the same key never meet), and neither the key nor the API key is stored in clear."""
    return hashlib.sha256(f"{client}\x00{key}".encode()).hexdigest()
