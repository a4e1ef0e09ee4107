"""Accepting commands: each recorded with its sku's next seq, durable before anyone is told (the caller commits)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

from advanced_alchemy.exceptions import IntegrityError as RepositoryIntegrityError
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from uuid_utils.compat import uuid7

from widgetry.domain.commands import Command, CommandStatus, command_type, dump_command
from widgetry.domain.models import CommandRecord
from widgetry.services.commands import CommandService, Submission, command_fingerprint, next_seq, next_seqs
from widgetry.services.unavailable import is_unavailable

ACCEPT_COLUMNS = ("id", "type", "sku", "seq", "payload", "status", "accepted_at")


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
            insert(CommandRecord),
            [{column: getattr(record, column) for column in ACCEPT_COLUMNS} for record in records],
        )
        return records
