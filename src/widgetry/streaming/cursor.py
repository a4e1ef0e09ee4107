"""Redis stream ids as comparable cursors."""

from __future__ import annotations

StreamId = tuple[int, int]

ORIGIN: StreamId = (0, 0)


def parse_stream_id(value: str | bytes | None) -> StreamId | None:
    """`"1700000000000-3"` -> `(1700000000000, 3)`; anything else -> `None`."""
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    ms, sep, seq = text.strip().partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit() or len(ms) > 20 or len(seq) > 20:
        return None
    return int(ms), int(seq)


def format_stream_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"
