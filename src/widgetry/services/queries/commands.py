"""The command aggregate's statements on the write path: recording a batch, and claiming one to apply."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, Uuid, bindparam, text

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


@functools.lru_cache(maxsize=16)
def autocommit_engine(engine: AsyncEngine) -> AsyncEngine | None:
    """PostgreSQL: the engine as connections outside any transaction hand it out (sharing its pool), for the write
    path's single statements, each durable as it ends with no BEGIN or COMMIT round trip. `None` on SQLite, where
    the write path keeps to sessions."""
    return engine.execution_options(isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else None


RECORD_BATCH = text(
    """
    WITH batch AS (
        SELECT b.id, b.type, b.sku, b.payload, b.n
        FROM unnest(CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:skus AS text[]), CAST(:payloads AS text[]))
            WITH ORDINALITY AS b (id, type, sku, payload, n)
    ),
    heads AS (
        INSERT INTO widget_heads AS head (sku, accepted_seq, applied_seq)
        SELECT sku, count(*), 0 FROM batch GROUP BY sku ORDER BY sku
        ON CONFLICT (sku) DO UPDATE SET accepted_seq = head.accepted_seq + excluded.accepted_seq
        RETURNING head.sku, head.accepted_seq
    )
    INSERT INTO commands (id, type, sku, seq, payload, status, accepted_at, recoveries)
    SELECT batch.id, batch.type, batch.sku,
        heads.accepted_seq - count(*) OVER skus + row_number() OVER (skus ORDER BY batch.n),
        CAST(batch.payload AS jsonb), 'accepted', :accepted_at, 0
    FROM batch JOIN heads ON heads.sku = batch.sku
    WINDOW skus AS (PARTITION BY batch.sku)
    """
).bindparams(bindparam("ids"), bindparam("types"), bindparam("skus"), bindparam("payloads"), bindparam("accepted_at"))
"""PostgreSQL: records a batch of commands in one statement, so one round trip on an autocommit connection makes it
durable. Each sku's `accepted_seq` moves on by its count of commands (its head created if new; heads locked in sku
order, as every other lock on heads), and the sku's commands take the seqs below it in the order given."""

# `(SELECT set_config('synchronous_commit', 'off', true)) = 'off'` in a statement's condition (a subquery, so it is
# evaluated once and the plan keeps its indexes): the statement's own commit then does not wait for its WAL to reach
# the disk (it is visible at once all the same). For writes a crash may lose harmlessly, on the path of every
# command. The setting lasts until that commit only; the next transaction that waits for the disk (the apply's) makes
# the earlier write durable too, the WAL being written in order.
CLAIM = text(
    """
    UPDATE commands SET status = 'running'
    WHERE id IN (
        SELECT id FROM commands
        WHERE id = ANY(CAST(:ids AS uuid[])) AND status IN ('accepted', 'running')
        FOR UPDATE SKIP LOCKED
    ) AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
    RETURNING id, sku, seq
    """
).bindparams(bindparam("ids"))
"""PostgreSQL: marks the unfinished commands among these `running` (visible at once: autocommit) and returns their
skus and seqs. Rows another transaction holds are skipped (see `ApplyService.claim`). A claim lost in a crash costs
nothing: its commands are still unfinished, and are applied all the same."""

READ_TARGETS = text("SELECT id, sku, seq FROM commands WHERE id = ANY(CAST(:ids AS uuid[]))").bindparams(
    bindparam("ids")
)
"""The skus and seqs of commands not claimed: finished already, or held by another transaction."""

RECORD_OUTCOMES = text(
    """
    WITH moved AS (
        UPDATE widget_heads SET applied_seq = head.seq
        FROM unnest(CAST(:head_skus AS text[]), CAST(:head_seqs AS bigint[])) AS head (sku, seq)
        WHERE widget_heads.sku = head.sku
    ),
    ended AS (
        UPDATE commands SET status = outcome.status, error = CAST(outcome.error AS jsonb),
            finished_at = outcome.finished_at
        FROM unnest(
            CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:errors AS text[]),
            CAST(:finished_ats AS timestamptz[])
        ) AS outcome (id, status, error, finished_at)
        WHERE commands.id = outcome.id
    )
    INSERT INTO events (event_id, type, sku, version, command_id, occurred_at, data)
    SELECT event.event_id, event.type, event.sku, event.version, event.command_id, event.occurred_at,
        CAST(event.data AS jsonb)
    FROM unnest(
        CAST(:event_ids AS uuid[]), CAST(:types AS text[]), CAST(:skus AS text[]), CAST(:versions AS bigint[]),
        CAST(:command_ids AS uuid[]), CAST(:occurred_ats AS timestamptz[]), CAST(:datas AS text[])
    ) WITH ORDINALITY AS event (event_id, type, sku, version, command_id, occurred_at, data, n)
    ORDER BY event.n
    RETURNING id, event_id
    """
).columns(id=BigInteger, event_id=Uuid)
"""PostgreSQL: what an apply did besides its widgets' changes, in one statement (one round trip, where a statement
per table was three): each sku's `applied_seq` moves on, each command ends with its outcome, and its events are
inserted in the order given (the outbox's row ids, which order their publishing, follow it); returns each event's
row id. Every part runs whether or not another reads it (PostgreSQL runs a data-modifying WITH to its end)."""
