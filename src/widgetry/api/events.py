"""The event stream over SSE, resumable by `Last-Event-ID`."""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import Stream

from widgetry.api.docs import EVENT_STREAM_RESPONSES
from widgetry.api.limits import StreamLimit
from widgetry.api.problems import invalid
from widgetry.api.widgets import SkuPath
from widgetry.domain.events import EventType
from widgetry.streaming.hub import EventHub, Filter

SkuFilter = Annotated[list[str] | None, QueryParameter(description="Only events of these skus (repeatable).")]
TypesFilter = Annotated[
    list[str] | None, QueryParameter(description="Only these event types, comma-separated or repeated.")
]
CursorQuery = Annotated[
    str | None, QueryParameter(name="last_event_id", description="Resume after this event id (as `Last-Event-ID`).")
]
CursorHeader = Annotated[str | None, HeaderParameter(name="Last-Event-ID", description="Resume after this event id.")]
EVENT_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@get("/events", media_type="text/event-stream", middleware=[StreamLimit()], responses=EVENT_STREAM_RESPONSES)
async def stream_events(
    hub: NamedDependency[EventHub],
    sku: SkuFilter = None,
    types: TypesFilter = None,
    last_event_id: CursorQuery = None,
    last_event_id_header: CursorHeader = None,
) -> Stream:
    """Every event (or those of the given skus and types), live; resumes exactly after a given id."""
    return _stream(hub, Filter(sku, _event_types(types)), last_event_id_header or last_event_id)


@get(
    "/widgets/{sku:str}/events",
    media_type="text/event-stream",
    middleware=[StreamLimit()],
    responses=EVENT_STREAM_RESPONSES,
)
async def stream_widget_events(
    hub: NamedDependency[EventHub],
    sku: SkuPath,
    types: TypesFilter = None,
    last_event_id: CursorQuery = None,
    last_event_id_header: CursorHeader = None,
) -> Stream:
    """The events of one widget."""
    return _stream(hub, Filter([sku], _event_types(types)), last_event_id_header or last_event_id)


def _stream(hub: EventHub, matches: Filter, cursor: str | None) -> Stream:
    # A plain Stream, not ServerSentEvent: the hub encodes each message once and every subscriber sends the bytes.
    return Stream(hub.subscribe(matches, cursor), media_type="text/event-stream", headers=EVENT_STREAM_HEADERS)


def _event_types(raw: list[str] | None) -> list[str] | None:
    if not raw:
        return None
    names = [name.strip() for value in raw for name in value.split(",") if name.strip()]
    known = {member.value for member in EventType}
    if unknown := [name for name in names if name not in known]:
        raise invalid("Unknown event types.", [{"name": "types", "reason": f"unknown: {name}"} for name in unknown])
    return names
