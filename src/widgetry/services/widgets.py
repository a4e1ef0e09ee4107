"""WidgetService: reads for the API, and the changes a command can make."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import bindparam, select

from widgetry.domain.models import Widget
from widgetry.domain.problems import VersionConflict, WidgetExists, WidgetNotFound

Current = dict[str, Widget | None]
"""The widgets a batch of commands works on, by sku (`None`: no widget has that sku), kept up to date by the changes
below, so a batch reads each widget once however many of its commands touch it."""


CURRENT_WIDGETS = select(Widget).where(Widget.sku.in_(bindparam("skus", expanding=True)))


class WidgetRepository(SQLAlchemyAsyncRepository[Widget]):
    model_type = Widget


class WidgetService(SQLAlchemyAsyncRepositoryService[Widget]):
    repository_type = WidgetRepository

    async def current(self, skus: Collection[str]) -> Current:
        """The widgets of these skus, in one query (a statement built once: every applied batch reads them)."""
        rows = await self.repository.session.scalars(CURRENT_WIDGETS, {"skus": sorted(set(skus))})
        found = {widget.sku: widget for widget in rows}
        return {sku: found.get(sku) for sku in skus}

    async def create_widget(self, current: Current, sku: str, values: dict[str, Any]) -> Widget:
        if current.get(sku) is not None:
            raise WidgetExists(f"A widget with sku {sku!r} already exists.")
        now = datetime.now(UTC)
        # Times are set here rather than by the column defaults at flush: the event carries them before the flush.
        widget = Widget(**_trimmed(values), sku=sku, version=1, created_at=now, updated_at=now)
        self.repository.session.add(widget)
        current[sku] = widget
        return widget

    async def update_widget(
        self, current: Current, sku: str, changes: dict[str, Any], expected_version: int | None
    ) -> Widget:
        widget = _checked(current, sku, expected_version)
        for field, value in _trimmed(changes).items():
            setattr(widget, field, value)
        # Every applied update is a change with its own version, even one that sets the values already there. The
        # UPDATE still checks the version the row had (the optimistic lock), however many changes it carries.
        widget.version += 1
        widget.updated_at = datetime.now(UTC)
        return widget

    async def upsert_widget(self, current: Current, sku: str, values: dict[str, Any]) -> tuple[Widget, bool] | None:
        """Creates the widget, or updates it to these values; `None` when it already has them (an import run twice
        changes nothing the second time). Says whether it created the widget."""
        widget = current.get(sku)
        if widget is None:
            return await self.create_widget(current, sku, values), True
        changes = {field: value for field, value in _trimmed(values).items() if getattr(widget, field) != value}
        if not changes:
            return None
        return await self.update_widget(current, sku, changes, None), False

    async def delete_widget(self, current: Current, sku: str, expected_version: int | None) -> Widget:
        widget = _checked(current, sku, expected_version)
        session = self.repository.session
        # Flushed at once: the unit of work inserts before it deletes, and a later create of this sku in the same
        # batch must find the row gone.
        await session.flush()
        await session.delete(widget)
        await session.flush()
        current[sku] = None
        return widget


def _checked(current: Current, sku: str, expected_version: int | None) -> Widget:
    widget = current.get(sku)
    if widget is None:
        raise WidgetNotFound(f"No widget has sku {sku!r}.")
    if expected_version is not None and widget.version != expected_version:
        raise VersionConflict(f"Widget {sku!r} is at version {widget.version}, not {expected_version}.")
    return widget


def _trimmed(values: dict[str, Any]) -> dict[str, Any]:
    """Names are stored without surrounding white space (the 1..200 rule applies to the trimmed name)."""
    if isinstance(values.get("name"), str):
        return {**values, "name": values["name"].strip()}
    return values
