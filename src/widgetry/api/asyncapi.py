"""The event stream's contract as an AsyncAPI 3 document, served beside OpenAPI at /schema/asyncapi.json.

OpenAPI describes the requests; what arrives on `/events` afterwards is described here, built from the same
definitions the service uses: the msgspec event envelope, the event types, the public widget as the API's read DTO
renders it (taken from the app's own OpenAPI document), and the command resource's fields.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import version
from typing import Any

import msgspec
from litestar import Request, get

from widgetry.api.schemas import CommandResource
from widgetry.domain.events import STREAM_RESET, Event, EventType

ASYNCAPI_PATH = "/schema/asyncapi.json"
SCHEMAS = "#/components/schemas/"
WIDGET_CHANGES = (EventType.WIDGET_CREATED, EventType.WIDGET_UPDATED)
COMMAND_OUTCOME_FIELDS = ("status", "progress", "error", "result")
"""What a `command.*` event's `data` may carry: these fields of the command resource, with the same types."""
DESCRIPTIONS = {
    EventType.WIDGET_CREATED: "A create (or an import's row that created a widget) was applied: the public widget.",
    EventType.WIDGET_UPDATED: "An update (or an import's row that changed a widget) was applied: the public widget.",
    EventType.WIDGET_DELETED: "A delete was applied: the widget's sku.",
    EventType.COMMAND_FAILED: "A command ended failed: its status and its problem document.",
    EventType.COMMAND_PROGRESS: "An import applied another batch of rows: its progress.",
    EventType.COMMAND_COMPLETED: "An import finished: its status, progress and result.",
}
STREAM_DESCRIPTION = (
    "Server-sent events (text/event-stream). Each message's SSE `event:` is its type and its `data:` the JSON "
    "payload below; its SSE `id:` is the stream position, opaque and increasing. Send the last id seen as "
    "`Last-Event-ID` (or `?last_event_id=`) to resume exactly after it; an unknown or expired id gets one "
    f"`{STREAM_RESET}` first. Filters: `?sku=` (repeatable) and `?types=` (comma-separated or repeated). "
    "A `: ping` comment keeps idle connections open."
)


@get(ASYNCAPI_PATH, include_in_schema=False, sync_to_thread=False)
def asyncapi_document(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the event stream."""
    return build_document(request.app.openapi_schema.to_schema())


def build_document(openapi: dict[str, Any]) -> dict[str, Any]:
    schemas = {**_envelope_schemas(), "Widget": _public_widget(openapi), **_payload_schemas()}
    messages = {_message_id(name): _message(name) for name in [*EventType, STREAM_RESET]}
    channel_messages = {key: {"$ref": f"#/components/messages/{key}"} for key in messages}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "widgetry events",
            "version": _version(),
            "description": "What happens to widgets and commands, live, resumable by id. " + STREAM_DESCRIPTION,
        },
        "defaultContentType": "application/json",
        "channels": {
            "events": {
                "address": "/events",
                "title": "Every event",
                "description": "Every event, or those of the skus and types asked for. " + STREAM_DESCRIPTION,
                "messages": channel_messages,
            },
            "widgetEvents": {
                "address": "/widgets/{sku}/events",
                "title": "One widget's events",
                "description": "The events of one widget. " + STREAM_DESCRIPTION,
                "parameters": {"sku": {"description": "The widget's sku."}},
                "messages": channel_messages,
            },
        },
        "operations": {
            f"receive{channel[0].upper()}{channel[1:]}": {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel}"},
                "messages": [{"$ref": f"#/channels/{channel}/messages/{key}"} for key in messages],
            }
            for channel in ("events", "widgetEvents")
        },
        "components": {"messages": messages, "schemas": schemas},
    }


def _message_id(event_type: str) -> str:
    """`widget.created` -> `widgetCreated`: component keys allow no dots."""
    head, _, tail = event_type.partition(".")
    return head + tail.title()


def _message(event_type: str) -> dict[str, Any]:
    return {
        "name": event_type,
        "title": event_type,
        "summary": DESCRIPTIONS.get(event_type, "Sent first when the resume id is unknown or expired: refetch state."),
        "contentType": "application/json",
        "payload": {"$ref": f"{SCHEMAS}{_schema_name(event_type)}"},
    }


def _schema_name(event_type: str) -> str:
    return _message_id(event_type)[0].upper() + _message_id(event_type)[1:]


def _envelope_schemas() -> dict[str, Any]:
    (_, components) = msgspec.json.schema_components([Event], ref_template=SCHEMAS + "{name}")
    return components


def _payload_schemas() -> dict[str, Any]:
    (_, command_components) = msgspec.json.schema_components([CommandResource], ref_template=SCHEMAS + "{name}")
    command_fields = command_components["CommandResource"]["properties"]
    outcome = {
        "type": "object",
        "required": ["status"],
        "properties": {field: command_fields[field] for field in COMMAND_OUTCOME_FIELDS},
    }
    data = {
        EventType.WIDGET_DELETED: {
            "type": "object",
            "required": ["sku"],
            "properties": {"sku": {"$ref": f"{SCHEMAS}Widget/properties/sku"}},
        },
        **dict.fromkeys(WIDGET_CHANGES, {"$ref": f"{SCHEMAS}Widget"}),
    }
    payloads = {
        _schema_name(event_type): {
            "allOf": [
                {"$ref": f"{SCHEMAS}Event"},
                {"properties": {"type": {"const": event_type.value}, "data": data.get(event_type, outcome)}},
            ]
        }
        for event_type in EventType
    }
    return payloads | {_schema_name(STREAM_RESET): {"type": "object", "maxProperties": 0}}


def _public_widget(openapi: dict[str, Any]) -> dict[str, Any]:
    """The widget as `GET /widgets/{sku}` answers it: the read DTO's schema, as Litestar wrote it in OpenAPI.
    No other member may appear: the model's private fields never leave the service."""
    (content,) = openapi["paths"]["/widgets/{sku}"]["get"]["responses"]["200"]["content"].values()
    read = openapi["components"]["schemas"][content["schema"]["$ref"].rsplit("/", 1)[1]]
    return read | {"title": "Widget", "additionalProperties": False}


@cache
def _version() -> str:
    return version("widgetry")
