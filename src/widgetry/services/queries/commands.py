"""The command aggregate's statements on the write path: recording a batch, and claiming one to apply."""

from __future__ import annotations

from sqlalchemy import bindparam, text

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
