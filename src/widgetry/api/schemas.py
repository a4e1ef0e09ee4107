"""Request and response shapes. Widget shapes are derived from the model; the command shape is API.md's."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints
from uuid import UUID

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyDTO, SQLAlchemyDTOConfig
from litestar.params import KwargDefinition

from widgetry.domain.models import CommandRecord, Widget


class WidgetRead(SQLAlchemyDTO[Widget]):
    config = SQLAlchemyDTOConfig(exclude=set(Widget.PRIVATE_FIELDS))


class WidgetCreate(SQLAlchemyDTO[Widget]):
    config = SQLAlchemyDTOConfig(exclude=set(Widget.SERVER_FIELDS), forbid_unknown_fields=True)


def partial_struct(model: type[Any], name: str, exclude: Collection[str]) -> type[msgspec.Struct]:
    """A struct of the model's fields less `exclude`, each optional (`UNSET` when absent), with the model's rules.

    Litestar's partial DTOs put a field's rules around `T | UNSET` rather than around `T`, which msgspec rejects
    for `pattern`, `ge` and `le`; so the PATCH body is derived from the model here, rules and all.
    """
    hints = get_type_hints(model, include_extras=True)
    fields = [
        (column.key, _msgspec_rules(get_args(hints[column.key])[0]) | msgspec.UnsetType, msgspec.UNSET)
        for column in model.__table__.columns
        if column.key in hints and column.key not in exclude
    ]
    return msgspec.defstruct(name, fields, kw_only=True, forbid_unknown_fields=True)


def _msgspec_rules(annotation: Any) -> Any:
    """`Annotated[T, KwargDefinition(...)]` (also inside `| None`) -> `Annotated[T, msgspec.Meta(...)]`."""
    if get_origin(annotation) in (Union, UnionType):
        return Union[tuple(_msgspec_rules(arg) for arg in get_args(annotation))]  # noqa: UP007
    if get_origin(annotation) is not Annotated:
        return annotation
    base, *metadata = get_args(annotation)
    rules = {key: getattr(meta, key) for meta in metadata if isinstance(meta, KwargDefinition)
             for key in RULES if getattr(meta, key) is not None}
    return Annotated[base, msgspec.Meta(**rules)] if rules else base


RULES = ("pattern", "ge", "gt", "le", "lt", "min_length", "max_length")

WidgetChanges = partial_struct(Widget, "WidgetChanges", exclude=Widget.SERVER_FIELDS | {"sku"})
"""The PATCH body: any subset of the widget's client-set fields but `sku` (which is in the path)."""


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
