"""Prometheus at `/metrics`: Litestar's HTTP metrics plus the service's own, counted across processes.

Commands are accepted by web processes but applied (and their events published) by workers, which may be other
processes (`widgetry workers run`) that nothing scrapes. prometheus-client's metrics live in the memory of the
process that counts (its multiprocess mode only joins processes of one host that share a directory), so a worker's
count would never reach a web process's `/metrics`. Each process therefore adds its counts into one Redis hash,
read at scrape time: every web process shows the deployment's totals (query them with `max`, not `sum`).

Counting costs the hot paths a dictionary update each (`observability.counts`).
Gauges (queue depth, oldest unfinished command, relay backlog) are read at scrape time, each source under a short
timeout, so a scrape answers even when Redis or the database does not (`widgetry_scrape_source_up` says which).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from litestar.datastructures import State
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from widgetry.domain.models import CommandRecord, EventRecord
from widgetry.observability.counts import LATENCY_BUCKETS
from widgetry.observability.queues import QueueStatus, queue_status
from widgetry.services.commands import UNFINISHED

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from saq.queue.redis import RedisQueue
    from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger(__name__)

PREFIX = "widgetry"
SCRAPE_TIMEOUT_S = 2.0
SCRAPE_CACHE_S = 1.0
"""How long a rendered scrape is served again: well under any scrape interval, long enough to bound the cost."""
TEXT_FORMAT = CONTENT_TYPE_PLAIN_0_0_4
OPENMETRICS_FORMAT = OPENMETRICS_CONTENT_TYPE


class DomainCollector(Collector):
    """The service's metrics as read at one scrape."""

    def __init__(self) -> None:
        self.totals: dict[str, float] | None = None
        self.queue: QueueStatus | None = None
        self.backlog: tuple[int, float, int] | None = None
        self.subscribers = 0

    def collect(self) -> Iterator[Metric]:
        yield from self._sources()
        if self.totals is not None:
            yield from self._totals(self.totals)
        if self.queue is not None:
            jobs = GaugeMetricFamily(f"{PREFIX}_queue_jobs", "SAQ jobs by state.", labels=["state"])
            for state in ("queued", "active", "scheduled"):
                jobs.add_metric([state], getattr(self.queue, state))
            yield jobs
            yield GaugeMetricFamily(
                f"{PREFIX}_workers", "SAQ workers with a live heartbeat.", value=len(self.queue.heartbeats)
            )
        if self.backlog is not None:
            unfinished, oldest_age, unpublished = self.backlog
            yield GaugeMetricFamily(
                f"{PREFIX}_commands_unfinished", "Commands accepted and not yet finished.", value=unfinished
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_oldest_unfinished_command_age_seconds",
                "Age of the oldest command accepted and not yet finished (0 when there is none).",
                value=oldest_age,
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_relay_backlog_events", "Events committed and not yet on the stream.", value=unpublished
            )
        yield GaugeMetricFamily(
            f"{PREFIX}_sse_subscribers", "Open event streams in this web process.", value=self.subscribers
        )

    def _sources(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}_scrape_source_up", "Whether this scrape could read the source (1) or not (0).", labels=["source"]
        )
        up.add_metric(["redis"], int(self.totals is not None and self.queue is not None))
        up.add_metric(["database"], int(self.backlog is not None))
        yield up

    def _totals(self, totals: dict[str, float]) -> Iterator[Metric]:
        families = {
            kind: CounterMetricFamily(f"{PREFIX}_commands_{kind}", help_text, labels=["type"])
            for kind, help_text in (
                ("accepted", "Commands recorded and queued (202)."),
                ("applied", "Commands that took effect."),
                ("failed", "Commands that ended failed."),
            )
        }
        buckets: dict[str, list[float]] = {}
        for field, value in totals.items():
            kind, _, rest = field.partition(":")
            if kind in families:
                families[kind].add_metric([rest], value)
            elif kind == "latency":
                command_type, _, index = rest.rpartition(":")
                buckets.setdefault(command_type, [0.0] * len(LATENCY_BUCKETS))[int(index)] = value
        yield from families.values()
        latency = HistogramMetricFamily(
            f"{PREFIX}_command_apply_seconds", "Seconds from a command accepted to finished.", labels=["type"]
        )
        for command_type, counts in sorted(buckets.items()):
            cumulative = [sum(counts[: index + 1]) for index in range(len(counts))]
            latency.add_metric(
                [command_type],
                [(_bound(bound), count) for bound, count in zip(LATENCY_BUCKETS, cumulative, strict=True)],
                sum_value=totals.get(f"latency_sum:{command_type}", 0.0),
            )
        yield latency
        yield CounterMetricFamily(
            f"{PREFIX}_events_published", "Events put on the stream.", value=totals.get("published", 0)
        )


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


async def read_totals(redis: Redis, key: str) -> dict[str, float]:
    raw = await redis.hgetall(key)
    return {_text(field): float(value) for field, value in raw.items()}


async def read_backlog(engine: AsyncEngine) -> tuple[int, float, int]:
    """Unfinished commands (an import's rows excepted), the oldest one's age, and events not yet on the stream: all
    read through partial or status indexes, so the cost follows the backlog, not the tables."""
    async with engine.connect() as connection:
        unfinished, oldest = (
            await connection.execute(
                select(func.count(), func.min(CommandRecord.accepted_at)).where(
                    CommandRecord.status.in_(UNFINISHED), CommandRecord.parent_id.is_(None)
                )
            )
        ).one()
        unpublished = await connection.scalar(
            select(func.count()).select_from(EventRecord).where(EventRecord.stream_id.is_(None))
        )
    age = max(0.0, time.time() - _as_utc(oldest).timestamp()) if oldest is not None else 0.0
    return unfinished, age, unpublished or 0


def _as_utc(moment: datetime | str) -> datetime:
    """SQLite hands a bare aggregate back as text, without the column type that would parse it."""
    parsed = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _within(timeout: float, read: Any, source: str) -> Any:
    try:
        async with asyncio.timeout(timeout):
            return await read
    except Exception as error:  # noqa: BLE001 - reported as that source being down, never as a failed scrape
        logger.warning("metrics: cannot read %s (%r)", source, error)
        return None


async def scrape(state: State) -> DomainCollector:
    connections = state.connections
    counts = connections.counts
    queues: tuple[RedisQueue, ...] = state.queues
    collector = DomainCollector()
    collector.subscribers = state.hub.subscriber_count

    async def redis_side() -> tuple[dict[str, float], QueueStatus]:
        await counts.flush()
        return await read_totals(connections.redis, counts.key), await queue_status(queues)

    redis_read, collector.backlog = await asyncio.gather(
        _within(SCRAPE_TIMEOUT_S, redis_side(), "Redis"),
        _within(SCRAPE_TIMEOUT_S, read_backlog(connections.alchemy.get_engine()), "the database"),
    )
    if redis_read is not None:
        collector.totals, collector.queue = redis_read
    return collector


class Exposition:
    """The rendered scrape, kept for `max_age` seconds and shared by every scraper meanwhile.

    A render reads Redis and the database and formats every series of the process: 5 ms of CPU with a few routes'
    worth of HTTP metrics, more as they grow. Rendered per request, eight scrapers in a loop made reads ten times
    slower; kept for a second, any number of scrapers cost at most one render a second per format. Scrapes that
    arrive during a render wait for it rather than start their own.
    """

    ENCODERS = MappingProxyType({TEXT_FORMAT: generate_latest, OPENMETRICS_FORMAT: openmetrics_generate_latest})
    """Each format by its whole `Content-Type`."""

    def __init__(self, max_age: float = SCRAPE_CACHE_S) -> None:
        self.max_age = max_age
        self._rendered: dict[str, tuple[float, bytes]] = {}
        self._lock = asyncio.Lock()

    async def render(self, state: State, content_type: str) -> bytes:
        """The process's and the deployment's metrics in the format of `content_type` (one of `ENCODERS`)."""
        if (body := self._fresh(content_type)) is not None:
            return body
        async with self._lock:
            if (body := self._fresh(content_type)) is not None:
                return body
            registry = CollectorRegistry(auto_describe=False)
            registry.register(REGISTRY)
            registry.register(await scrape(state))
            body = self.ENCODERS[content_type](registry)
            self._rendered[content_type] = (time.monotonic(), body)
            return body

    def _fresh(self, content_type: str) -> bytes | None:
        rendered_at, body = self._rendered.get(content_type, (0.0, b""))
        return body if time.monotonic() - rendered_at < self.max_age else None


def prometheus_config() -> PrometheusConfig:
    # Paths grouped by route (`/widgets/{sku}`), or every sku would make a time series of its own. Event streams are
    # left out: the middleware wraps every chunk a response sends, a cost on each event to each subscriber, and a
    # stream's "duration" is how long a client watched; `widgetry_sse_subscribers` counts them instead.
    return PrometheusConfig(
        app_name="widgetry",
        prefix="widgetry_http",
        group_path=True,
        exclude=[r"^/metrics$", r"^/events$", r"^/widgets/[^/]+/events$"],
    )
