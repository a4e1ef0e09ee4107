"""PostgreSQL: the write path's single statements, run as prepared statements on one connection a process keeps.

Every command passes through a few single statements outside any transaction: its batch recorded (web), claimed and
its events marked published (worker). Checked out of SQLAlchemy's pool and executed through its connection, result
and greenlet layers, each cost some 0.4 ms of CPU more than the statement itself on these machines (measured with
`RECORD_BATCH`: 570 us against 155 us a batch, and 1.05 ms against 0.55 ms of wall time), as much as the rest of a
lone write's database work. So these statements, still SQLAlchemy's and compiled once by its asyncpg dialect, run
straight on the driver's connection, which is checked out of the same pool and kept. Everything else, the apply's
unit of work included, stays on the pool and the ORM.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from widgetry.services.queries.commands import autocommit_engine

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql.elements import TextClause

PING_AFTER_IDLE_S = 2.0
"""A kept connection idle this long is pinged before its next statement (one round trip), and replaced if the
database dropped it meanwhile: as the pool does for its own idle connections (see `widgetry.connections`), so a
database restarted during a quiet spell costs no request a failure."""


class HeldConnection:
    """One autocommit connection of the engine's pool, kept, and each statement prepared on it once.

    Statements on it take turns (a lock): the callers are group commits, one batch at a time. A statement that
    fails for any reason drops the connection, which the pool then replaces; the error goes to the caller as it is
    (`widgetry.services.unavailable` knows asyncpg's own)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._lock = asyncio.Lock()
        self._connection: AsyncConnection | None = None
        self._driver: Any = None
        self._prepared: dict[TextClause, tuple[Any, list[str]]] = {}
        self._last_used = 0.0

    @property
    def engine(self) -> AsyncEngine:
        """The autocommit engine whose pool the connection comes from, for the statements not run on it."""
        return self._engine

    async def fetch(self, statement: TextClause, params: Mapping[str, Any]) -> list[Any]:
        """The statement's rows (asyncpg records, which unpack as tuples), committed as it returns."""
        async with self._lock:
            if (
                self._connection is not None
                and time.monotonic() - self._last_used >= PING_AFTER_IDLE_S
                and not await self._answers()
            ):
                await self._discard()
            try:
                if self._connection is None:
                    self._connection = await self._engine.connect()
                    self._driver = (await self._connection.get_raw_connection()).driver_connection
                if (prepared := self._prepared.get(statement)) is None:
                    compiled = statement.compile(dialect=self._engine.dialect)
                    prepared = self._prepared[statement] = (
                        await self._driver.prepare(str(compiled)),
                        list(compiled.positiontup or ()),
                    )
                query, names = prepared
                rows: list[Any] = await query.fetch(*(params[name] for name in names))
            except BaseException:
                await self._discard()
                raise
            self._last_used = time.monotonic()
            return rows

    async def _answers(self) -> bool:
        try:
            await self._driver.fetchval("SELECT 1")
        except Exception:  # noqa: BLE001 - any failure means the connection is no use
            return False
        return True

    async def close(self) -> None:
        """Returns the connection to the pool: before the engine is disposed."""
        async with self._lock:
            await self._release()

    async def _release(self) -> None:
        connection, self._connection, self._driver = self._connection, None, None
        self._prepared.clear()
        if connection is not None:
            await connection.close()

    async def _discard(self) -> None:
        """Drops the connection (its state is unknown after a failure or a cancel) rather than returning it."""
        connection, self._connection, self._driver = self._connection, None, None
        self._prepared.clear()
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.invalidate()
            with contextlib.suppress(Exception):
                await connection.close()


@functools.lru_cache(maxsize=16)
def held_connection(engine: AsyncEngine) -> HeldConnection | None:
    """The process's held connection of the engine; `None` on SQLite, where the write path keeps to sessions."""
    autocommit = autocommit_engine(engine)
    return HeldConnection(autocommit) if autocommit is not None else None
