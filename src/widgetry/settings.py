"""The one settings object, read from the environment."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, cast

import msgspec

RateUnit = Literal["second", "minute", "hour", "day"]
RATE_LIMIT = re.compile(r"^\s*(?P<count>[1-9][0-9]*)\s*/\s*(?P<unit>second|minute|hour|day)\s*$")
RATE_LIMIT_OFF = "off"


Positive = Annotated[int, msgspec.Meta(ge=1)]
MAX_PARTITIONS = 64


class WorkerMode(StrEnum):
    INPROCESS = "inprocess"
    EXTERNAL = "external"


class LogFormat(StrEnum):
    AUTO = "auto"
    """Pretty console output when stderr is a terminal, JSON lines otherwise."""
    JSON = "json"
    CONSOLE = "console"


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


DEFAULT_WORKER_CONCURRENCY = 50


class Settings(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    database_url: str | None = None
    """`None` means the embedded SQLite file `widgetry.db` in the working directory."""
    redis_url: str | None = None
    """`None` means an in-process fakeredis: no server, nothing survives a restart."""
    api_keys: tuple[str, ...] = ()
    """Keys with the `write` scope: they send commands."""
    admin_keys: tuple[str, ...] = ()
    """Keys with the `write` and `admin` scopes: they also read widgets' internal fields and open `/saq` (and
    `/metrics` when reads are protected)."""
    api_key_cache_seconds: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    """How long a web process trusts its last look at a stored key (`widgetry keys create`): a revoke takes effect
    within it, and an unknown key is refused from memory for as long."""
    workers: WorkerMode = WorkerMode.INPROCESS
    protect_reads: bool = False
    """Put reads and the event stream behind API keys too (health, readiness and the schema stay public)."""
    metrics_token: str | None = None
    """A credential for scrapers, sent as an API key is, that reads `/metrics` and nothing else. Setting it, or
    `protect_reads`, puts `/metrics` behind it and the API keys; with neither, `/metrics` is public."""
    worker_concurrency: int = DEFAULT_WORKER_CONCURRENCY
    """Jobs each worker process runs at once, and so the most jobs one apply batch can take. A job holds its slot
    until its events are published, some three batches' time: at 10, a worker here fell behind at 200 lone commands
    a second with most of a core to spare (POST -> event p50 1.7 s and growing), and kept up at 40 to 100 (78 to 96
    ms). An idle slot waits on Redis in a blocking call renewed each second."""
    queue_partitions: Annotated[int, msgspec.Meta(ge=1, le=MAX_PARTITIONS)] = 1
    """Queues the commands are spread over, by a hash of their sku: each sku's commands always go to one of them.
    `widgetry workers run` runs one worker process per partition (`--partition` picks some). The web process queues
    on them all; the event stream stays one, so resume ids stay as they are. Every process of a deployment must agree
    on it. Raised, the jobs already queued stay on their partitions, which still run; lowered, those on a partition
    that is gone wait there until the recovery pass queues their commands again, on their new partitions."""
    redis_prefix: str = "widgetry"
    """Namespaces every Redis key (queue and event stream), so several deployments or test runs share a server."""
    stream_max_len: int = 100_000
    """Events kept on the Redis stream for resume; older cursors get `stream.reset`."""
    subscriber_queue_size: int = 1_000
    keepalive_seconds: float = 15.0
    command_retention_days: int = 7
    job_timeout_seconds: Positive = 30
    job_attempts: Annotated[int, msgspec.Meta(ge=2)] = 10
    """Attempts per apply job (SAQ re-runs a killed worker's job only with two or more). Only the environment
    failing (the database or Redis unreachable) spends them; each wait is drawn at random below 1, 2, 4 ... 30 s,
    so ten attempts span 75 s on average. A command whose attempts run out while the database is still down stays
    accepted (ending it needs the database), and the recovery pass queues it again later."""
    recovery_interval_seconds: Positive = 60
    """How often each worker looks for accepted commands whose job was lost, and for events left unpublished.
    It runs on a cron schedule, so it must divide a minute (1 to 60 s) or an hour (whole minutes)."""
    recovery_grace_seconds: Positive = 30
    """How long an accepted command may wait for its job before the recovery pass queues it again."""
    rate_limit_writes: str = "750/second"
    """Writes (POST, PUT, PATCH, DELETE) per API key, or per client address for requests without a valid key:
    `<count>/<second|minute|hour|day>` or `off`. Above the ~650 commands a second one web process accepts on
    PostgreSQL, so one client is never held below what the service can do, and any 600 writes at once pass; a flood
    of 50,000 a minute (833 a second) is refused."""
    rate_limit_reads: str = "30000/minute"
    """Every other request (reads, polls of a `Location`, opening an event stream) per API key or client address,
    counted apart from writes. A client polling a command 1,500 times a minute uses a twentieth of it; a flood of
    50,000 a minute is refused however it falls across the minute."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks (`10.0.0.0/8`) of the reverse proxies in front of the service. Only a request from one
    of them has its client address taken from `X-Forwarded-For`: the right-most address there that is not itself a
    trusted proxy. None by default: the address is the connection's, and the header is ignored."""
    sse_connections_per_client: Annotated[int, msgspec.Meta(ge=1)] = 20
    """Open event streams per API key (per client address without a valid key), counted in each web process.
    A browser holds one per tab; twenty leaves room for several tabs and dashboards behind one address."""
    cors_origins: tuple[str, ...] = ()
    """Origins that browsers may call the API from; none (the default) sends no CORS headers at all."""
    debug: bool = False
    session_cookie_secure: bool = False
    """Send the dashboard's session cookie over HTTPS only; set it wherever the service is served over HTTPS."""
    session_max_age_seconds: Positive = 8 * 3600
    """How long a dashboard sign-in lasts, counted from sign-in however busy the session is (it also ends when its
    API key is revoked, and on sign-out)."""
    session_idle_timeout_seconds: Positive | None = None
    """End a dashboard session sooner once the page has sent no request for this long; unset: only the lifetime."""
    log_level: LogLevel = "INFO"
    log_format: LogFormat = LogFormat.AUTO
    access_log: bool = False
    """A line per request from uvicorn (credentials in the query redacted). Off by default: each command's outcome has
    its line already, a proxy in front usually logs requests, and at a thousand writes a second the access line is
    a tenth of a request's cost in the web process."""
    otel: bool = False
    """Trace requests, jobs and publishes with OpenTelemetry (needs the `otel` extra; exported over OTLP as the
    standard `OTEL_EXPORTER_OTLP_*` variables say)."""

    def __post_init__(self) -> None:
        for name in ("rate_limit_writes", "rate_limit_reads"):
            rate = getattr(self, name)
            if rate.strip() != RATE_LIMIT_OFF and not RATE_LIMIT.match(rate):
                raise ValueError(f"{name} must be '<count>/<second|minute|hour|day>' or 'off', not {rate!r}")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {proxy!r} is not an address or a network") from None
        interval = self.recovery_interval_seconds
        if not (60 % interval == 0 if interval <= 60 else interval % 60 == 0 and 60 % (interval // 60) == 0):
            raise ValueError(f"recovery_interval_seconds must divide a minute or an hour, not {interval}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        if single := env.get("WIDGETRY_RATE_LIMIT", "").strip():
            # The former single budget: `off` still means no limit (deployments and drivers set it), a count is
            # refused, since one budget over every route is not what either of the two budgets counts.
            if single != RATE_LIMIT_OFF:
                raise ValueError(
                    "WIDGETRY_RATE_LIMIT is replaced by WIDGETRY_RATE_LIMIT_WRITES and WIDGETRY_RATE_LIMIT_READS"
                )
            env = {"WIDGETRY_RATE_LIMIT_WRITES": RATE_LIMIT_OFF, "WIDGETRY_RATE_LIMIT_READS": RATE_LIMIT_OFF, **env}
        values: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            raw = env.get(_ENV_NAMES.get(field.name, f"WIDGETRY_{field.name.upper()}"))
            if raw is None or raw == "":
                continue
            values[field.name] = (
                tuple(item.strip() for item in raw.split(",") if item.strip()) if field.name in _LISTS else raw
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

    @staticmethod
    def rate(value: str) -> tuple[int, RateUnit] | None:
        """A rate limit setting as `(count, unit)`; `None` when it is off."""
        if not (found := RATE_LIMIT.match(value)):
            return None
        return int(found["count"]), cast("RateUnit", found["unit"])

    @property
    def metrics_protected(self) -> bool:
        return self.protect_reads or bool(self.metrics_token)

    @property
    def queue_name(self) -> str:
        return self.redis_prefix

    @property
    def queue_names(self) -> tuple[str, ...]:
        """The partitions' queues, partition 0 first: it keeps the unpartitioned name (so `1` is the queue of before)
        and runs the periodic jobs (recovery, relay, retention). The others are `<prefix>:<n>`: under the prefix, so
        their keys are namespaced by it as every other key is (`saq:<prefix>:<n>:...`)."""
        return (self.queue_name, *(f"{self.queue_name}:{n}" for n in range(1, self.queue_partitions)))

    @property
    def events_stream(self) -> str:
        return f"{self.redis_prefix}:events"

    @cached_property
    def effective_api_keys(self) -> tuple[str, ...]:
        """The `write` keys; on the embedded defaults with no key set at all, the development key (an admin key too,
        see `effective_admin_keys`)."""
        if self.api_keys or self.admin_keys or not (self.embedded_database and self.embedded_redis):
            return self.api_keys
        return (development_key(self.dev_key_path),)

    @property
    def dev_key_path(self) -> Path:
        """Where the development key is kept: beside the embedded SQLite file, which it lives and dies with."""
        return Path.cwd() / DEV_KEY_FILE

    @property
    def effective_admin_keys(self) -> tuple[str, ...]:
        """The `admin` keys; the dev key is one, so whoever runs the embedded defaults can try every route."""
        return self.admin_keys + (self.effective_api_keys if self.dev_key_generated else ())

    @property
    def dev_key_generated(self) -> bool:
        return not self.api_keys and bool(self.effective_api_keys)


DEV_KEY_FILE = "widgetry.dev-key"


def development_key(path: Path) -> str:
    """The key kept in `path`, made there the first time (readable by its owner only), so that a restart leaves the
    dashboard's session and the shell variable holding the key valid.

    A new key is written to a file of its own and linked into place, which fails if another process starting at the
    same moment linked its key first: both then use that one, and nobody reads a half-written file.
    """
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = None
    if kept:
        return kept
    key = f"dev-{secrets.token_urlsafe(18)}"
    made = path.with_name(f".{path.name}.{os.getpid()}")
    with os.fdopen(os.open(made, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        file.write(key + "\n")
    try:
        if kept is None:
            os.link(made, path)
        else:  # there, but empty: made over
            made.replace(path)
    except FileExistsError:
        return path.read_text().strip()
    finally:
        made.unlink(missing_ok=True)
    return key


_ENV_NAMES = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL"}
_LISTS = {"api_keys", "admin_keys", "cors_origins", "trusted_proxies"}
"""Settings given as one comma-separated variable."""
