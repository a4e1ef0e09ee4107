"""Redis stream ids as comparable cursors."""

from __future__ import annotations

import re

StreamId = tuple[int, int]

ORIGIN: StreamId = (0, 0)
MAX_PART = 2**64 - 1
"""Redis stream ids are two unsigned 64-bit numbers."""
STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
"""ASCII digits only, and no more than a 64-bit number has: `str.isdigit` admits `²` and other digits `int` refuses,
and `int` refuses more than 4,300 digits. A cursor comes from a client, so parsing it must never raise."""


def parse_stream_id(value: str | bytes | None) -> StreamId | None:
    """`"1700000000000-3"` -> `(1700000000000, 3)`; anything else -> `None`."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if (found := STREAM_ID.fullmatch(text.strip())) is None:
        return None
    stream_id = int(found[1]), int(found[2])
    return stream_id if max(stream_id) <= MAX_PART else None


def format_stream_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"
