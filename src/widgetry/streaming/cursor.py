"""Redis stream ids as comparable cursors."""

from __future__ import annotations

StreamId = tuple[int, int]

ORIGIN: StreamId = (0, 0)
MAX_PART = 2**64 - 1
"""Redis stream ids are two unsigned 64-bit numbers."""


def parse_stream_id(value: str | bytes | None) -> StreamId | None:
    """`"1700000000000-3"` -> `(1700000000000, 3)`; anything else -> `None`."""
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    ms, sep, seq = text.strip().partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        return None
    stream_id = int(ms), int(seq)
    return stream_id if max(stream_id) <= MAX_PART else None


def format_stream_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"
