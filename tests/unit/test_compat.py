"""What `widgetry.compat` takes from other libraries' internals is still there, as it is used; and no other module
reaches for another library's private names.

Each check names the private and the installed version, so an upgrade that moves or changes one says what to adapt.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import importlib
import inspect
import sqlite3
import threading
from importlib.metadata import version
from pathlib import Path

import click
import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from litestar import Litestar
from litestar.dto import AbstractDTO
from litestar_saq import SAQPlugin
from litestar_saq import Worker as LitestarSaqWorker
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError
from saq.job import Job, Status

from tests.support import ROOT, running
from tests.unit.test_layering import SOURCES, module_of
from widgetry import compat
from widgetry.workers.queue import CommandWorker, EmbeddedRedisQueue

LIBRARIES = ("litestar", "litestar_saq", "saq", "advanced_alchemy", "sqlalchemy", "aiosqlite", "redis")
"""Whose private names only `compat` may use."""


def moved(private: str, package: str, what: str) -> str:
    return f"{private} ({package} {version(package)}) {what}: adapt widgetry.compat to it"


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_litestar_group_still_gives_its_commands_the_app() -> None:
    def show(app: Litestar) -> None: ...

    command = click.Command("show", callback=show)
    compat.LitestarGroup(name="group").add_command(command)

    assert issubclass(compat.LitestarGroup, click.Group), moved(
        "litestar.cli._utils.LitestarGroup", "litestar", "is no longer a click group"
    )
    assert command.callback is not show and inspect.unwrap(command.callback) is show, moved(
        "litestar.cli._utils.LitestarGroup", "litestar", "no longer wraps its commands to pass them the app"
    )


def test_the_dto_backend_still_decodes_bodies_in_parse_raw() -> None:
    assert parameters(compat.DTOCodegenBackend.parse_raw) == ["self", "raw", "asgi_connection"], moved(
        "litestar.dto._codegen_backend.DTOCodegenBackend.parse_raw", "litestar", "changed its parameters"
    )
    assert "backend_cls" in parameters(AbstractDTO.create_for_field_definition), moved(
        "litestar.dto._backend.DTOBackend", "litestar", "is no longer what a DTO is created with"
    )
    assert issubclass(compat.DTOCodegenBackend, compat.DTOBackend), moved(
        "litestar.dto._codegen_backend.DTOCodegenBackend", "litestar", "is no longer a DTOBackend"
    )


def test_the_schema_creator_still_resolves_references() -> None:
    assert "schema_creator" in parameters(AbstractDTO.create_openapi_schema), moved(
        "litestar._openapi.schema_generation.SchemaCreator", "litestar", "is no longer what a DTO's schema gets"
    )
    assert callable(getattr(compat.SchemaCreator().schema_registry, "from_reference", None)), moved(
        "litestar._openapi.schema_generation.SchemaCreator.schema_registry.from_reference",
        "litestar",
        "is gone",
    )


async def test_workers_are_the_service_s_and_start_no_heartbeat_manager(app: Litestar) -> None:
    assert "enable_heartbeat_manager" in parameters(LitestarSaqWorker), moved(
        "litestar_saq.Worker(enable_heartbeat_manager)", "litestar-saq", "is gone"
    )
    plugin = app.plugins.get(SAQPlugin)
    workers = list(plugin.get_workers().values())
    # What a process `workers run` forks builds (`run_worker_in_child`), and what `--queues` builds anew.
    forked = list(SAQPlugin(config=plugin.config).get_workers().values())
    plugin.remove_workers()
    rebuilt = list(plugin.get_workers().values())
    assert workers
    assert {type(worker) for worker in [*workers, *forked, *rebuilt]} == {CommandWorker}, moved(
        "litestar_saq.plugin.Worker", "litestar-saq", "is no longer what the plugin builds its workers from"
    )

    async with running(app):
        started = [(type(worker), worker._heartbeat_manager) for worker in workers]  # noqa: SLF001

    assert started == [(CommandWorker, None)] * len(workers), moved(
        "litestar_saq.Worker(enable_heartbeat_manager)", "litestar-saq", "no longer keeps the heartbeat manager off"
    )


async def test_a_job_s_status_is_stored_and_announced_in_one_round_trip() -> None:
    redis = FakeRedis(server=FakeServer())
    queue = EmbeddedRedisQueue(redis, name="one-trip")
    await queue.enqueue(Job("apply", key="job-1", retries=2, ttl=600))
    job = await queue.dequeue(timeout=1)
    assert job is not None
    listener = redis.pubsub()
    await listener.subscribe(job.id)
    assert (await listener.get_message(timeout=1))["type"] == "subscribe"
    single_commands: list[tuple[object, ...]] = []
    execute_command = redis.execute_command

    async def counted(*args: object, **options: object) -> object:
        single_commands.append(args)
        return await execute_command(*args, **options)

    redis.execute_command = counted  # type: ignore[method-assign]

    await job.update(status=Status.ACTIVE)
    await job.finish(Status.COMPLETE)
    heard = [(await listener.get_message(timeout=1))["data"] for _ in range(2)]
    redis.execute_command = execute_command  # type: ignore[method-assign]
    stored = await queue.job("job-1")

    where = "saq.queue.redis.RedisQueue._update and _finish"
    assert single_commands == [], moved(where, "saq", "are no longer where Queue.update and Queue.finish write a job")
    assert heard == [b"active", b"complete"], moved(where, "saq", "no longer announce each status once")
    assert stored is not None
    assert stored.status is Status.COMPLETE
    assert await queue.count("active") == 0, moved(
        "saq.queue.redis.RedisQueue._active and _incomplete", "saq", "no longer name the lists a finished job leaves"
    )
    await listener.aclose()


async def answering_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server that answers `+OK` to every line that starts a command (`*<count>`): enough of RESP for a SET."""
    while line := await reader.readline():
        if line.startswith(b"*"):
            writer.write(b"+OK\r\n")
            await writer.drain()
    writer.close()


async def test_a_redis_connection_writes_in_place_under_its_socket_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    server = await asyncio.start_server(answering_ok, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = Redis.from_url(f"redis://127.0.0.1:{port}/0", connection_class=compat.TimedWriteConnection)
    assert redis.connection_pool.connection_kwargs.get("socket_timeout", 5) == 5  # redis-py's default, left as it is
    await redis.set("connects", "first")  # connecting is redis-py's own path
    tasks_made: list[object] = []
    make_task = asyncio.get_running_loop().create_task

    def counted(*args: object, **kwargs: object) -> asyncio.Task[object]:
        tasks_made.append(args[0])
        return make_task(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio.get_running_loop(), "create_task", counted)
    written = [await redis.set("key", str(n)) for n in range(3)]
    monkeypatch.undo()
    await redis.aclose()
    server.close()
    await server.wait_closed()

    assert written == [True, True, True]
    assert tasks_made == [], moved(
        "redis.asyncio.connection.Connection._send_packed_command", "redis", "made a task per write"
    )


async def test_a_redis_write_that_outlasts_the_socket_timeout_fails_and_drops_the_connection() -> None:
    server = await asyncio.start_server(answering_ok, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = compat.TimedWriteConnection(host="127.0.0.1", port=port, socket_timeout=0.05)
    await connection.connect()
    never_done = asyncio.get_running_loop().create_future()

    async def stalled(_command: object) -> None:
        await never_done

    connection._send_packed_command = stalled  # type: ignore[method-assign] # noqa: SLF001

    with pytest.raises(RedisTimeoutError):
        await connection.send_command("SET", "key", "value")
    still_connected = connection.is_connected
    server.close()
    await server.wait_closed()

    assert not still_connected


async def test_an_in_place_aiosqlite_connection_runs_its_calls_without_a_thread() -> None:
    threads = threading.active_count()
    connection = await compat.InPlaceConnection(lambda: sqlite3.connect(":memory:"))
    cursor = await connection.execute("SELECT 40 + 2")
    row = await cursor.fetchone()
    await connection.close()

    assert row == (42,)
    assert threading.active_count() == threads, moved(
        "aiosqlite.Connection._tx, _execute, _connect", "aiosqlite", "no longer runs every call through them"
    )


def modules() -> list[Path]:
    return [path for module, path in SOURCES.items() if module != "widgetry.compat"]


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(tree: ast.Module) -> list[str]:
    """Imports of a library's private module or private name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.split(".")[0] in LIBRARIES]
        else:
            continue
        found += [name for name in names if any(is_private(part) for part in name.split("."))]
    return found


def library_privates(cls: type) -> set[str]:
    """The private names that the library classes `cls` derives from define: in their bodies, and as `self._x = `
    in their methods (the attributes their instances carry)."""
    names: set[str] = set()
    for base in cls.__mro__[1:]:
        if base.__module__.split(".")[0] not in LIBRARIES:
            continue
        names |= {name for name in vars(base) if is_private(name)}
        try:
            source = ast.parse(inspect.getsource(base).strip())
        except (OSError, TypeError, SyntaxError):
            continue
        names |= {
            node.attr
            for node in ast.walk(source)
            if isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and is_private(node.attr)
        }
    return names


@functools.cache
def own_privates() -> set[str]:
    """The private names the project defines itself: its functions and methods, and what its methods set on `self`."""
    names: set[str] = set()
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and is_private(node.name):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names |= {
                    target.attr
                    for target in targets
                    if isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                    and is_private(target.attr)
                }
    return names


def private_uses(path: Path, tree: ast.Module, own: set[str]) -> list[str]:
    """Private attributes the project does not define (`thing._x`), and, in a class derived from a library's, its
    bases' private names used or overridden (`self._x`, `super()._x`, `def _x`)."""
    found = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in own
    ]
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    if not classes:
        return found
    module = importlib.import_module(module_of(path))
    for node in classes:
        if not isinstance(cls := getattr(module, node.name, None), type):
            continue
        privates = library_privates(cls)
        for inner in ast.walk(node):
            if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)) and inner.name in privates:
                found.append(f"{node.name}.{inner.name} overrides a library's")
            if isinstance(inner, ast.Attribute) and inner.attr in privates:
                found.append(f"{node.name}: {ast.unparse(inner)}")
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(ROOT)))
def test_no_module_but_compat_touches_another_library_s_privates(path: Path) -> None:
    tree = ast.parse(path.read_text())

    found = private_imports(tree) + private_uses(path, tree, own_privates())

    assert found == [], "move it into widgetry.compat, saying why no public API serves"
