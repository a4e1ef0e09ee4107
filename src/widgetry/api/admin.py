"""The operator's view of widgets: the public read handlers registered again under `/admin`, behind the `admin` scope,
with a DTO that shows the internal fields. Same filters, paging, ETags and `If-None-Match` as the public reads, because
it is the same code."""

from __future__ import annotations

from advanced_alchemy.extensions.litestar import SQLAlchemyDTO, SQLAlchemyDTOConfig
from litestar import Router

from widgetry.api.docs import answering_also
from widgetry.api.security import admin_guard, key_security
from widgetry.api.widgets import get_widget, list_widgets, read_cache_control
from widgetry.domain.models import Scope, Widget


class WidgetAdminRead(SQLAlchemyDTO[Widget]):
    """A widget with its internal fields: all but the database's own key."""

    __schema_name__ = "AdminWidget"
    config = SQLAlchemyDTOConfig(exclude=set(Widget.SURROGATE_FIELDS))


def admin_router() -> Router:
    return Router(
        "/admin",
        guards=[admin_guard],
        return_dto=WidgetAdminRead,
        # What an admin reads is never for a shared cache, whether or not the public reads are protected.
        cache_control=read_cache_control(private=True),
        security=key_security(Scope.ADMIN),
        tags=["admin"],
        # No key `401`, a key without `admin` `403`.
        route_handlers=[answering_also(handler, "unauthorized", "forbidden") for handler in (list_widgets, get_widget)],
    )
