"""The one settings object, read from the environment."""

from __future__ import annotations

import os
import secrets
from enum import StrEnum
from functools import cached_property
from pathlib import Path

import msgspec


class WorkerMode(StrEnum):
    INPROCESS = "inprocess"
    EXTERNAL = "external"


class Settings(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    database_url: str | None = None
    """`None` means the embedded SQLite file `widgetry.db` in the working directory."""
    redis_url: str | None = None
    """`None` means an in-process fakeredis: no server, nothing survives a restart."""
    api_keys: tuple[str, ...] = ()
    workers: WorkerMode = WorkerMode.INPROCESS
    protect_reads: bool = False
    """Put reads and the event stream behind API keys too (health, readiness and the schema stay public)."""
    worker_concurrency: int = 10
    redis_prefix: str = "widgetry"
    """Namespaces every Redis key (queue and event stream), so several deployments or test runs share a server."""
    stream_max_len: int = 100_000
    """Events kept on the Redis stream for resume; older cursors get `stream.reset`."""
    subscriber_queue_size: int = 1_000
    keepalive_seconds: float = 15.0
    command_retention_days: int = 7
    job_timeout_seconds: int = 30
    job_attempts: int = 10
    """Attempts per apply job. Only transient errors (database or Redis unreachable) spend them: with SAQ's
    exponential backoff (1 s doubling to at most 30 s, jittered) ten attempts ride out a minute-long outage."""
    recovery_interval_seconds: int = 60
    """How often each worker looks for accepted commands whose job was lost, and for events left unpublished."""
    recovery_grace_seconds: int = 30
    """How long an accepted command may wait for its job before the recovery pass queues it again."""
    debug: bool = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            raw = env.get(_ENV_NAMES.get(field.name, f"WIDGETRY_{field.name.upper()}"))
            if raw is None or raw == "":
                continue
            values[field.name] = (
                tuple(k.strip() for k in raw.split(",") if k.strip()) if field.name == "api_keys" else raw
            )
        return msgspec.convert(values, cls, strict=False)

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def uses_sqlite(self) -> bool:
        """SQLite is single-host and migrated on start; PostgreSQL is migrated by `widgetry database upgrade`."""
        return self.sqlalchemy_url.startswith("sqlite")

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def sqlalchemy_url(self) -> str:
        url = self.database_url or f"sqlite+aiosqlite:///{Path.cwd() / 'widgetry.db'}"
        for plain, driver in (
            ("postgres://", "postgresql+asyncpg://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return driver + url.removeprefix(plain)
        return url

    @property
    def queue_name(self) -> str:
        return self.redis_prefix

    @property
    def events_stream(self) -> str:
        return f"{self.redis_prefix}:events"

    @cached_property
    def effective_api_keys(self) -> tuple[str, ...]:
        """The keys accepted on writes; on the embedded defaults with none set, one dev key made for this process."""
        if self.api_keys or not (self.embedded_database and self.embedded_redis):
            return self.api_keys
        return (f"dev-{secrets.token_urlsafe(18)}",)

    @property
    def dev_key_generated(self) -> bool:
        return not self.api_keys and bool(self.effective_api_keys)


_ENV_NAMES = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL"}
