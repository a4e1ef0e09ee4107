"""What the app wires when it is made, and not when its modules are imported: the listeners that count command
outcomes, on its own sessions only, and SAQ's logger level."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fakeredis.aioredis import FakeRedis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from widgetry.domain.commands import CommandStatus
from widgetry.domain.models import CommandRecord
from widgetry.observability.counts import Counts
from widgetry.observability.outcomes import observe


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'outcomes.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(CommandRecord.metadata.create_all, tables=[CommandRecord.__table__])
    yield engine
    await engine.dispose()


async def finish_a_command(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        record = CommandRecord(
            type="create_widget",
            sku="O-1",
            seq=1,
            payload={},
            status=CommandStatus.ACCEPTED.value,
            accepted_at=datetime.now(UTC),
        )
        session.add(record)
        await session.commit()
        record.status = CommandStatus.SUCCEEDED.value
        record.finished_at = datetime.now(UTC)
        await session.commit()


async def test_observed_sessions_count_each_finished_command_once_committed(engine: AsyncEngine) -> None:
    counts = Counts(FakeRedis(), "metrics")
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    observe(sessions, counts)

    await finish_a_command(sessions)

    assert counts.fields["applied:create_widget"] == 1


async def test_sessions_of_another_factory_are_not_counted(engine: AsyncEngine) -> None:
    counts = Counts(FakeRedis(), "metrics")
    observe(async_sessionmaker(engine, expire_on_commit=False), counts)

    await finish_a_command(async_sessionmaker(engine, expire_on_commit=False))

    assert counts.fields == {}


def test_importing_the_app_and_the_worker_wires_nothing_and_making_the_app_quiets_saq(tmp_path: Path) -> None:
    """Checked in a fresh interpreter: in this one, other tests have made apps, which configure logging."""
    probe = """
import logging
from sqlalchemy import event
from sqlalchemy.orm import Session
import widgetry.app, widgetry.workers.queue, widgetry.observability.outcomes as outcomes
from widgetry.settings import Settings
watched = [
    name for name, value in vars(outcomes).items() if callable(value)
    for identifier in ("after_flush", "after_commit", "after_soft_rollback")
    if event.contains(Session, identifier, value)
]
print(logging.getLogger("saq").level, watched)
widgetry.app.create_app(Settings())
print(logging.getLogger("saq").level)
"""
    printed = subprocess.run(  # noqa: S603 - our own probe
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60, cwd=tmp_path
    ).stdout

    assert printed.splitlines() == [f"{logging.NOTSET} []", f"{logging.WARNING}"], printed
