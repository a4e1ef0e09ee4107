"""The write path's kept connection (`widgetry.services.queries.held`) on the real PostgreSQL: its statements
commit as they return, a connection that failed is replaced, and one left idle goes back to the pool."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from widgetry.services.queries import held as held_module
from widgetry.services.queries.commands import CLAIM, RECORD_BATCH
from widgetry.services.queries.held import HeldConnection, held_connection
from widgetry.services.unavailable import is_unavailable


@pytest.fixture
async def engine(empty_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(empty_database.replace("postgresql://", "postgresql+asyncpg://"))
    yield engine
    await engine.dispose()


@pytest.fixture
async def held(engine: AsyncEngine) -> AsyncIterator[HeldConnection]:
    held = held_connection(engine)
    assert held is not None
    yield held
    await held.close()


def batch(sku: str) -> dict[str, object]:
    return {
        "ids": [uuid.uuid4()],
        "types": ["create_widget"],
        "skus": [sku],
        "payloads": ['{"values": {"name": "n", "price_cents": 1}}'],
        "accepted_at": datetime.now(UTC),
    }


BACKEND = text("SELECT pg_backend_pid()")


async def backend_alive(database_url: str, pid: int) -> bool:
    connection = await asyncpg.connect(database_url)
    try:
        return bool(await connection.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid))
    finally:
        await connection.close()


async def test_a_recorded_batch_is_committed_when_the_statement_returns(
    held: HeldConnection, empty_database: str
) -> None:
    await held.fetch(RECORD_BATCH, batch("held-1"))
    await held.fetch(RECORD_BATCH, batch("held-1"))  # the same prepared statement, run again

    other = await asyncpg.connect(empty_database)  # another session sees both, with their seqs
    try:
        rows = await other.fetch("SELECT id, seq, status FROM commands WHERE sku = 'held-1' ORDER BY seq")
        assert [(row["seq"], row["status"]) for row in rows] == [(1, "accepted"), (2, "accepted")]

        claimed = await held.fetch(CLAIM, {"ids": [row["id"] for row in rows] + [uuid.uuid4()]})

        assert sorted((tuple(row) for row in claimed), key=lambda row: row[2]) == [
            (row["id"], "held-1", row["seq"]) for row in rows
        ]
        assert await other.fetchval("SELECT count(*) FROM commands WHERE status = 'running'") == 2
    finally:
        await other.close()


async def test_a_connection_killed_under_it_fails_one_statement_then_is_replaced(
    held: HeldConnection, empty_database: str
) -> None:
    await held.fetch(RECORD_BATCH, batch("held-2"))
    [(pid,)] = await held.fetch(BACKEND, {})
    admin = await asyncpg.connect(empty_database)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()

    with pytest.raises(Exception) as failure:
        await held.fetch(RECORD_BATCH, batch("held-2"))
    assert is_unavailable(failure.value)  # a 503 for the requests of that batch, not a 500

    await held.fetch(RECORD_BATCH, batch("held-2"))
    [(new_pid,)] = await held.fetch(BACKEND, {})
    assert new_pid != pid
    assert not await backend_alive(empty_database, pid)
    other = await asyncpg.connect(empty_database)
    try:
        assert await other.fetchval("SELECT count(*) FROM commands WHERE sku = 'held-2'") == 2
    finally:
        await other.close()


async def test_an_idle_connection_goes_back_to_the_pool(
    held: HeldConnection, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkins: list[object] = []
    event.listen(engine.sync_engine.pool, "checkin", lambda connection, _record: checkins.append(connection))
    await held.fetch(RECORD_BATCH, batch("held-3"))
    await held.fetch(RECORD_BATCH, batch("held-3"))
    assert (engine.pool.checkedout(), checkins) == (1, [])  # type: ignore[attr-defined]  # kept between statements

    monkeypatch.setattr(held_module, "IDLE_BEFORE_RETURN_S", 0.0)
    await held.fetch(RECORD_BATCH, batch("held-3"))  # returned first, then checked out again (the pool pings it)
    assert (engine.pool.checkedout(), len(checkins)) == (1, 1)  # type: ignore[attr-defined]

    await held.close()
    assert (engine.pool.checkedout(), len(checkins)) == (0, 2)  # type: ignore[attr-defined]
