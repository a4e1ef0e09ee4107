"""The per-sku head row: the lock that serializes everything done to one sku's commands and events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select, update

from widgetry.domain.models import WidgetHead

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


async def lock_head(session: AsyncSession, sku: str) -> int:
    """Locks the sku's head row until the transaction ends, and returns its `applied_seq`.

    A no-op write takes the row lock on PostgreSQL (like SELECT ... FOR UPDATE) and the write lock on SQLite,
    whose deferred transactions would otherwise let two appliers read the same `applied_seq`.
    """
    await session.execute(update(WidgetHead).where(WidgetHead.sku == sku).values(applied_seq=WidgetHead.applied_seq))
    return (await session.execute(select(WidgetHead.applied_seq).where(WidgetHead.sku == sku))).scalar_one()
