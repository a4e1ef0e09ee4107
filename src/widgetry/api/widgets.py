"""Widget reads, and the commands that change widgets (answered `202 Accepted`).

The read handlers name no DTO: the router they are registered under does (the app's public view, the admin router's
view with the internal fields), so one handler serves both."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from advanced_alchemy.filters import StatementFilter
from advanced_alchemy.service import OffsetPagination
from litestar import Request, Response, delete, get, patch, post
from litestar.connection import ASGIConnection
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency, Provide
from litestar.dto import DTOData
from litestar.handlers import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body, HeaderParameter, PathParameter
from litestar.types import Guard

from widgetry.api.accept import Intake
from widgetry.api.dependencies import provide_widget_filters
from widgetry.api.docs import (
    ACCEPTED,
    IMPORTED,
    READ_PROBLEMS,
    SPROCKET,
    ImportOperation,
    command_responses,
    examples,
    problem_responses,
)
from widgetry.api.imports import CSV_MEDIA_TYPE, MAX_IMPORT_BYTES, parse_import
from widgetry.api.problems import invalid, problem_exception
from widgetry.api.schemas import CommandResource, WidgetCreate, WidgetPatch
from widgetry.api.security import key_security, writer_guard
from widgetry.domain.commands import CreateWidget, DeleteWidget, UpdateWidget
from widgetry.domain.models import SKU_PATTERN, Scope, Widget
from widgetry.domain.problems import WidgetNotFound
from widgetry.services.widgets import WidgetService

UPDATED = ACCEPTED | {"type": "update_widget"}
DELETED = ACCEPTED | {"type": "delete_widget"}
SkuPath = Annotated[str, PathParameter(pattern=SKU_PATTERN, description="The widget's sku.")]
WRITE_GUARDS = [writer_guard]
WRITE_SECURITY = key_security(Scope.WRITE)
JSON_MEDIA_TYPE = "application/json"
IMPORT_PARSERS = anyio.CapacityLimiter(2)
"""Imports a process parses at once, each in a thread of its own: a parse holds up to 10 MiB and 10,000 rows, and
takes the interpreter's lock from the event loop while it runs."""


def writes_sent_as(*media_types: str) -> Guard:
    """The write guard (401, 403), then a refusal (415) of a body sent as any other media type, before it is read:
    Litestar's DTOs read a body as JSON whatever its `Content-Type` says, and a client that sends something else has
    made a mistake worth telling. One guard for both: Litestar copies the route handler for every guard it runs."""
    accepted = " or ".join(media_types)

    # A coroutine: Litestar runs a plain function guard in a thread, a hop that costs more than the check itself.
    async def write_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        await writer_guard(connection, handler)
        media_type = connection.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if media_type not in media_types:
            method = connection.scope["method"]  # type: ignore[typeddict-item]
            sent = f"as {media_type}" if media_type else "without a Content-Type"
            raise problem_exception(
                415,
                f"{method} {connection.url.path} takes a body sent as {accepted}; this one was sent {sent}.",
                # RFC 9110 (15.5.16) and, for PATCH, RFC 5789 (2.2): say what would have been taken.
                headers={"Accept": ", ".join(media_types)}
                | ({"Accept-Patch": ", ".join(media_types)} if method == "PATCH" else {}),
            )

    return write_guard


JSON_WRITE_GUARDS = [writes_sent_as(JSON_MEDIA_TYPE)]
IfMatch = Annotated[
    str | None,
    HeaderParameter(name="If-Match", description='Apply only if the widget is still at this version: `"<version>"`.'),
]
IfNoneMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-None-Match", description='The `ETag` of the copy the client holds: `"<version>"` (or a list, or `*`).'
    ),
]
NOT_MODIFIED = {
    304: ResponseSpec(
        data_container=None, description="Not Modified: the widget is still at the version sent in `If-None-Match`."
    )
}


def read_cache_control(*, private: bool) -> CacheControlHeader:
    """How caches may keep widget reads. A widget changes whenever a command is applied, and a client that saw the
    change's event must then read the change: `no-cache` lets a cache keep its copy but ask first every time (a
    `304` with no body while the ETag holds), where even a short `max-age` would serve the old version after the
    event. `private` where a key was needed to read: a shared cache would hand the response to anyone."""
    return CacheControlHeader(no_cache=True, private=True if private else None)


class NotModified(Response[Widget]):
    """`304 Not Modified`: the client's copy is current. Litestar has no conditional reads for a handler's responses
    (its `etag` parameter is one fixed value per route), and runs the handler's return DTO on whatever the handler
    returns, which cannot encode a `None`: the widget goes in as content and is never rendered."""

    def __init__(self, widget: Widget, etag: str) -> None:
        super().__init__(widget, status_code=304, headers={"ETag": etag})

    def render(self, *_: Any, **__: Any) -> bytes:
        return b""


@get(
    "/widgets",
    responses=problem_responses(*READ_PROBLEMS),
    dependencies={"filters": Provide(provide_widget_filters, sync_to_thread=False)},
)
async def list_widgets(
    widgets: NamedDependency[WidgetService], filters: NamedDependency[list[StatementFilter]]
) -> OffsetPagination[Widget]:
    """Lists widgets, a page at a time, optionally searched and ordered."""
    items, total = await widgets.get_many_and_count(*filters)
    return widgets.to_schema(items, total, filters=filters)


@get("/widgets/{sku:str}", responses=problem_responses(*READ_PROBLEMS, "widget-not-found") | NOT_MODIFIED)
async def get_widget(
    widgets: NamedDependency[WidgetService], sku: SkuPath, if_none_match: IfNoneMatch = None
) -> Response[Widget]:
    """One widget, with its version as the `ETag`; `304 Not Modified` with no body while `If-None-Match` names it."""
    widget = await widgets.get_one_or_none(sku=sku)
    if widget is None:
        raise WidgetNotFound(f"No widget has sku {sku!r}.")
    etag = f'"{widget.version}"'
    if if_none_match is not None and _names(if_none_match, etag):
        return NotModified(widget, etag)
    return Response(widget, headers={"ETag": etag})


@post(
    "/widgets",
    dto=WidgetCreate,
    return_dto=None,
    status_code=202,
    guards=JSON_WRITE_GUARDS,
    security=WRITE_SECURITY,
    responses=command_responses("widget-exists", "unsupported-media-type", "internal"),
)
async def create_widget(
    data: Annotated[DTOData[Widget], Body(examples=examples(a_widget=SPROCKET))], intake: NamedDependency[Intake]
) -> Response[CommandResource]:
    """Accepts a command to create a widget; fails once applied if the sku exists."""
    values = data.as_builtins()
    sku = values.pop("sku")
    return await intake.submit(sku, CreateWidget(values=values))


@patch(
    "/widgets/{sku:str}",
    dto=WidgetPatch,
    return_dto=None,
    status_code=202,
    guards=JSON_WRITE_GUARDS,
    security=WRITE_SECURITY,
    responses=command_responses("widget-not-found", "conflict", "unsupported-media-type", "internal", outcome=UPDATED),
)
async def update_widget(
    data: Annotated[DTOData[Widget], Body(examples=examples(a_new_price={"price_cents": 1799}))],
    sku: SkuPath,
    intake: NamedDependency[Intake],
    if_match: IfMatch = None,
) -> Response[CommandResource]:
    """Accepts a partial update: any non-empty subset of `name`, `price_cents`, `internal_notes`."""
    changes = data.as_builtins()
    if not changes:
        raise invalid(
            "A PATCH must change at least one field.",
            [{"name": "body", "reason": "empty: give at least one field to change"}],
        )
    return await intake.submit(sku, UpdateWidget(changes=changes, expected_version=_expected_version(if_match)))


@delete(
    "/widgets/{sku:str}",
    return_dto=None,
    status_code=202,
    guards=WRITE_GUARDS,
    security=WRITE_SECURITY,
    responses=command_responses("widget-not-found", "conflict", "internal", outcome=DELETED),
)
async def delete_widget(
    sku: SkuPath, intake: NamedDependency[Intake], if_match: IfMatch = None
) -> Response[CommandResource]:
    """Accepts a command to delete a widget."""
    return await intake.submit(sku, DeleteWidget(expected_version=_expected_version(if_match)))


@post(
    "/widgets/imports",
    status_code=202,
    guards=[writes_sent_as(JSON_MEDIA_TYPE, CSV_MEDIA_TYPE)],
    security=WRITE_SECURITY,
    request_max_body_size=MAX_IMPORT_BYTES,
    operation_class=ImportOperation,
    responses=command_responses("payload-too-large", "unsupported-media-type", "internal", outcome=IMPORTED),
)
async def import_widgets(request: Request[Any, Any, Any], intake: NamedDependency[Intake]) -> Response[CommandResource]:
    """Accepts an import of up to 10,000 widgets, as JSON (`{"widgets": [...]}`) or CSV (`text/csv`, header
    `sku,name,price_cents,internal_notes`): created or updated, in batches, with `command.progress` events. Each row is
    checked alone: the rows that break a rule are reported in the command's `result`, and the rest are applied."""
    media_type, _ = request.content_type
    body = await request.body()
    parsed = await anyio.to_thread.run_sync(parse_import, media_type, body, limiter=IMPORT_PARSERS)
    return await intake.submit_import(parsed)


def _names(if_none_match: str, etag: str) -> bool:
    """Whether `If-None-Match` is `*` or lists the ETag, compared weakly (`W/` ignored) as RFC 9110 (13.1.2) asks."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _expected_version(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    value = if_match.strip().removeprefix("W/").strip('"')
    # `isdigit` alone also takes digits such as "²", which `int` refuses.
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise problem_exception(
            400,
            'If-Match must be a widget version in quotes, e.g. If-Match: "3".',
            invalid_params=[{"name": "If-Match", "reason": "not a version"}],
        )
    return int(value)
