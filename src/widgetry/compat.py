"""The one place that leans on other libraries' internals (Litestar's, litestar-saq's, SAQ's, aiosqlite's and
redis-py's), and why each is needed.

Each name here is something the service needs that the library offers only under a private name, or not at all.
`tests/unit/test_compat.py` checks every one against the installed versions, so an upgrade that moves or changes one
fails there, naming it, rather than somewhere far away; it also checks that no other module reaches for a private of
these libraries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import aiosqlite
import litestar_saq
import litestar_saq.plugin

# The parameter type of `AbstractDTO.create_openapi_schema`, a public method whose signature names this private class.
from litestar._openapi.schema_generation import SchemaCreator

# Litestar passes the `app` to the commands of its own click group class, exported only from this private module
# (whose docstring says to use it as the `cls` of a group extending Litestar's CLI). The public alternative,
# `cli.group()` inside `CLIPlugin.on_cli_init`, cannot build the groups at import, where their commands are declared.
from litestar.cli._utils import LitestarGroup

# The parameter type of `AbstractDTO.create_for_field_definition`, a public method whose signature names it.
from litestar.dto._backend import DTOBackend

# The DTO backend whose `parse_raw` decodes a request body: the only place to make decoding strict (`"100"` is not a
# price). Litestar exports no backend, and `DTOConfig` has no option for strictness.
from litestar.dto._codegen_backend import DTOCodegenBackend
from redis.asyncio.connection import Connection as RedisConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from saq.queue.redis import RedisQueue

if TYPE_CHECKING:
    from litestar_saq import Worker
    from saq.job import Job, Status

__all__ = (
    "DTOBackend",
    "DTOCodegenBackend",
    "InPlaceConnection",
    "LitestarGroup",
    "OneTripRedisQueue",
    "SchemaCreator",
    "TimedWriteConnection",
    "build_workers_as",
)


def build_workers_as(worker_class: type[Worker]) -> None:
    """Makes litestar-saq build its workers as `worker_class`, a subclass of its `Worker` that adds behaviour and no
    state: in this process, in each process `workers run` forks (for a partition's queue or an extra process, where
    `run_worker_in_child` builds the worker anew from the config), and after `workers run --queues` drops the workers
    already built (`remove_workers`).

    litestar-saq takes no class to build workers from: `SAQPlugin.get_workers` calls the `Worker` its plugin module
    imported, so that name is the one place to give it another. Replacing the workers once built reached neither the
    forked processes nor the rebuilt ones."""
    built_from = getattr(litestar_saq.plugin, "Worker", None)
    if not (isinstance(built_from, type) and issubclass(built_from, litestar_saq.Worker)):
        raise RuntimeError("litestar_saq.plugin no longer builds its workers from `Worker`: see widgetry.compat")
    litestar_saq.plugin.Worker = worker_class  # type: ignore[misc]


class _InPlace:
    """Stands in for the queue aiosqlite feeds its connection thread (`_tx`): runs each call at once and settles its
    future. SQLAlchemy's adapter puts calls on that queue directly too, and aiosqlite's `stop` closes through it."""

    def __init__(self, connection: InPlaceConnection) -> None:
        self._connection = connection

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as error:  # noqa: BLE001 - handed to the caller, as aiosqlite's thread does
            if future is not None and not future.done():
                future.set_exception(error)
        else:
            if future is not None and not future.done():
                future.set_result(result)
        finally:
            self._connection.after_call()


class InPlaceConnection(aiosqlite.Connection):
    """aiosqlite's connection without its thread: each call runs in place, on the event loop (why: `widgetry.sqlite`).

    aiosqlite has no such mode. It runs every call by putting it on `_tx`, the queue its thread reads, through
    `_execute` (statements, commits) or directly (connecting, closing), and connects in `_connect`, which `__await__`
    calls after starting the thread. Here `_tx` runs calls at once and the thread is never started;
    `before_call`/`after_call` are the hooks a subclass adds its own rules with.
    """

    def __init__(self, connector: Callable[[], Any]) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._tx = _InPlace(self)  # type: ignore[assignment]

    def __await__(self) -> Any:
        return self._connect().__await__()

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        await self.before_call(fn, args)
        try:
            return await super()._execute(fn, *args, **kwargs)
        finally:
            self.after_call()

    async def before_call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Runs before each call aiosqlite makes through `_execute`."""

    def after_call(self) -> None:
        """Runs after every call, whichever way it came (idempotent: may run twice for one call)."""


class OneTripRedisQueue(RedisQueue):
    """SAQ's Redis queue, telling a job's listeners of its new status in the same round trip that stores it.

    SAQ stores a job as it starts (`SET`) and as it ends (a `MULTI` pipeline), and only then publishes its status
    (`PUBLISH`), a round trip more each time: two of the six a job costs its worker, on the path of every command.
    Here the `PUBLISH` goes in the same pipeline, after the write, so a listener still hears of a status only once it
    is stored. `_update` and `_finish` are where SAQ's queues implement `Queue.update` and `Queue.finish` (abstract in
    `saq.queue.base.Queue`): they are the place to change how a job is written, and `tests/unit/test_compat.py` checks
    that they still are.
    """

    async def _update(self, job: Job, status: Status | None = None, **kwargs: Any) -> None:
        if not status:  # SAQ's own path, which first reads the stored status
            await super()._update(job, status, **kwargs)
            return
        job.status = status
        async with self.redis.pipeline(transaction=False) as pipe:
            await pipe.set(job.id, self.serialize(job)).publish(job.id, job.status).execute()

    async def _finish(self, job: Job, status: Status, *, result: Any = None, error: str | None = None) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self._active, 1, job.id).zrem(self._incomplete, job.id)
            if job.ttl > 0:
                pipe.setex(job.id, job.ttl, self.serialize(job))
            elif job.ttl == 0:
                pipe.set(job.id, self.serialize(job))
            else:
                pipe.delete(job.id)
            await pipe.publish(job.id, job.status).execute()


class TimedWriteConnection(RedisConnection):
    """redis-py's connection to a Redis server, its writes bounded in place, as it bounds its reads.

    With a `socket_timeout` (redis-py's default: 5 s), redis-py writes each command inside `asyncio.wait_for`, which
    on Python 3.11 runs the write as a task of its own: a task, and more turns of the event loop, for every command
    (measured: a `GET` 83 to 89 us of CPU, against 60 to 64 us without the timeout). Its reads it bounds with
    `asyncio.timeout`, in place; this writes under `asyncio.timeout` too, the same bound, and otherwise does what
    redis-py's `send_packed_command` does: connect first if need be, check health, and drop the connection after a
    write that failed, timed out or was cancelled (it may have sent part of the command). `_send_packed_command` is
    redis-py's own write; `tests/unit/test_compat.py` checks that it still writes and that no task is made.
    """

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        if not self.socket_timeout or not self.is_connected:
            await super().send_packed_command(command, check_health)
            return
        if check_health:
            await self.check_health()
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            async with asyncio.timeout(self.socket_timeout):
                await self._send_packed_command(command)
        except TimeoutError:  # asyncio's (an OSError): the bound passed
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as error:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket. {error}.") from error
        except BaseException:
            await self.disconnect(nowait=True)
            raise
