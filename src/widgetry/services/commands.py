"""Command intake and apply: the durable record, per-sku ordering, exactly-once effect, one event per outcome."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import msgspec
from advanced_alchemy.exceptions import IntegrityError as RepositoryIntegrityError
from advanced_alchemy.filters import LimitOffset, OrderBy
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import bindparam, delete, insert, null, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from uuid_utils.compat import uuid7

from widgetry.domain.commands import (
    Command,
    CommandStatus,
    CreateWidget,
    DeleteWidget,
    UpdateWidget,
    UpsertWidget,
    command_type,
    dump_command,
    load_command,
)
from widgetry.domain.events import EventType
from widgetry.domain.models import CommandRecord, EventRecord, WidgetHead
from widgetry.domain.problems import CommandFailed, IdempotencyKeyReused
from widgetry.services.heads import lock_head, lock_heads
from widgetry.services.queries.commands import CLAIM, READ_TARGETS
from widgetry.services.unavailable import is_unavailable
from widgetry.services.widgets import Current, WidgetService

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


logger = logging.getLogger(__name__)

ACCEPT_COLUMNS = ("id", "type", "sku", "seq", "payload", "status", "accepted_at")
UNFINISHED = (CommandStatus.ACCEPTED.value, CommandStatus.RUNNING.value)

PENDING_COMMANDS = (
    select(CommandRecord)
    # One already ended as failed (its retries spent) keeps that outcome; the rest still apply in order.
    .where(CommandRecord.sku.in_(bindparam("skus", expanding=True)), CommandRecord.status.in_(UNFINISHED))
    .order_by(CommandRecord.sku, CommandRecord.seq)
)
HEADS = WidgetHead.__table__
MOVE_HEADS = update(HEADS).where(HEADS.c.sku == bindparam("head")).values(applied_seq=bindparam("seq"))


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
    repository_type = CommandRepository

    @property
    def session(self) -> AsyncSession:
        return self.repository.session

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
        if idempotency_key and (original := await self._original(idempotency_key, fingerprint)):
            return original, False
        try:
            async with self.session.begin_nested():
                record = await self.create(
                    CommandRecord(
                        id=command_id or uuid7(),
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
        except (IntegrityError, RepositoryIntegrityError) as error:
            # A connection lost mid-insert is reported as an integrity error too: the transaction is gone with it.
            if is_unavailable(error):
                raise
            if idempotency_key and (original := await self._original(idempotency_key, fingerprint)):
                return original, False
            raise
        return record, True

    async def accept_many(self, submissions: Sequence[Submission]) -> list[CommandRecord]:
        """Records commands submitted together (intake's group commit) in one transaction, in the order given:
        each sku's counter is bumped once for all of its commands, and the commands are inserted in one statement
        (the caller's commit makes them all durable before anyone is told)."""
        last_seqs = await self._next_seqs(Counter(submission.sku for submission in submissions))
        next_seq = {sku: last - count + 1 for sku, (last, count) in last_seqs.items()}
        accepted_at = datetime.now(UTC)
        records = []
        for submission in submissions:
            seq = next_seq[submission.sku]
            next_seq[submission.sku] = seq + 1
            records.append(submission.record(accepted_at, seq))
        # A bulk INSERT, not the unit of work: nothing about these rows needs tracking in the session, and on the
        # intake path that bookkeeping is a measurable share of each write's cost.
        await self.session.execute(
            insert(CommandRecord),
            [{column: getattr(record, column) for column in ACCEPT_COLUMNS} for record in records],
        )
        return records

    async def _original(self, idempotency_key: str, fingerprint: str | None) -> CommandRecord | None:
        original = await self.get_one_or_none(idempotency_key=idempotency_key)
        if original is not None and original.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                f"This Idempotency-Key was used for a different request (command {original.id})."
            )
        return original

    async def apply_many(self, targets: dict[str, int], *, careful: bool = False) -> list[str]:
        """Applies every pending command of the skus up to their targets' seqs (what `claim` returned), in accept
        order; returns the skus, whose events are to be published once the caller has committed.

        Re-running it (a re-delivered job, or a sibling job that already drained these) changes nothing: each sku's
        `applied_seq` is the fence. The skus' head rows are locked in sku order, so batches sharing skus queue behind
        each other instead of deadlocking. What a command itself gets wrong fails that command; anything else
        raises, and the caller may apply the batch again `careful`ly, in a new transaction: each command then in a
        savepoint of its own, so the one at fault fails alone and leaves nothing of itself.
        """
        if targets:
            await self._apply_pending(targets, careful=careful)
        return sorted(targets)

    async def claim(self, command_ids: Sequence[UUID]) -> dict[str, int]:
        """Marks the unfinished commands among these `running` (the caller commits, so that they are seen so while
        they are applied); returns the newest seq of each of their skus, up to which the apply goes.

        One statement both claims the commands and reads their skus and seqs. Rows locked by another transaction are
        skipped (PostgreSQL): one applying them (a batch that reached them through an earlier command of their sku)
        or claiming them (the job re-delivered); waiting on it instead could deadlock with an apply that waits on
        this claim's rows. Those, and commands already finished (a re-run, whose events may still wait to be
        published), are read without a claim. A retry may move a failed command's seq on meanwhile: a job that read
        the old one applies less, never out of order, and the retry's job (or the recovery pass) applies the rest.
        """
        claimable = (
            select(CommandRecord.id)
            .where(CommandRecord.id.in_(command_ids), CommandRecord.status.in_(UNFINISHED))
            .with_for_update(skip_locked=True)
        )
        result = await self.session.execute(
            update(CommandRecord)
            .where(CommandRecord.id.in_(claimable.scalar_subquery()))
            .values(status=CommandStatus.RUNNING.value)
            .returning(CommandRecord.id, CommandRecord.sku, CommandRecord.seq),
            execution_options={"synchronize_session": False},
        )
        rows = list(result.tuples().all())
        if unclaimed := set(command_ids) - {command_id for command_id, _, _ in rows}:
            result = await self.session.execute(
                select(CommandRecord.id, CommandRecord.sku, CommandRecord.seq).where(CommandRecord.id.in_(unclaimed))
            )
            rows += result.tuples().all()
        return _targets(rows)

    async def _apply_pending(self, targets: dict[str, int], *, careful: bool) -> None:
        """Locks the skus' heads and applies their pending commands up to the targets' seqs."""
        applied = await lock_heads(self.session, targets)
        behind = {sku: seq for sku, seq in targets.items() if seq > applied[sku]}
        if not behind:
            return
        pending = await self.session.scalars(PENDING_COMMANDS, {"skus": sorted(behind)})
        widgets = WidgetService(session=self.session)
        current = await widgets.current(behind)
        for record in pending.all():
            sku = record.sku or ""
            if applied[sku] < record.seq <= behind[sku]:
                apply = self._apply_carefully if careful else self._apply_one
                if (event := await apply(widgets, current, record)) is not None:
                    self.session.add(event)
        await self.session.execute(MOVE_HEADS, [{"head": sku, "seq": seq} for sku, seq in sorted(behind.items())])
        await self.session.flush()

    async def _apply_one(self, widgets: WidgetService, current: Current, record: CommandRecord) -> EventRecord | None:
        """Applies one command of a batch: what is wrong with the command (the widget exists, is missing, moved on)
        is found before anything changes and fails it; anything else fails the whole batch, which is then applied
        carefully."""
        try:
            change = await _execute(widgets, current, record.sku or "", load_command(record.payload))
        except CommandFailed as failure:
            return _fail(record, failure)
        return _succeed(record, change)

    async def _apply_carefully(
        self, widgets: WidgetService, current: Current, record: CommandRecord
    ) -> EventRecord | None:
        """Applies one command inside a savepoint: a command that fails leaves nothing of itself behind (no half
        update, no version bump without its event), and the commands after it still apply."""
        sku = record.sku or ""
        try:
            async with self.session.begin_nested():
                change = await _execute(widgets, current, sku, load_command(record.payload))
                await self.session.flush()
        except CommandFailed as failure:
            return _fail(record, failure)
        except Exception as error:
            if is_unavailable(error):
                # The database or Redis failing is the environment, not the command: the whole job is retried.
                raise
            # Anything else is this command's own (a bug, a value the database refuses) and would fail every retry
            # the same way: it fails now. Its savepoint is gone, and with it whatever it did to its widget.
            logger.exception("command %s cannot be applied", record.id)
            current.update(await widgets.current([sku]))
            return _fail(record, CommandFailed(f"The command could not be applied ({type(error).__name__})."))
        return _succeed(record, change)

    async def _next_seq(self, sku: str) -> int:
        return (await self._next_seqs({sku: 1}))[sku][0]

    async def _next_seqs(self, counts: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """Moves each sku's `accepted_seq` on by its count of new commands (creating heads as needed), in sku order
        like every other lock on heads; returns each sku's new `accepted_seq` and its count."""
        upsert = postgresql.insert if self.session.bind.dialect.name == "postgresql" else sqlite.insert
        statement = upsert(WidgetHead).values(
            [{"sku": sku, "accepted_seq": count, "applied_seq": 0} for sku, count in sorted(counts.items())]
        )
        statement = statement.on_conflict_do_update(
            index_elements=[WidgetHead.sku],
            set_={"accepted_seq": WidgetHead.accepted_seq + statement.excluded.accepted_seq},
        ).returning(WidgetHead.sku, WidgetHead.accepted_seq)
        return {sku: (last, counts[sku]) for sku, last in (await self.session.execute(statement)).all()}

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
            return None
        if (event := _fail(record, failure)) is not None:
            self.session.add(event)
        await self.session.flush()
        return sku

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


async def claim(autocommit: AsyncEngine, command_ids: Sequence[UUID]) -> dict[str, int]:
    """`CommandService._claim` on PostgreSQL as single statements outside any transaction: the claim is durable, and
    visible, as it ends, with no BEGIN or COMMIT round trip on the path of every command."""
    async with autocommit.connect() as connection:
        rows = list((await connection.execute(CLAIM, {"ids": list(command_ids)})).tuples())
        if unclaimed := set(command_ids) - {command_id for command_id, _, _ in rows}:
            rows += (await connection.execute(READ_TARGETS, {"ids": list(unclaimed)})).tuples()
    return _targets(rows)


def _targets(rows: Sequence[tuple[UUID, str | None, int]]) -> dict[str, int]:
    """The newest seq of each sku among claimed commands: how far each sku's apply goes."""
    targets: dict[str, int] = {}
    for _, sku, seq in rows:
        if sku is not None:
            targets[sku] = max(seq, targets.get(sku, 0))
    return targets


Change = tuple[EventType, int, dict[str, Any]]
"""What applying a command did: its event's type, the widget's version, and the event's data."""


def _fail(record: CommandRecord, failure: CommandFailed) -> EventRecord | None:
    """Ends the command failed, with its `command.failed` event; an import's row has none: it fails as a line of
    its import's result, and the import is the command its client watches."""
    record.status, record.error, record.finished_at = CommandStatus.FAILED.value, failure.problem(), datetime.now(UTC)
    if record.parent_id is not None:
        return None
    return command_event(record, EventType.COMMAND_FAILED, {"status": record.status, "error": record.error})


def _succeed(record: CommandRecord, change: Change | None) -> EventRecord | None:
    """Ends the command succeeded, with the event of its change (`None`: it changed nothing, an import's row that
    was already so)."""
    record.status, record.finished_at = CommandStatus.SUCCEEDED.value, datetime.now(UTC)
    if change is None:
        return None
    event_type, version, data = change
    return EventRecord(
        event_id=uuid4(),
        type=event_type.value,
        sku=record.sku,
        version=version,
        # An import's rows carry their import's id: the id its client knows and follows.
        command_id=record.parent_id or record.id,
        occurred_at=record.finished_at,
        data=data,
    )


def command_event(record: CommandRecord, event_type: EventType, data: dict[str, Any]) -> EventRecord:
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


async def _execute(widgets: WidgetService, current: Current, sku: str, command: Command) -> Change | None:
    match command:
        case CreateWidget(values=values):
            widget = await widgets.create_widget(current, sku, values)
            return EventType.WIDGET_CREATED, widget.version, widget.public()
        case UpdateWidget(changes=changes, expected_version=expected):
            widget = await widgets.update_widget(current, sku, changes, expected)
            return EventType.WIDGET_UPDATED, widget.version, widget.public()
        case DeleteWidget(expected_version=expected):
            widget = await widgets.delete_widget(current, sku, expected)
            return EventType.WIDGET_DELETED, widget.version + 1, {"sku": sku}
        case UpsertWidget(values=values):
            if (upserted := await widgets.upsert_widget(current, sku, values)) is None:
                return None
            widget, created = upserted
            return EventType.WIDGET_CREATED if created else EventType.WIDGET_UPDATED, widget.version, widget.public()
    raise TypeError(f"unknown command {command!r}")  # pragma: no cover - the union is closed
