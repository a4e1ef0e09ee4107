"""Liveness and readiness for orchestrators."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import text

from widgetry.api.problems import problem_exception
from widgetry.observability.queues import QueueStatus, queue_status
from widgetry.settings import WorkerMode

CHECK_TIMEOUT_S = 2.0


@get("/health", sync_to_thread=False)
def health() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "ok"}


@get("/ready")
async def ready(state: State) -> Response[dict[str, Any]]:
    """200 when the database and Redis answer and the event reader runs; otherwise 503 naming what failed. Also
    reports the queue (jobs queued, running, scheduled) and each worker's seconds since its last heartbeat."""
    database, queue = await asyncio.gather(_answers(_database(state)), _answers(queue_status(state.queues)))
    checks = {"database": database is not None, "redis": queue is not None, "events": state.hub.reading}
    status: dict[str, Any] = {name: "ok" if ok else "unavailable" for name, ok in checks.items()}
    if isinstance(queue, QueueStatus):
        status["queue"] = {"queued": queue.queued, "active": queue.active, "scheduled": queue.scheduled}
        # Reported, never failed on: this process can accept commands without a worker (they are recorded and
        # queued, and applied when one starts), and taking every web process out of service because external
        # workers are down (or not started yet) would stop reads and event streams too. Alert on `workers` instead.
        status["workers"] = {"mode": state.settings.workers.value, "heartbeats": queue.heartbeats}
        if not queue.heartbeats and state.settings.workers is WorkerMode.EXTERNAL:
            status["workers"]["note"] = "no external worker is running: commands wait in the queue"
    if failed := [name for name, ok in checks.items() if not ok]:
        raise problem_exception(503, f"Not ready: {', '.join(failed)} unavailable.", checks=status)
    return Response(status)


async def _database(state: State) -> bool:
    async with state.connections.alchemy.get_engine().connect() as connection:
        await connection.execute(text("SELECT 1"))
    return True


async def _answers(check: Any) -> Any:
    """What the check returns, or `None` when it fails or takes too long."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            return await check
    except Exception:  # noqa: BLE001 - any failure means "not ready", reported by name
        return None
