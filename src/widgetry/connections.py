"""The one place that builds the Redis client and the database configuration, real or embedded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advanced_alchemy.extensions.litestar import (
    AlembicAsyncConfig,
    AsyncSessionConfig,
    SQLAlchemyAsyncConfig,
)
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from redis.asyncio import Redis
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from widgetry.streaming.publisher import EventPublisher

if TYPE_CHECKING:
    from widgetry.settings import Settings

SQLITE_BUSY_TIMEOUT_S = 30


def migrations_path() -> Path:
    """`migrations/` at the top of a checkout (editable install), or packaged inside a built wheel."""
    packaged = Path(__file__).parent / "migrations"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "migrations"


def build_redis(settings: Settings) -> Redis:
    if settings.embedded_redis:
        return FakeRedis(server=FakeServer())
    return Redis.from_url(settings.redis_url, health_check_interval=30)  # type: ignore[arg-type]


def build_alchemy(settings: Settings) -> SQLAlchemyAsyncConfig:
    url = settings.sqlalchemy_url
    engine_options: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_options = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    else:
        engine_options |= {"pool_size": 10, "max_overflow": 20}
    engine = create_async_engine(url, **engine_options)
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return SQLAlchemyAsyncConfig(
        engine_instance=engine,
        session_config=AsyncSessionConfig(expire_on_commit=False),
        before_send_handler="autocommit",
        # Errors are problem details, mapped in one place (api/problems.py), not Advanced Alchemy's own JSON.
        set_default_exception_handler=False,
        alembic_config=AlembicAsyncConfig(
            script_location=str(migrations_path()),
            version_table_name="alembic_version",
            render_as_batch=True,
        ),
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers work while the in-process worker writes; the busy timeout makes writers queue, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@dataclass
class Connections:
    settings: Settings
    redis: Redis
    alchemy: SQLAlchemyAsyncConfig
    publisher: EventPublisher

    @classmethod
    def build(cls, settings: Settings) -> Connections:
        redis = build_redis(settings)
        return cls(
            settings=settings,
            redis=redis,
            alchemy=build_alchemy(settings),
            publisher=EventPublisher(
                redis,
                settings.events_stream,
                settings.stream_max_len,
                remember_for=timedelta(days=settings.command_retention_days),
            ),
        )
