"""Dependencies the handlers declare: services from Advanced Alchemy's providers, and the process's shared parts."""

from __future__ import annotations

from typing import Annotated

from advanced_alchemy.extensions.litestar.providers import create_service_provider
from advanced_alchemy.filters import LimitOffset, OrderBy, SearchFilter, StatementFilter
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import QueryParameter

from widgetry.api.accept import provide_intake
from widgetry.services.commands import CommandService
from widgetry.services.widgets import WidgetService
from widgetry.settings import Settings
from widgetry.streaming.hub import EventHub

MAX_LIMIT = 500
SORTABLE = ("sku", "name", "price_cents", "version", "created_at", "updated_at")


def provide_settings(state: State) -> Settings:
    return state.settings


def provide_hub(state: State) -> EventHub:
    return state.hub


def provide_widget_filters(
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description="Page size.")] = 50,
    offset: Annotated[int, QueryParameter(ge=0, le=2**62, description="Widgets to skip.")] = 0,
    search: Annotated[
        str | None,
        # No NUL: PostgreSQL cannot compare text with one, and would fail the query instead of finding nothing.
        QueryParameter(max_length=200, pattern=r"^[^\x00]*$", description="Case-insensitive match on sku or name."),
    ] = None,
    order_by: Annotated[
        str, QueryParameter(pattern="^(" + "|".join(SORTABLE) + ")$", description="Sort field.")
    ] = "sku",
    sort: Annotated[str, QueryParameter(pattern="^(asc|desc)$", description="Sort direction.")] = "asc",
) -> list[StatementFilter]:
    # Advanced Alchemy's filter providers name these `currentPage`, `pageSize`, `searchString`, `sortOrder`;
    # the contract's names and bounds (docs/api.md) differ, so the same filter objects are built here from its own.
    filters: list[StatementFilter] = [LimitOffset(limit=limit, offset=offset), OrderBy(order_by, sort)]  # type: ignore[arg-type]
    if search:
        filters.append(SearchFilter(field_name={"sku", "name"}, value=search, ignore_case=True, escape_wildcards=True))
    return filters


DEPENDENCIES = {
    "settings": Provide(provide_settings, sync_to_thread=False),
    "hub": Provide(provide_hub, sync_to_thread=False),
    "widgets": Provide(create_service_provider(WidgetService)),
    "commands": Provide(create_service_provider(CommandService)),
    "intake": Provide(provide_intake, sync_to_thread=False),
}
