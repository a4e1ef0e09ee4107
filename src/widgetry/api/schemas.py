"""Request and response shapes. Widget shapes are derived from the model; the command shape is API.md's."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyDTO, SQLAlchemyDTOConfig

from widgetry.domain.models import CommandRecord, Widget


class WidgetRead(SQLAlchemyDTO[Widget]):
    config = SQLAlchemyDTOConfig(exclude=set(Widget.PRIVATE_FIELDS))


class WidgetCreate(SQLAlchemyDTO[Widget]):
    config = SQLAlchemyDTOConfig(exclude=set(Widget.SERVER_FIELDS), forbid_unknown_fields=True)


class WidgetPatch(SQLAlchemyDTO[Widget]):
    config = SQLAlchemyDTOConfig(exclude=set(Widget.SERVER_FIELDS | {"sku"}), partial=True, forbid_unknown_fields=True)


class CommandLinks(msgspec.Struct, frozen=True):
    self: str
    widget: str | None


class CommandResource(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    type: str
    status: str
    sku: str | None
    accepted_at: datetime
    finished_at: datetime | None
    progress: dict[str, int] | None
    error: dict[str, Any] | None
    links: CommandLinks

    @classmethod
    def of(cls, record: CommandRecord) -> CommandResource:
        return cls(
            id=record.id,
            type=record.type,
            status=record.status,
            sku=record.sku,
            accepted_at=record.accepted_at,
            finished_at=record.finished_at,
            progress=record.progress,
            error=record.error,
            links=CommandLinks(self=command_url(record.id), widget=f"/widgets/{record.sku}" if record.sku else None),
        )


def command_url(command_id: UUID) -> str:
    return f"/commands/{command_id}"
