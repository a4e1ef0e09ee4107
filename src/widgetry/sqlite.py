"""SQLite for one process: statements run on the event loop, and writers take turns in the process, not in SQLite.

aiosqlite gives each connection a thread and hands it every call, cursor and fetch included: a transaction of a few
statements made as many round trips through the event loop, each waiting for the loop's next turn while the loop was
busy serving requests (measured: most of the embedded mode's latency at 100 commands/s). SQLite itself takes
microseconds per statement here (WAL, no fsync per commit), so calling it in place costs the loop less than handing
the call to a thread. And connections that wanted to write at once met in SQLite's busy handler, which sleeps and
polls (1, 2, 5, ... 100 ms): the latency's long tail. Here a connection about to write first waits, without polling,
for the one writing to end its transaction; readers never wait (WAL).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from widgetry.compat import InPlaceConnection

logger = logging.getLogger(__name__)

WAL_CHECKPOINT_INTERVAL_S = 1.0
"""How often `WalCheckpoints` copies the write-ahead log into the database, from a thread of its own."""
WAL_AUTOCHECKPOINT_PAGES = 10_000
"""SQLite's own checkpoint, run by the commit that grows the log past this many pages (4 KB each): a safety net
for a process that runs no `WalCheckpoints` (a `widgetry` command beside the server). At SQLite's default of
1,000 pages, a commit on the event loop checkpointed about once every 75 commands, each time holding the loop for
about 4 ms (measured: 75 SQLite calls over 1 ms, 296 ms in all, in 3,000 commands at 100/s)."""
BUSY_TIMEOUT_S = 30
"""How long a write waits for another process's write transaction (a `widgetry` command run beside the server):
in SQLite's busy handler, which holds the event loop. Writers within the process wait for each other in turn."""
STATEMENTS = frozenset({"execute", "executemany", "executescript"})
"""The calls that run SQL (on a connection or a cursor), their first argument the statement."""
READ = re.compile(r"\s*(--[^\n]*\n\s*|/\*.*?\*/\s*)*(SELECT|PRAGMA)\b", re.IGNORECASE | re.DOTALL)
"""Statements that never write (WAL readers do not wait for the writer). Anything else, a `SAVEPOINT` or a `WITH`
included, may start a write transaction, so it takes the writer's turn first."""


def create_sqlite_engine(url: str) -> AsyncEngine:
    """An engine whose connections call SQLite in place and share one writer's turn."""
    database = make_url(url).database or ":memory:"
    turn = asyncio.Lock()

    async def connect() -> TurnTakingConnection:
        connection = TurnTakingConnection(
            lambda: sqlite3.connect(database, timeout=BUSY_TIMEOUT_S, check_same_thread=False), turn
        )
        return await connection

    engine = create_async_engine(url, async_creator=connect)
    event.listen(engine.sync_engine, "connect", _pragmas)
    return engine


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (GET requests, the relay's scans) go on while a command is applied, and a commit appends to the
    # log instead of rewriting pages. synchronous=NORMAL: a commit does not wait for fsync (only checkpoints do);
    # a power loss may lose the last commits, but the file never corrupts, and a crash of the process loses nothing.
    # For a single-machine development store that is the trade: FULL costs an fsync per commit on the write path.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    cursor.close()


class WalCheckpoints:
    """Copies the write-ahead log into the database every `WAL_CHECKPOINT_INTERVAL_S`, on a connection and a thread
    of its own, while the app runs: the copying and its fsyncs happen beside the event loop (Python's sqlite3 lets
    go of the GIL while SQLite works), not inside a commit on it. A PASSIVE checkpoint waits for no reader or writer:
    it copies what it can, and the next one the rest."""

    def __init__(self, url: str) -> None:
        self._database = make_url(url).database or ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="widgetry-wal-checkpoints", daemon=True)

    def __enter__(self) -> WalCheckpoints:
        if self._database and self._database != ":memory:":
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        connection = sqlite3.connect(self._database, timeout=0)
        try:
            while not self._stop.wait(WAL_CHECKPOINT_INTERVAL_S):
                self._checkpoint(connection)
            self._checkpoint(connection)
        finally:
            connection.close()

    @staticmethod
    def _checkpoint(connection: sqlite3.Connection) -> None:
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as error:  # busy or locked now: the next one copies it
            logger.debug("WAL checkpoint skipped: %s", error)


class TurnTakingConnection(InPlaceConnection):
    """A connection called in place whose statements that may write first wait for the process's writer's turn,
    which it keeps until its transaction ends."""

    def __init__(self, connector: Callable[[], sqlite3.Connection], turn: asyncio.Lock) -> None:
        super().__init__(connector)
        self._turn = turn
        self._has_turn = False

    async def before_call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if not self._has_turn and fn.__name__ in STATEMENTS and not READ.match(args[0]):
            await self._turn.acquire()
            self._has_turn = True

    def after_call(self) -> None:
        """Hands the writer's turn on once this connection's transaction has ended (or the connection has)."""
        if self._has_turn and not self._in_transaction():
            self._has_turn = False
            self._turn.release()

    def _in_transaction(self) -> bool:
        try:
            return self.in_transaction
        except (ValueError, sqlite3.ProgrammingError):  # closed
            return False
