"""Accepting commands: each recorded with its sku's next seq, durable before anyone is told, then queued. A web
process records requests' commands with a group commit (`CommandIntake`); a command with an idempotency key, or an
operator's, through `AcceptService` in the caller's unit of work."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID

from advanced_alchemy.exceptions import IntegrityError as RepositoryIntegrityError
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from uuid_utils.compat import uuid7

from widgetry.domain.commands import Command, CommandStatus, command_type, dump_command, encode_command
from widgetry.domain.models import CommandRecord
from widgetry.services.batching import GroupCommit
from widgetry.services.commands import CommandService, Submission, command_fingerprint, next_seq, next_seqs
from widgetry.services.queries.commands import RECORD_BATCH
from widgetry.services.queries.held import held_connection
from widgetry.services.queue import enqueue_or_leave_to_recovery
from widgetry.services.unavailable import is_unavailable
from widgetry.services.units import unit_of_work

if TYPE_CHECKING:
    from advanced_alchemy.config import SQLAlchemyAsyncConfig
    from saq.queue import Queue

    from widgetry.settings import Settings

logger = logging.getLogger(__name__)

MAX_BATCH = 200
"""Commands recorded in one transaction and queued as one job per partition, at most."""
ACCEPT_COLUMNS = ("id", "type", "sku", "seq", "payload", "status", "accepted_at")
RECORD_COMMANDS = insert(CommandRecord.__table__)
"""Core, on the table: the ORM's bulk insert of the same rows costs a lone write 0.1 ms more of bookkeeping."""


class AcceptService(CommandService):
    """Records commands: one with its idempotency key, or a batch from intake's group commit."""

    async def accept(
        self, sku: str, command: Command, idempotency_key: str | None = None, command_id: UUID | None = None
    ) -> tuple[CommandRecord, bool]:
        """Records the command with the next sequence number of its sku (the caller commits before anyone is told).

        With an idempotency key already used for the same command, returns that command instead (and `False`):
        concurrent twins race to the key's unique index, and the losers get the winner's command. The insert is in a
        savepoint, so a loser's transaction goes on to read the winner's.
        """
        payload = dump_command(command)
        fingerprint = command_fingerprint(command_type(command), sku, payload) if idempotency_key else None
        if idempotency_key and (original := await self.original(idempotency_key, fingerprint)):
            return original, False
        try:
            async with self.session.begin_nested():
                record = await self.create(
                    CommandRecord(
                        id=command_id or uuid7(),
                        type=command_type(command),
                        sku=sku,
                        seq=await next_seq(self.session, sku),
                        payload=payload,
                        status=CommandStatus.ACCEPTED.value,
                        accepted_at=datetime.now(UTC),
                        idempotency_key=idempotency_key,
                        fingerprint=fingerprint,
                    )
                )
        except (IntegrityError, RepositoryIntegrityError) as error:
            # A connection lost mid-insert is reported as an integrity error too: the transaction is gone with it.
            if is_unavailable(error):
                raise
            if idempotency_key and (original := await self.original(idempotency_key, fingerprint)):
                return original, False
            raise
        return record, True

    async def accept_many(self, submissions: Sequence[Submission]) -> list[CommandRecord]:
        """Records commands submitted together (intake's group commit) in one transaction, in the order given:
        each sku's counter is bumped once for all of its commands, and the commands are inserted in one statement
        (the caller's commit makes them all durable before anyone is told)."""
        last_seqs = await next_seqs(self.session, Counter(submission.sku for submission in submissions))
        seq_of = {sku: last - count + 1 for sku, (last, count) in last_seqs.items()}
        accepted_at = datetime.now(UTC)
        records = []
        for submission in submissions:
            seq = seq_of[submission.sku]
            seq_of[submission.sku] = seq + 1
            records.append(submission.record(accepted_at, seq))
        # A bulk INSERT, not the unit of work: nothing about these rows needs tracking in the session, and on the
        # intake path that bookkeeping is a measurable share of each write's cost.
        await self.session.execute(
            RECORD_COMMANDS, [{column: getattr(record, column) for column in ACCEPT_COLUMNS} for record in records]
        )
        return records


class CommandIntake:
    """Records write requests' commands with a group commit, and queues each batch as one job per partition.

    Requests arriving while a batch commits join the next one, so under load one transaction and one job carry
    many commands, and a request alone is recorded at once. Nobody is answered before the commit that makes their
    command durable. Each web process has one.
    """

    def __init__(self, alchemy: SQLAlchemyAsyncConfig, queues: Sequence[Queue], settings: Settings) -> None:
        self._alchemy = alchemy
        self._queues = queues
        self._settings = settings
        self._batches = GroupCommit(self._record_and_queue, max_items=MAX_BATCH, name="widgetry-intake")
        self._held = held_connection(alchemy.get_engine())
        self._queueing: set[asyncio.Task[None]] = set()

    async def accept(self, submission: Submission) -> CommandRecord:
        """Records the command (committed) and queues it; returns its record."""
        return await self._batches.submit(submission)

    async def _record_and_queue(self, batch: list[Submission]) -> list[CommandRecord | Exception]:
        """Records the batch, and queues it while its requests are answered: durable is what a client is promised
        (a command recorded and not queued is queued by the recovery pass), so nobody waits on Redis, and the next
        batch is recorded while this one is queued."""
        outcomes = await self._record(batch)
        if recorded := [outcome for outcome in outcomes if not isinstance(outcome, Exception)]:
            task = asyncio.create_task(self._queue_recorded(recorded), name="widgetry-enqueue")
            self._queueing.add(task)
            task.add_done_callback(self._queueing.discard)
        return outcomes

    async def _queue_recorded(self, records: list[CommandRecord]) -> None:
        try:
            await enqueue_or_leave_to_recovery(self._queues, self._settings, records)
        except Exception:
            logger.exception("%d commands recorded, not queued: left to the recovery pass", len(records))

    async def drain(self) -> None:
        """Waits for the batches still being queued: as the process stops, before its Redis client closes."""
        while self._queueing:
            await asyncio.gather(*self._queueing, return_exceptions=True)

    async def _record(self, batch: list[Submission]) -> list[CommandRecord | Exception]:
        """Records the batch in one transaction. A database that is down fails them all (a 503 each); something
        it refused in one command is found by recording them one by one, so only that one fails."""
        try:
            return list(await self._accept(batch))
        except Exception as error:
            if is_unavailable(error) or len(batch) == 1:
                raise
        outcomes: list[CommandRecord | Exception] = []
        for submission in batch:
            try:
                outcomes += await self._accept([submission])
            except Exception as error:  # noqa: BLE001 - this request's outcome
                outcomes.append(error)
        return outcomes

    async def _accept(self, batch: list[Submission]) -> list[CommandRecord]:
        if self._held is None:
            async with unit_of_work(self._alchemy) as session:
                return await AcceptService(session=session).accept_many(batch)
        # PostgreSQL: one statement outside any transaction, so it commits as it ends: one round trip (no BEGIN, no
        # COMMIT) makes the batch durable.
        accepted_at = datetime.now(UTC)
        await self._held.fetch(
            RECORD_BATCH,
            {
                "ids": [submission.id for submission in batch],
                "types": [command_type(submission.command) for submission in batch],
                "skus": [submission.sku for submission in batch],
                "payloads": [encode_command(submission.command) for submission in batch],
                "accepted_at": accepted_at,
            },
        )
        return [submission.record(accepted_at) for submission in batch]
