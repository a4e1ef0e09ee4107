"""The per-sku head row: the lock that serializes everything done to one sku's commands and events.

Whatever changes what an apply reads of a sku (its unfinished commands, its widget, whether it has events still to
publish) writes the sku's head row in the same transaction, not only locks it: intake moves `accepted_seq`, an apply
`applied_seq`, and `lock_heads` writes the row back as it is. An apply reads its skus' pending commands in the
statement that locks their heads (`widgetry.services.apply.LOCK_AND_READ`), and a changed head row is how it knows
that the statement's snapshot missed a transaction it waited for. The one change left out, a published event's
stream id, can only make a stale read think an event still unpublished: the apply then reads the outbox."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, select, update

from widgetry.domain.models import WidgetHead

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

HEADS = WidgetHead.__table__
LOCKED_IN_ORDER = (
    select(HEADS.c.sku)
    .where(HEADS.c.sku.in_(bindparam("skus", expanding=True)))
    .order_by(HEADS.c.sku)
    .with_for_update()
    .subquery("locked")
)
# Core, on the table: the ORM's statement bookkeeping is a measurable cost on the write path.
LOCK_HEADS = (
    update(HEADS)
    .where(HEADS.c.sku == LOCKED_IN_ORDER.c.sku)
    .values(applied_seq=HEADS.c.applied_seq)
    .returning(HEADS.c.sku, HEADS.c.applied_seq)
)
LOCK_HEADS_SQLITE = (
    update(HEADS)
    .where(HEADS.c.sku.in_(bindparam("skus", expanding=True)))
    .values(applied_seq=HEADS.c.applied_seq)
    .returning(HEADS.c.sku, HEADS.c.applied_seq)
)


async def lock_head(session: AsyncSession, sku: str) -> int:
    """Locks the sku's head row until the transaction ends, and returns its `applied_seq`."""
    return (await lock_heads(session, [sku]))[sku]


async def lock_heads(session: AsyncSession, skus: Collection[str]) -> dict[str, int]:
    """Locks the skus' head rows until the transaction ends, writing each back as it is, and returns their
    `applied_seq`s.

    On PostgreSQL, `SELECT ... ORDER BY sku FOR UPDATE` takes the row locks in sku order: every transaction that
    locks several heads (a batch of commands, the intake's counters) takes them in that one order, so two of them
    cannot deadlock. The write makes the lock seen by an apply that waited for it (see the module's docstring).
    SQLite ignores FOR UPDATE and lets one writer in at a time: a no-op write takes that lock and returns the
    `applied_seq`s it holds, since its deferred transactions would otherwise let two appliers read the same one.
    """
    ordered = {"skus": sorted(set(skus))}
    rows = await session.execute(LOCK_HEADS_SQLITE if session.bind.dialect.name == "sqlite" else LOCK_HEADS, ordered)
    return dict(rows.tuples().all())
