"""The SAQ queue and worker configuration, for the in-process worker and for `widgetry workers run`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from litestar.serialization import decode_json, encode_json
from litestar_saq import CronJob, QueueConfig, SAQConfig, SAQPlugin, Worker
from saq.utils import cancel_tasks

from widgetry.compat import OneTripRedisQueue, build_workers_as
from widgetry.observability import tracing
from widgetry.observability.counts import flushing
from widgetry.observability.queues import WORKER_INFO_INTERVAL_S
from widgetry.services.queue import APPLY_COMMAND, APPLY_COMMANDS, IMPORT_WIDGETS
from widgetry.services.unavailable import is_unavailable
from widgetry.settings import WorkerMode
from widgetry.workers.jobs import (
    apply_command,
    apply_commands,
    end_failed_command,
    import_widgets,
    purge_expired,
    recover_unfinished,
    relay_unpublished,
    startup_hook,
)
from widgetry.workers.processes import stop_when_orphaned

if TYPE_CHECKING:
    from litestar.types import Guard
    from saq.job import Job

    from widgetry.connections import Connections

logger = logging.getLogger(__name__)

SWEEP_SECONDS = 10
"""How often a worker looks for jobs whose worker died (their `timeout` passed), to re-run them."""
REDIS_DEQUEUE_TIMEOUT_S = 1.0
"""How long one BLMOVE waits for a job: bounded, because an idle worker's blocked dequeues slow its shutdown."""
CANCELLATION_DEADLINE_S = 1.0
"""How long a worker waits for a task it cancelled to end: SAQ's default, stated because `CommandWorker` waits too."""


class CommandQueue(OneTripRedisQueue):
    """SAQ's Redis queue, storing and announcing a job's status in one round trip (`OneTripRedisQueue`), with a
    shorter wait when sweeping a job whose worker died.

    The sweep asks a stuck job's worker to abort it and waits (5 s by default) for an answer, one job at a time,
    before re-queueing it; a SIGKILLed worker never answers, so recovering its 10 jobs would take 50 s. Waiting
    briefly is safe here: should the worker be alive after all, the job runs twice and the applied_seq fence makes
    the second run change nothing.
    """

    SWEEP_ABORT_WAIT_S = 1.0
    REDIS_DOWN_WAIT_S = 1.0

    async def sweep(self, lock: int = 60, abort: float = SWEEP_ABORT_WAIT_S) -> list[str]:
        swept = await super().sweep(lock, abort=min(abort, self.SWEEP_ABORT_WAIT_S))
        _raise_if_cancelled()
        return swept

    async def worker_info(self, *args: Any, **kwargs: Any) -> Any:
        info = await super().worker_info(*args, **kwargs)
        _raise_if_cancelled()
        return info

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:
        """SAQ's dequeue, pausing while Redis cannot be reached: SAQ starts the next dequeue at once after a failed
        one, so a worker would spin a core (silently) for as long as Redis is down, a restart included."""
        try:
            return await super().dequeue(timeout, poll_interval)
        except Exception as error:
            if not is_unavailable(error):
                raise
            logger.warning("cannot reach Redis to dequeue (%s); retrying in %ss", error, self.REDIS_DOWN_WAIT_S)
            await asyncio.sleep(self.REDIS_DOWN_WAIT_S)
            return None


class Wakeups:
    """Wakes one waiting dequeue per job queued, not all of them.

    The in-process worker keeps `worker_concurrency` dequeues waiting; waking them all for each job (one
    `asyncio.Event`) made every lone command pay nine `LMOVE`s through fakeredis that found nothing. A dequeue
    registers before it looks at the queue, so a job queued while it looks wakes it; a dequeue that stops looking
    (it found a job, timed out or was cancelled) hands a wakeup it was given on, since that one may be for another
    job.
    """

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()

    def expect(self) -> asyncio.Future[None]:
        """Registers a dequeue about to look at the queue."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        return waiter

    @staticmethod
    async def wait(waiter: asyncio.Future[None], timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await waiter
        _raise_if_cancelled()

    def wake_one(self) -> None:
        while self._waiting:
            if not (waiter := self._waiting.popleft()).done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        while self._waiting:
            if not (waiter := self._waiting.popleft()).done():
                waiter.set_result(None)

    def drop(self, waiter: asyncio.Future[None]) -> None:
        """Unregisters a dequeue that goes on to look again (which is all a wakeup asks of it)."""
        if not waiter.done() or waiter.cancelled():
            waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiting.remove(waiter)

    def hand_on(self, waiter: asyncio.Future[None]) -> None:
        """Unregisters a dequeue that stops looking, handing a wakeup it was given to another."""
        if waiter.done() and not waiter.cancelled():
            self.wake_one()
        else:
            self.drop(waiter)


class EmbeddedRedisQueue(CommandQueue):
    """SAQ's Redis queue, made to work on the in-process fakeredis.

    fakeredis has no `INFO` (which `RedisQueue.version()` calls, so the worker would never dequeue), and its async
    `BLMOVE` returns at once instead of blocking, so an idle worker would spin a core. Here a dequeue tries a
    non-blocking `LMOVE` and otherwise waits for a wakeup that enqueue, retry and the scheduler give (`Wakeups`).
    """

    WAKE_TIMEOUT = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wakeups = Wakeups()
        self.queued_key = self.namespace("queued")
        self.active_key = self.namespace("active")

    def __repr__(self) -> str:
        return f"{type(self).__name__}<in-process fakeredis, name={self.name!r}>"

    async def version(self) -> tuple[int, ...]:
        return (7, 0, 0)

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:
        while True:
            waiter = self._wakeups.expect()
            try:
                # Shielded: a fakeredis command cancelled mid-call can leave its connection waiting forever, which
                # would hang the worker's shutdown. A job moved as the worker stops is re-queued from the database.
                job_id = await asyncio.shield(self.redis.lmove(self.queued_key, self.active_key, "LEFT", "RIGHT"))
                if job_id is None:
                    await self._wakeups.wait(waiter, timeout or self.WAKE_TIMEOUT)
            except BaseException:
                self._wakeups.hand_on(waiter)
                raise
            if job_id is None and not timeout:
                self._wakeups.drop(waiter)
                continue
            self._wakeups.hand_on(waiter)
            return None if job_id is None else await asyncio.shield(self.job(self.job_key_from_id(job_id.decode())))

    async def enqueue(self, job_or_func: str | Job, **kwargs: Any) -> Job | None:
        queued = await super().enqueue(job_or_func, **kwargs)
        if queued is not None:
            self._wakeups.wake_one()
        return queued

    async def retry(self, job: Job, error: str | None) -> None:
        await super().retry(job, error)
        self._wakeups.wake_one()

    async def schedule(self, lock: int = 1) -> list[str]:
        scheduled = await super().schedule(lock)
        if scheduled:
            self._wakeups.wake_all()
        return scheduled


class CommandWorker(Worker):
    """litestar-saq's worker, stopping an idle worker without a warning.

    SAQ's stop waits its grace period for every task the worker has, its upkeep loops and its waiting dequeues
    included, which never end by themselves: with no grace (see `saq_plugin`), every shutdown warned that "some
    tasks did not finish". An idle worker's tasks hold no job, so they are cancelled here first, quietly; with jobs
    in flight, SAQ stops them (cancelled, then retried) and warns, as it should.

    It also starts no heartbeat manager: that serves litestar-saq's `monitored_job` decorator, which no job here
    uses, and logged a crash on every shutdown; the plugin does not pass the option on, so the class sets it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "enable_heartbeat_manager": False})

    async def start(self) -> None:
        # Named after its own process: one that `workers run` forked was built from its parent's config, with the
        # parent's id, and their heartbeats and the jobs each ran would be told apart by nothing.
        self.id = worker_id()
        orphaned = asyncio.create_task(stop_when_orphaned(lambda: self.event.set()), name="widgetry-orphan-watch")
        try:
            await super().start()
        finally:
            orphaned.cancel()

    async def stop(self) -> None:
        self.event.set()  # no dequeue starts from here on
        if not self.job_task_contexts:
            idle = list(self.tasks)
            self.tasks.clear()
            await cancel_tasks(idle, timeout=CANCELLATION_DEADLINE_S)
        await super().stop()


def _raise_if_cancelled() -> None:
    """Re-raises a cancellation that a Redis call took in and did not pass on.

    SAQ's upkeep loops (sweep, worker stats) sleep up to their timer (10 s) between calls; when a worker stops while
    one of them is inside a Redis call that swallows the cancellation, the loop goes back to sleep and SAQ's stop
    waits the whole timer for it (seen on every in-process worker's shutdown, one in two).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def worker_id() -> str:
    """Named after the host, so a container's health check can find its own workers' heartbeats, and the process."""
    return f"{socket.gethostname()}-{os.getpid()}"


def build_queues(connections: Connections) -> tuple[CommandQueue, ...]:
    """One queue per partition (`Settings.queue_names`), partition 0 first."""
    queue_class = EmbeddedRedisQueue if connections.settings.embedded_redis else CommandQueue
    queues = tuple(
        queue_class(
            connections.redis,
            name=name,
            dump=lambda value: encode_json(value).decode(),
            load=decode_json,
        )
        for name in connections.settings.queue_names
    )
    for queue in queues:
        tracing.trace_enqueues(queue, connections.settings)
    return queues


def every(seconds: int) -> str:
    """A cron expression for "every `seconds`" (which the settings check divides a minute or an hour): whole minutes
    in the five-field form, else croniter's sixth (seconds) field, which SAQ's scheduler accepts."""
    if seconds >= 60:
        return f"*/{seconds // 60} * * * *"
    return f"* * * * * */{seconds}"


Hook = Callable[[dict[str, Any]], Awaitable[None]]


def flush_counts(connections: Connections) -> tuple[Hook, Hook]:
    """The worker's start and stop hooks that add what its jobs counted (commands finished, events published) to the
    shared metrics every second and once more as it stops: a worker process has nothing else that would, and nobody
    scrapes it. Once a second, not after each job: that was a Redis transaction on the path of every command.

    One flushing loop per process, however many partitions' workers it runs (they share its counts): the first
    worker to start starts it, the last to stop stops it."""
    running: set[int] = set()  # the workers started, by the id of their context
    stack = contextlib.AsyncExitStack()

    async def start(ctx: dict[str, Any]) -> None:
        if not running:
            await stack.enter_async_context(flushing(connections.counts))
        running.add(id(ctx))

    async def stop(ctx: dict[str, Any]) -> None:
        if id(ctx) in running:
            running.discard(id(ctx))
            if not running:
                await stack.aclose()

    return start, stop


def saq_plugin(connections: Connections, queues: tuple[CommandQueue, ...], *, web_guard: Guard) -> SAQPlugin:
    """The plugin that runs the workers, one per partition's queue, and serves SAQ's web UI at /saq behind
    `web_guard` (the API's admin guard, handed in by the app: the workers know nothing of the API). Partition 0's
    worker also runs the periodic jobs and the recovery pass at start-up; its jobs re-queue commands on every
    partition, each on its sku's."""
    build_workers_as(CommandWorker)
    settings = connections.settings
    traced = tracing.enabled(settings)
    start_flushing, stop_flushing = flush_counts(connections)
    periodic = [
        CronJob(function=recover_unfinished, cron=every(settings.recovery_interval_seconds), timeout=60),
        CronJob(function=relay_unpublished, cron=every(settings.recovery_interval_seconds), timeout=60),
        CronJob(function=purge_expired, cron="17 * * * *", timeout=300),
    ]
    plugin = SAQPlugin(
        SAQConfig(
            queue_instances={queue.name: queue for queue in queues},
            queue_configs=[
                QueueConfig(
                    name=queue.name,
                    id=worker_id(),
                    broker_instance=connections.redis,
                    tasks=[
                        (APPLY_COMMANDS, apply_commands),
                        (APPLY_COMMAND, apply_command),
                        (IMPORT_WIDGETS, import_widgets),
                    ],
                    scheduled_tasks=periodic if partition == 0 else [],
                    concurrency=settings.worker_concurrency,
                    separate_process=settings.workers is WorkerMode.EXTERNAL,
                    startup=[startup_hook(connections, queues, recover=partition == 0), start_flushing],
                    shutdown=[stop_flushing],
                    before_process=[tracing.enter_job_span] if traced else [],
                    after_process=[
                        end_failed_command,
                        *([tracing.leave_job_span] if traced else []),
                    ],
                    timers={"sweep": SWEEP_SECONDS, "worker_info": WORKER_INFO_INTERVAL_S},
                    dequeue_timeout=0 if settings.embedded_redis else REDIS_DEQUEUE_TIMEOUT_S,
                    # SAQ's grace period waits for every worker task, idle dequeues included, so any grace is
                    # spent in full on each shutdown. No grace is safe here: an apply is one transaction, and a
                    # cancelled job is retried, its re-run stopped by the sku's applied_seq fence.
                    shutdown_grace_period_s=None,
                    cancellation_hard_deadline_s=CANCELLATION_DEADLINE_S,
                )
                for partition, queue in enumerate(queues)
            ],
            # SAQ's web UI. Behind an admin key, read from the `X-API-Key` header: a browser does not send one by
            # itself, so reach it through a proxy that adds the header (or with curl).
            web_enabled=True,
            web_path="/saq",
            web_guards=[web_guard],
            enable_otel=traced,
        )
    )
    return plugin
