"""The one event envelope, shared by the outbox, the Redis stream and the SSE `data:` line."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import msgspec


class EventType(StrEnum):
    WIDGET_CREATED = "widget.created"
    WIDGET_UPDATED = "widget.updated"
    WIDGET_DELETED = "widget.deleted"
    COMMAND_FAILED = "command.failed"
    COMMAND_PROGRESS = "command.progress"
    COMMAND_COMPLETED = "command.completed"


STREAM_RESET = "stream.reset"
"""Sent first to a subscriber whose cursor is unknown or older than the stream keeps."""


class Event(msgspec.Struct, frozen=True, kw_only=True):
    event_id: UUID
    type: EventType
    sku: str | None
    version: int | None
    command_id: UUID
    occurred_at: datetime
    data: dict[str, Any]


_encoder = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)
