"""The command aggregate: its record, read and kept by operators (failed commands, retries, recovery, retention), and
what accepting and applying share. Accepting is services/accept.py; applying, services/apply.py."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID, uuid4

import msgspec
from advanced_alchemy.filters import LimitOffset, OrderBy
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import TextClause, delete, null, text, update

from widgetry.domain.commands import Command, CommandStatus, command_type, dump_command
from widgetry.domain.events import EventType
from widgetry.domain.models import CommandRecord, EventRecord
from widgetry.domain.problems import IdempotencyKeyReused
from widgetry.services.heads import lock_head

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session


UNFINISHED = (CommandStatus.ACCEPTED.value, CommandStatus.RUNNING.value)
FINISHED_KEY = "widgetry.finished_commands"
"""Where a session keeps the commands it finished (`session.info`), for the observers of its commit to count and log:
those it finished through its unit of work are found there by a listener; those whose outcome a statement wrote, the
statement's caller notes (`note_finished`)."""


class FinishedCommand(Protocol):
    """What noting a finished command reads of it: a record, or a command as an apply reads it (`apply.Pending`)."""

    id: UUID
    type: str
    status: str
    parent_id: UUID | None
    accepted_at: datetime
    finished_at: datetime | None


def note_finished(session: AsyncSession | Session, record: FinishedCommand) -> None:
    """Notes a command the session finished: told once, when (and if) its transaction commits. An import's rows are
    counted as their import, not one by one."""
    if record.parent_id is not None:
        return
    seconds = ((record.finished_at or datetime.now(UTC)) - record.accepted_at).total_seconds()
    session.info.setdefault(FINISHED_KEY, {})[record.id] = (record.type, record.status, seconds)


class Submission(msgspec.Struct, frozen=True):
    """A command as a write request hands it in, with the id it is recorded under (chosen at intake, so the
    request can watch for its outcome before a worker can possibly finish it)."""

    id: UUID
    sku: str
    command: Command

    def record(self, accepted_at: datetime, seq: int | None = None) -> CommandRecord:
        """The command's record as intake stores it."""
        return CommandRecord(
            id=self.id,
            type=command_type(self.command),
            sku=self.sku,
            seq=seq,
            payload=dump_command(self.command),
            status=CommandStatus.ACCEPTED.value,
            accepted_at=accepted_at,
        )


class RetryRefused(Exception):
    """A retry that was not made: the command is unknown or did not fail. Nothing was changed."""


class CommandRepository(SQLAlchemyAsyncRepository[CommandRecord]):
    model_type = CommandRecord


class CommandService(SQLAlchemyAsyncRepositoryService[CommandRecord]):
    """Commands as operators and the recovery pass see them."""

    repository_type = CommandRepository

    @property
    def session(self) -> AsyncSession:
        return self.repository.session

    async def original(self, idempotency_key: str, fingerprint: str | None) -> CommandRecord | None:
        """The command recorded under this idempotency key, if any; one recorded for a different request (another
        fingerprint) is refused."""
        original = await self.get_one_or_none(idempotency_key=idempotency_key)
        if original is not None and original.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                f"This Idempotency-Key was used for a different request (command {original.id})."
            )
        return original

    async def failed(self, limit: int) -> Sequence[CommandRecord]:
        """Commands that ended `failed`, newest first: what an operator looks at before retrying one."""
        return await self.get_many(
            CommandRecord.status == CommandStatus.FAILED.value,
            OrderBy("finished_at", "desc"),
            LimitOffset(limit=limit, offset=0),
        )

    async def retry(self, command_id: UUID) -> CommandRecord:
        """Accepts a failed command again as the newest command of its sku; the caller commits, then queues it.

        It takes the sku's next `seq`, not its old place: it then takes effect after every command accepted before
        the retry (and an old seq may be behind `applied_seq` already, where no job would apply it). `accepted_at`
        becomes now, telling the same order, and the recovery pass treats it as any command just accepted: queued
        again once its grace has passed if no job has applied it. Under the sku's lock, and only if it is still
        `failed`, so two retries of one command re-accept it once.
        """
        record = await self.get_one_or_none(id=command_id)
        if record is None or record.sku is None:
            raise RetryRefused(f"There is no command {command_id}.")
        await lock_head(self.session, record.sku)
        await self.session.refresh(record)
        if record.parent_id is not None:
            # Retried alone, the row would take effect after commands accepted since its import, in its import's name.
            raise RetryRefused(f"Command {command_id} is a row of import {record.parent_id}: import the row again.")
        if record.status != CommandStatus.FAILED.value:
            raise RetryRefused(f"Command {command_id} is {record.status}: only a failed command can be retried.")
        result = await self.session.execute(
            update(CommandRecord)
            .where(CommandRecord.id == record.id)
            .values(
                seq=await next_seq(self.session, record.sku),
                status=CommandStatus.ACCEPTED.value,
                accepted_at=datetime.now(UTC),
                finished_at=None,
                recoveries=0,
                error=null(),  # SQL NULL, as on a command that never ran: the ORM would store None as JSON `null`
            )
            .returning(CommandRecord),
            execution_options={"populate_existing": True},
        )
        return result.scalar_one()

    async def count_recoveries(self, command_ids: Sequence[UUID]) -> None:
        """Counts one more recovery for each command (their jobs were queued anew by the recovery pass)."""
        await self.session.execute(
            update(CommandRecord)
            .where(CommandRecord.id.in_(command_ids))
            .values(recoveries=CommandRecord.recoveries + 1)
        )

    async def purge_finished_before(self, cutoff: datetime) -> int:
        """Forgets commands that finished before `cutoff` (they are kept for the retention period, not forever)."""
        result = await self.session.execute(delete(CommandRecord).where(CommandRecord.finished_at < cutoff))
        return result.rowcount

    async def unfinished(
        self, accepted_before: datetime | None = None, limit: int | None = None
    ) -> Sequence[CommandRecord]:
        """Commands accepted (before the given time) and not yet finished, oldest first; an import's rows are left to
        their import, whose job applies them."""
        filters: list[Any] = [
            CommandRecord.status.in_(UNFINISHED),
            CommandRecord.parent_id.is_(None),
            OrderBy("accepted_at", "asc"),
        ]
        if accepted_before is not None:
            filters.append(CommandRecord.accepted_at < accepted_before)
        if limit is not None:
            filters.append(LimitOffset(limit=limit, offset=0))
        return await self.get_many(*filters)


async def next_seqs(session: AsyncSession, counts: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """Moves each sku's `accepted_seq` on by its count of new commands (creating heads as needed), in sku order
    like every other lock on heads; returns each sku's new `accepted_seq` and its count."""
    ordered = sorted(counts.items())
    parameters: dict[str, Any] = {}
    for n, (sku, count) in enumerate(ordered):
        parameters[f"sku_{n}"], parameters[f"count_{n}"] = sku, count
    rows = await session.execute(_bump_heads(len(ordered)), parameters)
    return {sku: (last, counts[sku]) for sku, last in rows.tuples()}


@functools.lru_cache(maxsize=64)
def _bump_heads(skus: int) -> TextClause:
    """`next_seqs`'s upsert for this many skus, in the syntax PostgreSQL and SQLite share. Text, because SQLAlchemy
    caches no compiled form of its dialects' `insert().on_conflict_do_update()`: built from them, the statement was
    compiled anew for every batch intake records (a third of a lone write's intake, measured)."""
    rows = ", ".join(f"(:sku_{n}, :count_{n}, 0)" for n in range(skus))
    return text(
        f"INSERT INTO widget_heads AS head (sku, accepted_seq, applied_seq) VALUES {rows} "  # noqa: S608 - no input
        "ON CONFLICT (sku) DO UPDATE SET accepted_seq = head.accepted_seq + excluded.accepted_seq "
        "RETURNING sku, accepted_seq"
    )


async def next_seq(session: AsyncSession, sku: str) -> int:
    """The sku's next seq (see `next_seqs`)."""
    return (await next_seqs(session, {sku: 1}))[sku][0]


class EndedCommand(Protocol):
    """What an event about a command needs of it: a record, or a command as an apply reads it (`apply.Pending`)."""

    id: UUID
    sku: str | None
    finished_at: datetime | None


def command_event(record: EndedCommand, event_type: EventType, data: dict[str, Any]) -> EventRecord:
    """An event about the command itself (failed, progress, completed) rather than a widget's change."""
    return EventRecord(
        event_id=uuid4(),
        type=event_type.value,
        sku=record.sku,
        version=None,
        command_id=record.id,
        occurred_at=record.finished_at or datetime.now(UTC),
        data=data,
    )


def command_fingerprint(kind: str, sku: str, payload: dict[str, Any]) -> str:
    return hashlib.sha256(msgspec.json.encode([kind, sku, payload], order="sorted")).hexdigest()
