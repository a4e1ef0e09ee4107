"""The write path's kept connection (`widgetry.services.queries.held`) on the real PostgreSQL: its statements
commit as they return, and a connection the database dropped is replaced."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import text
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


async def value_of(database_url: str, query: str, *args: object) -> object:
    """One value read in a session of its own (not the held connection's)."""
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval(query, *args)
    finally:
        await connection.close()


async def kill_held_backend(held: HeldConnection, database_url: str) -> int:
    """Terminates the held connection's backend from another session, as a database restart would; returns its pid."""
    [(pid,)] = await held.fetch(BACKEND, {})
    await value_of(database_url, "SELECT pg_terminate_backend($1)", pid)
    return pid


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
    pid = await kill_held_backend(held, empty_database)

    with pytest.raises(Exception) as failure:
        await held.fetch(RECORD_BATCH, batch("held-2"))
    assert is_unavailable(failure.value)  # a 503 for the requests of that batch, not a 500

    await held.fetch(RECORD_BATCH, batch("held-2"))
    [(new_pid,)] = await held.fetch(BACKEND, {})
    assert new_pid != pid
    assert await value_of(empty_database, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid) == 0
    assert await value_of(empty_database, "SELECT count(*) FROM commands WHERE sku = 'held-2'") == 2


async def test_a_connection_dropped_while_idle_is_replaced_before_its_next_statement(
    held: HeldConnection, engine: AsyncEngine, empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database restarted during a quiet spell fails no statement: an idle connection is pinged first."""
    await held.fetch(RECORD_BATCH, batch("held-3"))
    pid = await kill_held_backend(held, empty_database)

    monkeypatch.setattr(held_module, "PING_AFTER_IDLE_S", 0.0)
    await held.fetch(RECORD_BATCH, batch("held-3"))

    [(new_pid,)] = await held.fetch(BACKEND, {})
    assert new_pid != pid
    assert await value_of(empty_database, "SELECT count(*) FROM commands WHERE sku = 'held-3'") == 2
    await held.close()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]  # closed: back in the pool
