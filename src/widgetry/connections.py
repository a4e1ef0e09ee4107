"""The one place that builds the Redis client and the database configuration, real or embedded."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advanced_alchemy.extensions.litestar import (
    AlembicAsyncConfig,
    AsyncSessionConfig,
    SQLAlchemyAsyncConfig,
)
from redis.asyncio import Redis
from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import create_async_engine

from widgetry.compat import TimedWriteConnection
from widgetry.observability.counts import Counts
from widgetry.sqlite import create_sqlite_engine
from widgetry.streaming.publisher import EventPublisher, InProcessEventPublisher

if TYPE_CHECKING:
    from widgetry.settings import Settings

PING_AFTER_IDLE_S = 2.0


def migrations_path() -> Path:
    """`migrations/` at the top of a checkout (editable install), or packaged inside a built wheel."""
    packaged = Path(__file__).parent / "migrations"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "migrations"


def build_redis(settings: Settings) -> Redis:
    if settings.embedded_redis:
        # Imported here: a process on a real Redis need not hold fakeredis (3 MB of every web and worker process).
        from fakeredis import FakeServer  # noqa: PLC0415
        from fakeredis.aioredis import FakeRedis  # noqa: PLC0415

        # No socket timeout: with one, redis-py wraps every write in `asyncio.wait_for`, a task and two more turns of
        # the event loop per command (measured: twice the cost of a GET, and each turn waits behind the requests the
        # loop is serving). A server in this process answers as the command is written, or never.
        return FakeRedis(server=FakeServer(), socket_timeout=None)
    # A plain TCP connection writes in place (compat.TimedWriteConnection); TLS and Unix sockets keep redis-py's own.
    plain = {"connection_class": TimedWriteConnection} if settings.redis_url.startswith("redis://") else {}
    return Redis.from_url(settings.redis_url, health_check_interval=30, **plain)  # type: ignore[arg-type]


def build_alchemy(settings: Settings) -> SQLAlchemyAsyncConfig:
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        engine = create_sqlite_engine(url)
    else:
        # LIFO: the connections in use stay few and warm, and the ones left idle are those `_ping_if_idle` checks.
        engine = create_async_engine(url, pool_size=10, max_overflow=20, pool_use_lifo=True)
        event.listen(engine.sync_engine.pool, "checkin", _note_idle)
        event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle)
    return SQLAlchemyAsyncConfig(
        engine_instance=engine,
        session_config=AsyncSessionConfig(expire_on_commit=False),
        before_send_handler="autocommit",
        # Errors are problem details, mapped in one place (api/problems.py), not Advanced Alchemy's own JSON.
        set_default_exception_handler=False,
        # No column holds a FileObject; Advanced Alchemy's listener for them still inspects every instance before
        # each flush and checks itself after every commit (measured: 70 to 100 us of a lone command's four commits).
        enable_file_object_listener=False,
        alembic_config=AlembicAsyncConfig(
            script_location=str(migrations_path()),
            version_table_name="alembic_version",
            render_as_batch=True,
        ),
    )


def _note_idle(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Pings a pooled connection before use only when it has sat idle for a while: one used within the last
    `PING_AFTER_IDLE_S` was alive then, and a database restarted since fails its next statement, which SQLAlchemy
    takes as a disconnect and answers by dropping every connection the pool holds. `pool_pre_ping` would instead
    spend a round trip on every checkout: the lone write's path would pay for it every time.
    """
    if time.monotonic() - record.info.get("idle_since", math.inf) < PING_AFTER_IDLE_S:
        return
    try:
        dbapi_connection.ping()
    except Exception as error:
        raise DisconnectionError(f"a pooled connection failed its ping: {error!r}") from error


@dataclass
class Connections:
    settings: Settings
    redis: Redis
    alchemy: SQLAlchemyAsyncConfig
    publisher: EventPublisher
    counts: Counts
    """This process's counts of what the app does, for the deployment's metrics."""

    @classmethod
    def build(cls, settings: Settings) -> Connections:
        redis = build_redis(settings)
        return cls(
            settings=settings,
            redis=redis,
            alchemy=build_alchemy(settings),
            publisher=(InProcessEventPublisher if settings.embedded_redis else EventPublisher)(
                redis,
                settings.events_stream,
                settings.stream_max_len,
                remember_for=timedelta(days=settings.command_retention_days),
            ),
            counts=Counts(redis, f"{settings.redis_prefix}:metrics"),
        )
