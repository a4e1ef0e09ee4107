"""Liveness and readiness for orchestrators."""

from __future__ import annotations

import asyncio

from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import text

from widgetry.api.problems import problem_exception

CHECK_TIMEOUT_S = 2.0


@get("/health", sync_to_thread=False)
def health() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "ok"}


@get("/ready")
async def ready(state: State) -> Response[dict[str, str]]:
    """200 when the database and Redis answer and the event reader runs; otherwise 503 naming what failed."""
    database, redis = await asyncio.gather(_answers(_database(state)), _answers(state.connections.redis.ping()))
    checks = {"database": database, "redis": redis, "events": state.hub.reading}
    status = {name: "ok" if ok else "unavailable" for name, ok in checks.items()}
    if failed := [name for name, ok in checks.items() if not ok]:
        raise problem_exception(503, f"Not ready: {', '.join(failed)} unavailable.", checks=status)
    return Response(status)


async def _database(state: State) -> None:
    async with state.connections.alchemy.get_engine().connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _answers(check: object) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await check  # type: ignore[misc]
    except Exception:  # noqa: BLE001 - any failure means "not ready", reported by name
        return False
    return True
