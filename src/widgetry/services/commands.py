"""Command intake and apply: the durable record, per-sku ordering, exactly-once effect, one event per outcome."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import msgspec
from advanced_alchemy.exceptions import IntegrityError as RepositoryIntegrityError
from advanced_alchemy.filters import LimitOffset, OrderBy
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import delete, null, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from widgetry.connections import is_unavailable
from widgetry.domain.commands import (
    Command,
    CommandStatus,
    CreateWidget,
    DeleteWidget,
    UpdateWidget,
    command_type,
    dump_command,
    load_command,
)
from widgetry.domain.events import EventType
from widgetry.domain.models import CommandRecord, EventRecord, WidgetHead
from widgetry.domain.problems import CommandFailed, IdempotencyKeyReused
from widgetry.services.heads import lock_head
from widgetry.services.widgets import WidgetService

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


logger = logging.getLogger(__name__)

UNFINISHED = (CommandStatus.ACCEPTED.value, CommandStatus.RUNNING.value)


class RetryRefused(Exception):
    """A retry that was not made: the command is unknown or did not fail. Nothing was changed."""


class CommandRepository(SQLAlchemyAsyncRepository[CommandRecord]):
    model_type = CommandRecord


class CommandService(SQLAlchemyAsyncRepositoryService[CommandRecord]):
    repository_type = CommandRepository

    @property
    def session(self) -> AsyncSession:
        return self.repository.session

    async def accept(
        self, sku: str, command: Command, idempotency_key: str | None = None
    ) -> tuple[CommandRecord, bool]:
        """Records the command with the next sequence number of its sku, and commits before anyone is told.

        With an idempotency key already used for the same command, returns that command instead (and `False`):
        concurrent twins race to the key's unique index, and the losers get the winner's command.
        """
        payload = dump_command(command)
        fingerprint = _fingerprint(command_type(command), sku, payload) if idempotency_key else None
        if idempotency_key and (original := await self._original(idempotency_key, fingerprint)):
            return original, False
        try:
            record = await self.create(
                CommandRecord(
                    type=command_type(command),
                    sku=sku,
                    seq=await self._next_seq(sku),
                    payload=payload,
                    status=CommandStatus.ACCEPTED.value,
                    accepted_at=datetime.now(UTC),
                    idempotency_key=idempotency_key,
                    fingerprint=fingerprint,
                )
            )
            await self.session.commit()
        except (IntegrityError, RepositoryIntegrityError):
            await self.session.rollback()
            if idempotency_key and (original := await self._original(idempotency_key, fingerprint)):
                return original, False
            raise
        return record, True

    async def _original(self, idempotency_key: str, fingerprint: str | None) -> CommandRecord | None:
        original = await self.get_one_or_none(idempotency_key=idempotency_key)
        if original is not None and original.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                f"This Idempotency-Key was used for a different request (command {original.id})."
            )
        return original

    async def apply(self, command_id: UUID) -> str | None:
        """Applies the command and every earlier pending command of its sku, in accept order, in one transaction.

        Re-running it (a re-delivered job, or a sibling job that already drained this one) changes nothing: the
        sku's `applied_seq` is the fence. Returns the sku, whose committed events are then to be published.
        """
        # Only its sku and seq are used. A retry may move a failed command's seq on meanwhile: a job that read the old
        # one applies less, never out of order, and the retry's job (or the recovery pass) applies the rest.
        record = await self.get_one_or_none(id=command_id)
        if record is None or record.sku is None:
            return None
        sku = record.sku  # read before a rollback expires the record
        applied_seq = await lock_head(self.session, sku)
        if record.seq <= applied_seq:
            await self.session.rollback()
            return sku
        pending = await self.session.scalars(
            select(CommandRecord)
            .where(
                CommandRecord.sku == record.sku,
                CommandRecord.seq > applied_seq,
                CommandRecord.seq <= record.seq,
                # One already ended as failed (its retries spent) keeps that outcome; the rest still apply in order.
                CommandRecord.status.in_(UNFINISHED),
            )
            .order_by(CommandRecord.seq)
        )
        widgets = WidgetService(session=self.session)
        for pending_record in pending:
            self.session.add(await self._apply_one(widgets, pending_record))
        await self.session.execute(
            update(WidgetHead).where(WidgetHead.sku == record.sku).values(applied_seq=record.seq)
        )
        await self.session.commit()
        return record.sku

    async def _apply_one(self, widgets: WidgetService, record: CommandRecord) -> EventRecord:
        """Applies one command inside a savepoint: a command that fails leaves nothing of itself behind (no half
        update, no version bump without its event), and the commands after it still apply."""
        try:
            async with self.session.begin_nested():
                event_type, version, data = await _execute(widgets, record.sku or "", load_command(record.payload))
        except CommandFailed as failure:
            return _fail(record, failure)
        except Exception as error:
            if is_unavailable(error):
                # The database or Redis failing is the environment, not the command: the whole job is retried.
                raise
            # Anything else is this command's own (a bug, a value the database refuses) and would fail every retry
            # the same way: it fails now.
            logger.exception("command %s cannot be applied", record.id)
            return _fail(record, CommandFailed(f"The command could not be applied ({type(error).__name__})."))
        record.status, record.finished_at = CommandStatus.SUCCEEDED.value, datetime.now(UTC)
        return _event(record, event_type, version, data)

    async def _next_seq(self, sku: str) -> int:
        insert = postgresql.insert if self.session.bind.dialect.name == "postgresql" else sqlite.insert
        statement = (
            insert(WidgetHead)
            .values(sku=sku, accepted_seq=1, applied_seq=0)
            .on_conflict_do_update(index_elements=[WidgetHead.sku], set_={"accepted_seq": WidgetHead.accepted_seq + 1})
            .returning(WidgetHead.accepted_seq)
        )
        return (await self.session.execute(statement)).scalar_one()

    async def mark_failed(self, command_id: UUID, failure: CommandFailed) -> str | None:
        """Ends a command that could not be applied at all (its retries spent) with its problem and one event.

        Under the sku's lock, and only if it is still unfinished: a sibling job may have applied it meanwhile.
        Returns the sku when it did end the command (its event is then to be published), else `None`.
        """
        record = await self.get_one_or_none(id=command_id)
        if record is None or record.sku is None:
            return None
        sku = record.sku
        await lock_head(self.session, sku)
        await self.session.refresh(record)
        if record.status not in UNFINISHED:
            await self.session.rollback()
            return None
        self.session.add(_fail(record, failure))
        await self.session.commit()
        return sku

    async def failed(self, limit: int) -> Sequence[CommandRecord]:
        """Commands that ended `failed`, newest first: what an operator looks at before retrying one."""
        return await self.get_many(
            CommandRecord.status == CommandStatus.FAILED.value,
            OrderBy("finished_at", "desc"),
            LimitOffset(limit=limit, offset=0),
        )

    async def retry(self, command_id: UUID) -> CommandRecord:
        """Accepts a failed command again as the newest command of its sku, and commits; the caller queues it.

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
        if record.status != CommandStatus.FAILED.value:
            refused = RetryRefused(f"Command {command_id} is {record.status}: only a failed command can be retried.")
            await self.session.rollback()
            raise refused
        result = await self.session.execute(
            update(CommandRecord)
            .where(CommandRecord.id == record.id)
            .values(
                seq=await self._next_seq(record.sku),
                status=CommandStatus.ACCEPTED.value,
                accepted_at=datetime.now(UTC),
                finished_at=None,
                recoveries=0,
                error=null(),  # SQL NULL, as on a command that never ran: the ORM would store None as JSON `null`
            )
            .returning(CommandRecord),
            execution_options={"populate_existing": True},
        )
        retried = result.scalar_one()
        await self.session.commit()
        return retried

    async def count_recoveries(self, command_ids: Sequence[UUID]) -> None:
        """Counts one more recovery for each command (their jobs were queued anew by the recovery pass)."""
        await self.session.execute(
            update(CommandRecord)
            .where(CommandRecord.id.in_(command_ids))
            .values(recoveries=CommandRecord.recoveries + 1)
        )
        await self.session.commit()

    async def purge_finished_before(self, cutoff: datetime) -> int:
        """Forgets commands that finished before `cutoff` (they are kept for the retention period, not forever)."""
        result = await self.session.execute(delete(CommandRecord).where(CommandRecord.finished_at < cutoff))
        await self.session.commit()
        return result.rowcount

    async def unfinished(
        self, accepted_before: datetime | None = None, limit: int | None = None
    ) -> Sequence[CommandRecord]:
        """Commands accepted (before the given time) and not yet finished, oldest first."""
        filters: list[Any] = [CommandRecord.status.in_(UNFINISHED), OrderBy("accepted_at", "asc")]
        if accepted_before is not None:
            filters.append(CommandRecord.accepted_at < accepted_before)
        if limit is not None:
            filters.append(LimitOffset(limit=limit, offset=0))
        return await self.get_many(*filters)


def _fail(record: CommandRecord, failure: CommandFailed) -> EventRecord:
    record.status, record.error, record.finished_at = CommandStatus.FAILED.value, failure.problem(), datetime.now(UTC)
    return _event(record, EventType.COMMAND_FAILED, None, {"status": record.status, "error": record.error})


def _event(record: CommandRecord, event_type: EventType, version: int | None, data: dict[str, Any]) -> EventRecord:
    return EventRecord(
        event_id=uuid4(),
        type=event_type.value,
        sku=record.sku,
        version=version,
        command_id=record.id,
        occurred_at=record.finished_at,
        data=data,
    )


def _fingerprint(kind: str, sku: str, payload: dict[str, Any]) -> str:
    return hashlib.sha256(msgspec.json.encode([kind, sku, payload], order="sorted")).hexdigest()


async def _execute(widgets: WidgetService, sku: str, command: Command) -> tuple[EventType, int, dict[str, Any]]:
    match command:
        case CreateWidget(values=values):
            widget = await widgets.create_widget(sku, values)
            return EventType.WIDGET_CREATED, widget.version, widget.public()
        case UpdateWidget(changes=changes, expected_version=expected):
            widget = await widgets.update_widget(sku, changes, expected)
            return EventType.WIDGET_UPDATED, widget.version, widget.public()
        case DeleteWidget(expected_version=expected):
            widget = await widgets.delete_widget(sku, expected)
            return EventType.WIDGET_DELETED, widget.version + 1, {"sku": sku}
    raise TypeError(f"unknown command {command!r}")  # pragma: no cover - the union is closed
