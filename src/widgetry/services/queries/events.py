"""The outbox's statements on the write path that PostgreSQL runs outside any transaction."""

from __future__ import annotations

from sqlalchemy import bindparam, text

RECORD_STREAM_IDS = text(
    """
    UPDATE events SET stream_id = published.stream_id
    FROM unnest(CAST(:rows AS bigint[]), CAST(:stream_ids AS text[])) AS published (row_id, stream_id)
    WHERE events.id = published.row_id AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
    """
).bindparams(bindparam("rows"), bindparam("stream_ids"))
"""PostgreSQL: records the stream ids of a publish's events in one statement (one round trip, atomic on an
autocommit connection), its commit not waiting for the disk (see `CLAIM`). A record lost in a crash costs nothing: the
relay publishes those events again, and the publisher finds each on the stream already and returns its id."""
