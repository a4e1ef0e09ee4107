"""The SQLite engine: writers in one process take turns without SQLite's busy handler, readers never wait, and the
write-ahead log is copied into the database by a thread of its own, not by a commit on the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import eventually
from widgetry.sqlite import WalCheckpoints, create_sqlite_engine


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_sqlite_engine(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}")
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE t (n INTEGER)"))
    yield engine
    await engine.dispose()


async def rows(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as connection:
        return list((await connection.execute(text("SELECT n FROM t ORDER BY rowid"))).scalars())


async def test_a_second_writer_waits_for_the_first_to_commit_and_then_writes(engine: AsyncEngine) -> None:
    first_wrote, second_started = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO t VALUES (1)"))
            first_wrote.set()
            await second_started.wait()

    async def second() -> None:
        await first_wrote.wait()
        async with engine.begin() as connection:
            second_started.set()
            await connection.execute(text("INSERT INTO t VALUES (2)"))

    await asyncio.wait_for(asyncio.gather(first(), second()), 5)

    assert await rows(engine) == [1, 2]


async def test_a_reader_reads_while_a_writer_holds_its_transaction_open(engine: AsyncEngine) -> None:
    async with engine.begin() as writer:
        await writer.execute(text("INSERT INTO t VALUES (1)"))

        committed_so_far = await asyncio.wait_for(rows(engine), 5)

    assert committed_so_far == []
    assert await rows(engine) == [1]


async def test_a_writer_cancelled_mid_transaction_hands_its_turn_on(engine: AsyncEngine) -> None:
    wrote = asyncio.Event()

    async def stuck() -> None:
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO t VALUES (1)"))
            wrote.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(stuck())
    await wrote.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5), engine.begin() as connection:
        await connection.execute(text("INSERT INTO t VALUES (2)"))

    assert await rows(engine) == [2]


def in_the_database_file(path: Path) -> int:
    """Rows of `t` in the database file itself: `immutable` reads the file and ignores the write-ahead log."""
    connection = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        if not connection.execute("SELECT count(*) FROM sqlite_master WHERE name = 't'").fetchone()[0]:
            return 0  # not even the table is in the file yet
        return int(connection.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        connection.close()


async def test_commits_leave_the_log_and_the_checkpoint_thread_copies_it_into_the_database(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A commit on the event loop does not checkpoint (SQLite's own threshold is raised far above a few commits);
    `WalCheckpoints` does, from its thread."""
    path = tmp_path / "turns.db"
    for n in range(20):
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
    assert await rows(engine) == list(range(20))
    assert in_the_database_file(path) == 0  # still only in the log

    with WalCheckpoints(f"sqlite+aiosqlite:///{path}"):

        async def copied() -> bool:
            return in_the_database_file(path) == 20

        await eventually(copied, 10, "the checkpoint thread to copy the log into the database")
