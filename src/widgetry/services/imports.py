"""Imports: many widgets in one command.

Each row is recorded with the import as a command of its own (`UpsertWidget`) that takes its sku's next seq, so a
row keeps every guarantee a single write has: it takes effect after what was accepted before it on its sku and
before what comes after, behind the same `applied_seq` fence (a re-run applies nothing twice), with one event per
change. The import's job applies its rows in batches through `apply_many`, writes a `command.progress` event after
each batch, and ends the import with one `command.completed` carrying the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from uuid_utils.compat import uuid7

from widgetry.domain.commands import CommandStatus, ImportWidgets, UpsertWidget, dump_command, load_command
from widgetry.domain.events import EventType
from widgetry.domain.models import CommandRecord, EventRecord
from widgetry.domain.problems import CommandFailed
from widgetry.services.commands import UNFINISHED, CommandService, command_event, command_fingerprint, next_seqs
from widgetry.services.heads import lock_heads
from widgetry.services.unavailable import is_unavailable

IMPORT_TYPE = "import_widgets"
ROWS_PER_STATEMENT = 500
"""Rows one statement records, or skus whose counters it moves on: a statement stays far below the drivers' 32,767
bind parameters, and the event loop, which builds each statement, is given back between statements: a 10,000-row
import's rows in one statement held it for most of a second on a busy machine."""
MAX_ERRORS_KEPT = 1_000
"""Rows named in an import's result at most; `failed` still counts them all."""


class ImportRow(msgspec.Struct, frozen=True):
    """A row that passed the widget's rules: its place in the import (1-based), its sku and its values."""

    row: int
    sku: str
    values: dict[str, Any]


class ImportService(CommandService):
    async def accept_import(
        self,
        rows: Sequence[ImportRow],
        rejected: list[dict[str, Any]],
        idempotency_key: str | None = None,
        command_id: UUID | None = None,
    ) -> tuple[CommandRecord, bool]:
        """Records the import and its rows in one transaction (the caller commits before anyone is told). With an
        idempotency key already used for the same import, returns that import instead (and `False`)."""
        total = len(rows) + len(rejected)
        payload = dump_command(ImportWidgets(total=total, rejected=rejected))
        fingerprint = None
        if idempotency_key:
            rows_payload = {"rows": [msgspec.to_builtins(row) for row in rows], **payload}
            fingerprint = command_fingerprint(IMPORT_TYPE, "", rows_payload)
            if original := await self.original(idempotency_key, fingerprint):
                return original, False
        now = datetime.now(UTC)
        parent = {
            "id": command_id or uuid7(),
            "type": IMPORT_TYPE,
            "sku": None,
            "seq": 0,
            "payload": payload,
            "status": CommandStatus.ACCEPTED.value,
            "accepted_at": now,
            "progress": {"done": len(rejected), "total": total},
            "idempotency_key": idempotency_key,
            "fingerprint": fingerprint,
        }
        try:
            async with self.session.begin_nested():
                await self.session.execute(insert(CommandRecord), [parent])
                seqs = await self._take_seqs(sorted(row.sku for row in rows))
                children = [
                    {
                        "id": uuid7(),
                        "type": "upsert_widget",
                        "sku": row.sku,
                        "seq": seqs[row.sku],
                        "payload": dump_command(UpsertWidget(values=row.values, row=row.row)),
                        "status": CommandStatus.ACCEPTED.value,
                        "accepted_at": now,
                        "parent_id": parent["id"],
                    }
                    for row in rows
                ]
                for first in range(0, len(children), ROWS_PER_STATEMENT):
                    await self.session.execute(insert(CommandRecord), children[first : first + ROWS_PER_STATEMENT])
        except IntegrityError as error:
            # A connection lost mid-insert is reported as an integrity error too: the transaction is gone with it.
            if is_unavailable(error):
                raise
            if idempotency_key and (original := await self.original(idempotency_key, fingerprint)):
                return original, False
            raise
        return CommandRecord(**parent), True

    async def _take_seqs(self, skus: list[str]) -> dict[str, int]:
        seqs: dict[str, int] = {}
        for first in range(0, len(skus), ROWS_PER_STATEMENT):
            taken = await next_seqs(self.session, dict.fromkeys(skus[first : first + ROWS_PER_STATEMENT], 1))
            seqs.update({sku: last for sku, (last, _) in taken.items()})
        return seqs

    async def start(self, import_id: UUID) -> bool:
        """Marks the import `running`; `False` when it is unknown or already finished (nothing left to do)."""
        result = await self.session.execute(
            update(CommandRecord)
            .where(CommandRecord.id == import_id, CommandRecord.status.in_(UNFINISHED))
            .values(status=CommandStatus.RUNNING.value)
        )
        return result.rowcount > 0

    async def pending_rows(self, import_id: UUID, after_sku: str, limit: int) -> list[tuple[UUID, str]]:
        """The next unfinished rows (id, sku) in sku order after `after_sku`: a batch to apply."""
        rows = await self.session.execute(
            select(CommandRecord.id, CommandRecord.sku)
            .where(
                CommandRecord.parent_id == import_id,
                CommandRecord.status.in_(UNFINISHED),
                CommandRecord.sku > after_sku,
            )
            .order_by(CommandRecord.sku)
            .limit(limit)
        )
        return [(row_id, sku or "") for row_id, sku in rows.tuples().all()]

    async def record_progress(self, import_id: UUID) -> None:
        """Counts the rows done and writes a `command.progress` event with the count, in one transaction."""
        record = await self._lock(import_id)
        if record is None or record.status not in UNFINISHED:
            return
        finished_rows = await self.session.scalar(
            select(func.count())
            .select_from(CommandRecord)
            .where(CommandRecord.parent_id == import_id, CommandRecord.status.not_in(UNFINISHED))
        )
        command = load_command(record.payload)
        assert isinstance(command, ImportWidgets)
        record.progress = {"done": len(command.rejected) + (finished_rows or 0), "total": command.total}
        self.session.add(
            command_event(record, EventType.COMMAND_PROGRESS, {"status": record.status, "progress": record.progress})
        )
        await self.session.flush()

    async def finish(self, import_id: UUID) -> bool:
        """Ends the import `succeeded` with its result and one `command.completed` event, once no row is left
        unfinished. `False` when rows are still unfinished; `True` when it is (or already was) finished."""
        record = await self._lock(import_id)
        if record is None or record.status not in UNFINISHED:
            return True
        statuses = dict(
            (
                await self.session.execute(
                    select(CommandRecord.status, func.count())
                    .where(CommandRecord.parent_id == import_id)
                    .group_by(CommandRecord.status)
                )
            )
            .tuples()
            .all()
        )
        if any(statuses.get(status) for status in UNFINISHED):
            return False
        record.status, record.finished_at = CommandStatus.SUCCEEDED.value, datetime.now(UTC)
        record.result = await self._result(record, statuses.get(CommandStatus.SUCCEEDED.value, 0))
        record.progress = {"done": record.result["total"], "total": record.result["total"]}
        self.session.add(
            command_event(
                record,
                EventType.COMMAND_COMPLETED,
                {"status": record.status, "progress": record.progress, "result": record.result},
            )
        )
        await self.session.flush()
        return True

    async def fail(self, import_id: UUID, failure: CommandFailed) -> bool:
        """Ends an import that could not run to its end (its job's attempts spent) `failed`, with one
        `command.failed` event. Its rows not yet applied end failed with it rather than apply later, under their
        skus' locks; rows already applied stay applied, and the result says how many. `False` if already finished."""
        record = await self._lock(import_id)
        if record is None or record.status not in UNFINISHED:
            return False
        left = select(CommandRecord.sku).where(
            CommandRecord.parent_id == import_id, CommandRecord.status.in_(UNFINISHED)
        )
        await lock_heads(self.session, [sku for sku in await self.session.scalars(left) if sku is not None])
        now = datetime.now(UTC)
        await self.session.execute(
            update(CommandRecord)
            .where(CommandRecord.parent_id == import_id, CommandRecord.status.in_(UNFINISHED))
            .values(status=CommandStatus.FAILED.value, finished_at=now, error=failure.problem())
        )
        succeeded = await self.session.scalar(
            select(func.count())
            .select_from(CommandRecord)
            .where(CommandRecord.parent_id == import_id, CommandRecord.status == CommandStatus.SUCCEEDED.value)
        )
        record.status, record.finished_at, record.error = CommandStatus.FAILED.value, now, failure.problem()
        record.result = await self._result(record, succeeded or 0)
        self.session.add(
            command_event(record, EventType.COMMAND_FAILED, {"status": record.status, "error": record.error})
        )
        await self.session.flush()
        return True

    async def _result(self, record: CommandRecord, succeeded: int) -> dict[str, Any]:
        """What the import did: rows created and updated (counted from its events, one per change), unchanged, and
        each row that failed with its reason (refused at intake, or refused when applied)."""
        command = load_command(record.payload)
        assert isinstance(command, ImportWidgets)
        changes = dict(
            (
                await self.session.execute(
                    select(EventRecord.type, func.count())
                    .where(EventRecord.command_id == record.id, EventRecord.sku.is_not(None))
                    .group_by(EventRecord.type)
                )
            )
            .tuples()
            .all()
        )
        created = changes.get(EventType.WIDGET_CREATED.value, 0)
        updated = changes.get(EventType.WIDGET_UPDATED.value, 0)
        failed_rows = await self.session.execute(
            select(CommandRecord.sku, CommandRecord.payload, CommandRecord.error)
            .where(CommandRecord.parent_id == record.id, CommandRecord.status == CommandStatus.FAILED.value)
            .order_by(CommandRecord.sku)
            .limit(MAX_ERRORS_KEPT)
        )
        errors = list(command.rejected) + [
            {"row": payload.get("row"), "sku": sku, "reason": (error or {}).get("detail", "not applied")}
            for sku, payload, error in failed_rows.tuples().all()
        ]
        errors.sort(key=lambda error: error["row"] or 0)
        failed = command.total - succeeded
        return {
            "total": command.total,
            "created": created,
            "updated": updated,
            "unchanged": succeeded - created - updated,
            "failed": failed,
            "errors": errors[:MAX_ERRORS_KEPT],
        }

    async def _lock(self, import_id: UUID) -> CommandRecord | None:
        """The import's record, locked until the transaction ends: its job, a re-run of it and the failure hook
        take turns. On SQLite a no-op write takes the database's one write lock first (see `lock_heads`)."""
        if self.session.bind.dialect.name == "sqlite":
            await self.session.execute(
                update(CommandRecord).where(CommandRecord.id == import_id).values(status=CommandRecord.status)
            )
        return await self.session.scalar(
            select(CommandRecord)
            .where(CommandRecord.id == import_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
