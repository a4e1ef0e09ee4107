"""WidgetService: reads for the API, and the three changes a command can make."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService

from widgetry.domain.models import Widget
from widgetry.domain.problems import VersionConflict, WidgetExists, WidgetNotFound


class WidgetRepository(SQLAlchemyAsyncRepository[Widget]):
    model_type = Widget


class WidgetService(SQLAlchemyAsyncRepositoryService[Widget]):
    repository_type = WidgetRepository

    async def create_widget(self, sku: str, values: dict[str, Any]) -> Widget:
        if await self.exists(sku=sku):
            raise WidgetExists(f"A widget with sku {sku!r} already exists.")
        return await self.create(Widget(**_trimmed(values), sku=sku))

    async def update_widget(self, sku: str, changes: dict[str, Any], expected_version: int | None) -> Widget:
        widget = await self._current(sku, expected_version)
        for field, value in _trimmed(changes).items():
            setattr(widget, field, value)
        # Every applied update is a change with its own version, even one that sets the values already there.
        widget.updated_at = datetime.now(UTC)
        return await self.update(widget)

    async def delete_widget(self, sku: str, expected_version: int | None) -> Widget:
        widget = await self._current(sku, expected_version)
        return await self.delete(widget.id)

    async def _current(self, sku: str, expected_version: int | None) -> Widget:
        widget = await self.get_one_or_none(sku=sku)
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
