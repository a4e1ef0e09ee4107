"""Applying commands: claimed, then applied in each sku's order behind its head's lock, each outcome with its event
in the same transaction (the caller commits, then publishes)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import msgspec
from sqlalchemy import and_, bindparam, exists, literal_column, select, update

from widgetry.domain.commands import (
    Command,
    CommandStatus,
    CreateWidget,
    DeleteWidget,
    UpdateWidget,
    UpsertWidget,
    load_command,
)
from widgetry.domain.events import EventType
from widgetry.domain.models import CommandRecord, EventRecord, Widget, WidgetHead
from widgetry.domain.problems import CommandFailed
from widgetry.services.commands import UNFINISHED, CommandService, command_event, note_finished
from widgetry.services.heads import lock_head, lock_heads
from widgetry.services.queries.commands import CLAIM, READ_TARGETS, RECORD_OUTCOMES
from widgetry.services.unavailable import is_unavailable
from widgetry.services.widgets import Current, WidgetService

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from widgetry.services.queries.held import HeldConnection

logger = logging.getLogger(__name__)

LEFT_UNPUBLISHED = exists().where(
    # All the batch's skus, those already applied included: a job run again after its publish failed has nothing to
    # apply, and its events still to publish.
    EventRecord.sku.in_(bindparam("targets", expanding=True)),
    EventRecord.stream_id.is_(None),
)
COMMANDS = CommandRecord.__table__
PENDING = (
    COMMANDS.c.id,
    COMMANDS.c.type,
    COMMANDS.c.sku,
    COMMANDS.c.seq,
    COMMANDS.c.payload,
    COMMANDS.c.parent_id,
    COMMANDS.c.accepted_at,
    Widget,
    LEFT_UNPUBLISHED.label("left_unpublished"),
)
"""What an apply reads of each pending command: the columns `Pending` takes, the sku's widget, and whether the skus
have events still unpublished."""
PENDING_COMMANDS = (
    # With each, its sku's widget as it is (the one round trip reads both), and whether the skus have events still
    # unpublished. Read under the heads' locks, so both hold for everything committed before this batch (the lock
    # statement's own snapshot is older than the lock it waited for). The commands as columns, not as instances of
    # the unit of work: their outcomes are written with one statement (`record_outcomes`).
    select(*PENDING)
    .outerjoin(Widget, Widget.sku == COMMANDS.c.sku)
    # One already ended as failed (its retries spent) keeps that outcome; the rest still apply in order.
    .where(COMMANDS.c.sku.in_(bindparam("skus", expanding=True)), COMMANDS.c.status.in_(UNFINISHED))
    .order_by(COMMANDS.c.sku, COMMANDS.c.seq)
)
CLAIMABLE = (
    select(COMMANDS.c.id)
    .where(COMMANDS.c.id.in_(bindparam("ids", expanding=True)), COMMANDS.c.status.in_(UNFINISHED))
    .with_for_update(skip_locked=True)
)
CLAIM_UNFINISHED = (
    # Built once, and Core on the table: on the path of every apply, the ORM's statement bookkeeping and a statement
    # built per call were measurable costs.
    update(COMMANDS)
    .where(COMMANDS.c.id.in_(CLAIMABLE.scalar_subquery()))
    .values(status=CommandStatus.RUNNING.value)
    .returning(COMMANDS.c.id, COMMANDS.c.sku, COMMANDS.c.seq)
)
TARGETS = select(COMMANDS.c.id, COMMANDS.c.sku, COMMANDS.c.seq).where(
    COMMANDS.c.id.in_(bindparam("ids", expanding=True))
)
HEADS = WidgetHead.__table__
SEEN = HEADS.alias("seen")
LOCK_AND_READ = (
    # PostgreSQL: the skus' heads locked (in sku order, as every lock on heads) and, in the same round trip, what
    # PENDING_COMMANDS would read after the lock. One statement reads with the snapshot it started with, so what a
    # transaction it waited for did is missing from its joins; but every such transaction wrote the head row (see
    # `widgetry.services.heads`), and the lock returns the head as that transaction left it. `fresh` compares the
    # locked head's row version (`xmin`) with the snapshot's: where any differs, the commands are read again.
    select(
        HEADS.c.sku.label("head"),
        HEADS.c.applied_seq,
        (
            literal_column("widget_heads.xmin")
            == select(literal_column("seen.xmin")).where(SEEN.c.sku == HEADS.c.sku).scalar_subquery()
        ).label("fresh"),
        *PENDING,
    )
    .select_from(
        HEADS.outerjoin(COMMANDS, and_(COMMANDS.c.sku == HEADS.c.sku, COMMANDS.c.status.in_(UNFINISHED))).outerjoin(
            Widget, Widget.sku == HEADS.c.sku
        )
    )
    .where(HEADS.c.sku.in_(bindparam("skus", expanding=True)))
    .order_by(HEADS.c.sku, COMMANDS.c.seq)
    .with_for_update(of=HEADS)
)
MOVE_HEADS = update(HEADS).where(HEADS.c.sku == bindparam("head")).values(applied_seq=bindparam("seq"))
FINISH_COMMANDS = (
    update(COMMANDS)
    .where(COMMANDS.c.id == bindparam("command_id"))
    .values(status=bindparam("status"), error=bindparam("error"), finished_at=bindparam("finished_at"))
)


@dataclass(slots=True)
class Pending:
    """A pending command as an apply reads it, and the outcome the apply gives it (`_fail`, `_succeed`)."""

    id: UUID
    type: str
    sku: str | None
    seq: int
    payload: dict[str, Any]
    parent_id: UUID | None
    accepted_at: datetime
    status: str = CommandStatus.RUNNING.value
    error: dict[str, Any] | None = None
    finished_at: datetime | None = None


@dataclass(eq=False)
class Applied:
    """What an apply leaves to publish once its caller has committed."""

    skus: list[str] = field(default_factory=list)
    events: list[EventRecord] | None = field(default_factory=list)
    """Every unpublished event of the skus, in commit order, when the apply knows them all (it wrote them, and found
    none left behind by an earlier publish): published as they are, with no read. `None`: read the skus' outbox."""


class ApplyService(CommandService):
    """Claims commands, applies them, and ends those that could not be applied at all."""

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
        result = await self.session.execute(CLAIM_UNFINISHED, {"ids": list(command_ids)})
        rows = list(result.tuples().all())
        if unclaimed := set(command_ids) - {command_id for command_id, _, _ in rows}:
            rows += (await self.session.execute(TARGETS, {"ids": list(unclaimed)})).tuples().all()
        return _targets(rows)

    async def apply_many(self, targets: dict[str, int], *, careful: bool = False) -> Applied:
        """Applies every pending command of the skus up to their targets' seqs (what `claim` returned), in accept
        order; returns the skus, and what of theirs is to be published once the caller has committed.

        Re-running it (a re-delivered job, or a sibling job that already drained these) changes nothing: each sku's
        `applied_seq` is the fence. The skus' head rows are locked in sku order, so batches sharing skus queue behind
        each other instead of deadlocking. What a command itself gets wrong fails that command; anything else
        raises, and the caller may apply the batch again `careful`ly, in a new transaction: each command then in a
        savepoint of its own, so the one at fault fails alone and leaves nothing of itself.
        """
        if not targets:
            return Applied()
        return Applied(sorted(targets), await self._apply_pending(targets, careful=careful))

    async def _apply_pending(self, targets: dict[str, int], *, careful: bool) -> list[EventRecord] | None:
        """Locks the skus' heads and applies their pending commands up to the targets' seqs; returns the events
        written, when they are all the skus have unpublished (see `Applied.events`)."""
        applied, read = await self._lock_and_read(targets)
        behind = {sku: seq for sku, seq in targets.items() if seq > applied[sku]}
        if not behind:
            return None
        if read is None:
            rows = (
                await self.session.execute(PENDING_COMMANDS, {"skus": sorted(behind), "targets": sorted(targets)})
            ).all()
        else:
            rows = [row for row in read if row.id is not None and row.sku in behind]
        widgets = WidgetService(session=self.session)
        current: Current = {row.sku or "": row.Widget for row in rows}
        finished: list[Pending] = []
        events: list[EventRecord] = []
        for row in rows:
            sku = row.sku or ""
            if applied[sku] < row.seq <= behind[sku]:
                record = Pending(row.id, row.type, row.sku, row.seq, row.payload, row.parent_id, row.accepted_at)
                apply = self._apply_carefully if careful else self._apply_one
                if (event := await apply(widgets, current, record)) is not None:
                    events.append(event)
                finished.append(record)
        await record_outcomes(self.session, finished, events, behind)
        if not rows or any(row.left_unpublished for row in rows):
            return None
        return events

    async def _lock_and_read(self, targets: dict[str, int]) -> tuple[dict[str, int], Sequence[Any] | None]:
        """Locks the skus' heads; returns their `applied_seq`s and, when one statement could read them fresh (on
        PostgreSQL, `LOCK_AND_READ`), the pending commands with them. `None`: read them now, under the locks."""
        if self.session.bind.dialect.name != "postgresql":
            return await lock_heads(self.session, targets), None
        skus = sorted(targets)
        read = (await self.session.execute(LOCK_AND_READ, {"skus": skus, "targets": skus})).all()
        applied = {row.head: row.applied_seq for row in read}
        if all(row.fresh for row in read):
            return applied, read
        # A transaction on these skus committed while this one waited for its locks: the widgets read with the stale
        # snapshot leave the unit of work, to be read again as they are now.
        for widget in {id(row.Widget): row.Widget for row in read if row.Widget is not None}.values():
            self.session.expunge(widget)
        return applied, None

    async def _apply_one(self, widgets: WidgetService, current: Current, record: Pending) -> EventRecord | None:
        """Applies one command of a batch: what is wrong with the command (the widget exists, is missing, moved on)
        is found before anything changes and fails it; anything else fails the whole batch, which is then applied
        carefully."""
        try:
            change = await _execute(widgets, current, record.sku or "", load_command(record.payload))
        except CommandFailed as failure:
            return _fail(record, failure)
        return _succeed(record, change)

    async def _apply_carefully(self, widgets: WidgetService, current: Current, record: Pending) -> EventRecord | None:
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


async def record_outcomes(
    session: AsyncSession, finished: Sequence[Pending], events: Sequence[EventRecord], heads: dict[str, int]
) -> None:
    """Writes what an apply did besides its widgets' changes (which its unit of work flushes): each command's outcome,
    its events (each given its row id, in the order given: the order they are published in), and each sku's
    `applied_seq`. On PostgreSQL in one statement (`RECORD_OUTCOMES`); else one per table. Notes each command
    finished, to be counted and logged once the transaction commits."""
    if session.bind.dialect.name == "postgresql":
        head_skus = sorted(heads)
        written = await session.execute(
            RECORD_OUTCOMES,
            {
                "head_skus": head_skus,
                "head_seqs": [heads[sku] for sku in head_skus],
                "ids": [record.id for record in finished],
                "statuses": [record.status for record in finished],
                "errors": [None if record.error is None else _json(record.error) for record in finished],
                "finished_ats": [record.finished_at for record in finished],
                "event_ids": [event.event_id for event in events],
                "types": [event.type for event in events],
                "skus": [event.sku for event in events],
                "versions": [event.version for event in events],
                "command_ids": [event.command_id for event in events],
                "occurred_ats": [event.occurred_at for event in events],
                "datas": [_json(event.data) for event in events],
            },
        )
        row_ids = {event_id: row_id for row_id, event_id in written.tuples().all()}
        for event in events:
            event.id = row_ids[event.event_id]
    else:
        if finished:
            outcomes = [
                {
                    "command_id": record.id,
                    "status": record.status,
                    "error": record.error,
                    "finished_at": record.finished_at,
                }
                for record in finished
            ]
            await session.execute(FINISH_COMMANDS, outcomes)
        await session.execute(MOVE_HEADS, [{"head": sku, "seq": seq} for sku, seq in sorted(heads.items())])
        session.add_all(events)
        await session.flush()
    for record in finished:
        note_finished(session, record)


def _json(value: dict[str, Any]) -> str:
    return msgspec.json.encode(value).decode()


async def claim(held: HeldConnection, command_ids: Sequence[UUID]) -> dict[str, int]:
    """`ApplyService.claim` on PostgreSQL as single statements outside any transaction: the claim is durable, and
    visible, as it ends, with no BEGIN or COMMIT round trip on the path of every command."""
    rows = await held.fetch(CLAIM, {"ids": list(command_ids)})
    if unclaimed := set(command_ids) - {command_id for command_id, _, _ in rows}:
        rows += await held.fetch(READ_TARGETS, {"ids": list(unclaimed)})
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


def _fail(record: CommandRecord | Pending, failure: CommandFailed) -> EventRecord | None:
    """Ends the command failed, with its `command.failed` event; an import's row has none: it fails as a line of
    its import's result, and the import is the command its client watches."""
    record.status, record.error, record.finished_at = CommandStatus.FAILED.value, failure.problem(), datetime.now(UTC)
    if record.parent_id is not None:
        return None
    return command_event(record, EventType.COMMAND_FAILED, {"status": record.status, "error": record.error})


def _succeed(record: Pending, change: Change | None) -> EventRecord | None:
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
