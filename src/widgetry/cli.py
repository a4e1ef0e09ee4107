"""The app's commands in `widgetry` (Litestar's CLI with the app preset, see `widgetry.console`): `run`, `workers run
--concurrency` and `commands ...`.

Advanced Alchemy contributes `database ...` and litestar-saq `workers ...`; this plugin adjusts two commands and
adds the operator's `commands show|failed|retry`, `events tail` and `keys create|list|revoke`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import anyio
import click
import msgspec
from advanced_alchemy.filters import OrderBy
from litestar.plugins import CLIPlugin

from widgetry.bench.command import bench_command
from widgetry.compat import LitestarGroup
from widgetry.console import events_group
from widgetry.domain.models import EventRecord, Scope
from widgetry.domain.problems import PROBLEM_BASE
from widgetry.migrating import upgrade_if_behind
from widgetry.observability.logs import uvicorn_log_config
from widgetry.services.commands import CommandService, RetryRefused
from widgetry.services.keys import DEFAULT_SCOPES, ApiKeyService, KeyNameTaken, KeyNotFound
from widgetry.services.publish import EventService
from widgetry.services.queue import enqueue
from widgetry.services.unavailable import is_unavailable
from widgetry.services.units import unit_of_work
from widgetry.settings import DEFAULT_WORKER_CONCURRENCY

if TYPE_CHECKING:
    import uvicorn
    from litestar import Litestar

    from widgetry.connections import Connections
    from widgetry.domain.models import ApiKey, CommandRecord
    from widgetry.settings import Settings

GRACEFUL_SHUTDOWN_S = 5
KEEP_ALIVE_S = 75
"""How long an idle HTTP/1.1 connection stays open. Uvicorn's 5 s equals httpx's (and others') pool expiry: a
client reusing a connection just as the server closed it saw its write fail with no response (the fault suite's
clients did, once or twice a run). Longer than the clients' and than load balancers' usual 60 s, the server is
never the side that closes first."""
QUEUE_TIMEOUT_S = 10
"""How long `commands retry` tries to reach Redis before leaving the command to the recovery pass."""

T = TypeVar("T")


class WidgetryCLIPlugin(CLIPlugin):
    def on_cli_init(self, cli: click.Group) -> None:
        cli.add_command(run_command)
        cli.add_command(commands_group)
        cli.add_command(bench_command)
        cli.add_command(events_group)
        cli.add_command(keys_group)
        workers = cli.commands.get("workers")
        if isinstance(workers, click.Group) and "run" in workers.commands:
            saq_run = workers.commands["run"]
            workers.add_command(_workers_run_command(saq_run))


@click.command(name="run", help="Serve the API (with the in-process worker unless WIDGETRY_WORKERS=external).")
@click.option("-H", "--host", default="127.0.0.1", show_default=True, envvar="WIDGETRY_HOST")
@click.option("-p", "--port", default=8000, show_default=True, type=int, envvar="WIDGETRY_PORT")
@click.option("--log-level", default="info", show_default=True)
def run_command(app: Litestar, host: str, port: int, log_level: str) -> None:
    import uvicorn  # noqa: PLC0415 - only this command serves

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Uvicorn waits for open responses before the app's shutdown hooks run, and SSE responses never end on
            # their own: end them now, so clients reconnect (with their last id) to a process that is staying up.
            app.state.hub.close_subscribers()
            super().handle_exit(sig, frame)

    Server(server_config(app, host, port, log_level)).run()


def server_config(app: Litestar, host: str, port: int, log_level: str) -> uvicorn.Config:
    import uvicorn  # noqa: PLC0415 - only serving needs it

    trusted_proxies = list(app.state.settings.trusted_proxies)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=uvicorn_log_config(app.state.settings),
        access_log=app.state.settings.access_log,
        lifespan="on",
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        # Uvicorn by default believes `X-Forwarded-For` from 127.0.0.1, so any local process could pose as any
        # client; the header is read only from the proxies the settings name.
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=trusted_proxies,
    )


def _workers_run_command(saq_run: click.Command) -> click.Command:
    @click.command(name="run", help="Run external worker processes (PostgreSQL/Redis deployments).")
    @click.option(
        "--concurrency",
        type=click.IntRange(min=1),
        default=None,
        help="Jobs each worker process runs at once "
        f"[default: WIDGETRY_WORKER_CONCURRENCY or {DEFAULT_WORKER_CONCURRENCY}].",
    )
    @click.option(
        "--processes",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="Worker processes to start for each partition taken.",
    )
    @click.option(
        "--partition",
        "partitions",
        type=click.IntRange(min=0),
        multiple=True,
        help="A partition to take (repeatable) [default: all WIDGETRY_QUEUE_PARTITIONS]. Partition 0's worker also "
        "runs the periodic jobs: run it somewhere.",
    )
    def run_workers(
        ctx: click.Context, app: Litestar, concurrency: int | None, processes: int, partitions: tuple[int, ...]
    ) -> None:
        settings = app.state.settings
        if settings.embedded_redis:
            raise click.UsageError("External workers need a shared Redis: set REDIS_URL (and DATABASE_URL).")
        if unknown := sorted(set(partitions) - set(range(settings.queue_partitions))):
            named = ", ".join(map(str, unknown))
            raise click.UsageError(f"No partition {named}: WIDGETRY_QUEUE_PARTITIONS is {settings.queue_partitions}.")
        from litestar_saq import SAQPlugin  # noqa: PLC0415

        plugin = app.plugins.get(SAQPlugin)
        for queue_config in plugin.config.queue_configs:  # what litestar-saq builds more processes' workers from
            queue_config.separate_process = True
            if concurrency is not None:
                queue_config.concurrency = concurrency
        for worker in plugin.get_workers().values():
            # The app built its workers already, as the service's own (`widgetry.workers.queue`): they run here.
            worker.separate_process = True
            if concurrency is not None:
                worker.concurrency = concurrency
        _use_uvloop()
        # litestar-saq runs each queue's worker in a process of its own: one process per partition taken.
        queues = tuple(settings.queue_names[partition] for partition in sorted(set(partitions)))
        from widgetry.workers.processes import WorkerProcesses  # noqa: PLC0415

        forked = WorkerProcesses(processes * len(queues or settings.queue_names) - 1)
        try:
            with forked:
                ctx.invoke(saq_run, workers=processes, queues=queues)
        finally:
            if forked.died:  # also over the exit code litestar-saq's own SIGTERM handler exits with
                raise SystemExit(f"worker process(es) {forked.died} ended on their own (pid, exit code)")

    return run_workers


def _use_uvloop() -> None:
    """Workers run on uvloop when it is installed (it comes with uvicorn's standard extras, which serve the web
    processes on it too): the worker's time goes to the event loop's socket calls as much as to the jobs."""
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@click.group(cls=LitestarGroup, name="commands", help="Show commands, and list and retry failed ones.")
def commands_group() -> None:
    """The operator's view of the command records (the database, not the queue, is their source of truth)."""


class FailedCommand(msgspec.Struct, frozen=True):
    """A failed command as `commands failed` shows it: what it was, when it ended, and why."""

    id: UUID
    type: str
    sku: str | None
    finished_at: datetime | None
    problem: str
    """The problem `type` without its `/problems/` prefix: `internal`, `widget-exists`, ..."""
    detail: str

    @classmethod
    def of(cls, record: CommandRecord) -> FailedCommand:
        error = record.error or {}
        return cls(
            id=record.id,
            type=record.type,
            sku=record.sku,
            finished_at=record.finished_at,
            problem=str(error.get("type", "")).removeprefix(PROBLEM_BASE),
            detail=str(error.get("detail", "")),
        )


@commands_group.command(name="failed", help="List the commands that ended failed, newest first.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array instead of a table.")
def failed_command(app: Litestar, limit: int, as_json: bool) -> None:
    async def failed(connections: Connections) -> list[FailedCommand]:
        async with connections.alchemy.get_session() as session:
            return [FailedCommand.of(record) for record in await CommandService(session=session).failed(limit)]

    commands = _run(app, failed)
    if as_json:
        click.echo(msgspec.json.encode(commands).decode())
    elif commands:
        click.echo(_table(commands))
    else:
        click.echo("No failed commands.")


class ShownEvent(msgspec.Struct, frozen=True):
    type: str
    version: int | None
    occurred_at: datetime
    stream_id: str | None
    """Its id on the stream (an SSE `id:`), or `null` while it waits to be published."""


class ShownCommand(msgspec.Struct, frozen=True):
    """One command as `commands show` prints it: what it asked, where it stands, and the events it made."""

    id: UUID
    type: str
    sku: str | None
    seq: int
    status: str
    accepted_at: datetime
    finished_at: datetime | None
    recoveries: int
    payload: dict[str, Any]
    error: dict[str, Any] | None
    events: list[ShownEvent]


@commands_group.command(name="show", help="Show one command: what it asked, its outcome, and the events it made.")
@click.argument("command_id", metavar="ID", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a listing.")
def show_command(app: Litestar, command_id: UUID, as_json: bool) -> None:
    async def show(connections: Connections) -> ShownCommand | None:
        async with connections.alchemy.get_session() as session:
            record = await CommandService(session=session).get_one_or_none(id=command_id)
            if record is None:
                return None
            events = await EventService(session=session).get_many(
                EventRecord.command_id == command_id, OrderBy("id", "asc")
            )
        shown = [ShownEvent(event.type, event.version, event.occurred_at, event.stream_id) for event in events]
        return ShownCommand(
            id=record.id,
            type=record.type,
            sku=record.sku,
            seq=record.seq,
            status=record.status,
            accepted_at=record.accepted_at,
            finished_at=record.finished_at,
            recoveries=record.recoveries,
            payload=record.payload,
            error=record.error,
            events=shown,
        )

    command = _run(app, show)
    if command is None:
        raise click.ClickException(f"There is no command {command_id}.")
    if as_json:
        click.echo(msgspec.json.encode(command).decode())
        return
    fields = msgspec.to_builtins(command)
    events = fields.pop("events")
    width = max(map(len, fields))
    lines = [f"{name.ljust(width)}  {_shown(value)}" for name, value in fields.items()]
    lines += [f"{'events'.ljust(width)}  {_shown(event)}" for event in events] or [f"{'events'.ljust(width)}  -"]
    click.echo("\n".join(lines))


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


@commands_group.command(
    name="retry",
    short_help="Re-queue a failed command, as its sku's newest.",
    help="Re-queue a failed command. It is accepted again as its sku's newest command, so it takes effect after "
    "every command accepted before the retry, and is queued. When Redis cannot be reached, and always on the "
    "embedded defaults (no REDIS_URL: the queue lives inside the server's process; run this in the server's "
    "working directory, where its SQLite file is), the workers' recovery pass queues it instead: it runs every "
    "WIDGETRY_RECOVERY_INTERVAL_SECONDS (60) and takes commands accepted more than WIDGETRY_RECOVERY_GRACE_SECONDS "
    "(30) earlier.",
)
@click.argument("command_id", metavar="ID", type=click.UUID)
def retry_command(app: Litestar, command_id: UUID) -> None:
    settings: Settings = app.state.settings

    async def retry(connections: Connections) -> list[str]:
        async with unit_of_work(connections.alchemy) as session:
            try:
                record = await CommandService(session=session).retry(command_id)
            except RetryRefused as refused:
                raise click.ClickException(str(refused)) from None
        accepted = f"Command {record.id} ({record.type} {record.sku}) is accepted again, as its sku's newest."
        if settings.embedded_redis:
            elsewhere = "No REDIS_URL: the queue lives inside the server's process, out of this command's reach."
            return [accepted, elsewhere, _recovery(settings, "the server's")]
        from litestar_saq import SAQPlugin  # noqa: PLC0415

        try:
            with anyio.fail_after(QUEUE_TIMEOUT_S):
                plugin = app.plugins.get(SAQPlugin)
                await enqueue([plugin.get_queue(name) for name in settings.queue_names], settings, [record])
        except Exception as error:
            if not is_unavailable(error):
                raise
            unreachable = f"Redis could not be reached ({str(error).rstrip('.') or type(error).__name__})."
            return [accepted, unreachable, _recovery(settings, "the workers'")]
        return [accepted, "Queued: a worker applies it after the commands accepted before it."]

    click.echo("\n".join(_run(app, retry)))


def _recovery(settings: Settings, whose: str) -> str:
    interval, grace = settings.recovery_interval_seconds, settings.recovery_grace_seconds
    return (
        f"It stays accepted, and {whose} recovery pass queues it within about {interval + grace} s "
        f"(it runs every {interval} s and takes commands accepted more than {grace} s earlier)."
    )


def _run(app: Litestar, work: Callable[[Connections], Awaitable[T]]) -> T:
    """Runs one operator action on the app's database and Redis clients in an event loop of its own, as Advanced
    Alchemy's CLI commands do, then closes them: a CLI command has no lifespan to do it."""
    connections: Connections = app.state.connections

    async def run() -> T:
        try:
            return await work(connections)
        finally:
            await connections.redis.aclose()
            await connections.alchemy.get_engine().dispose()

    return anyio.run(run)


def _table(commands: list[FailedCommand]) -> str:
    rows = [("FINISHED", "ID", "TYPE", "SKU", "PROBLEM", "DETAIL")]
    rows += [
        (
            command.finished_at.isoformat(timespec="seconds") if command.finished_at else "-",
            str(command.id),
            command.type,
            command.sku or "-",
            command.problem,
            command.detail,
        )
        for command in commands
    ]
    return _columns(rows)


@click.group(cls=LitestarGroup, name="keys", help="Make, list and revoke the API keys kept in the database.")
def keys_group() -> None:
    """Keys beside `WIDGETRY_API_KEYS` and `WIDGETRY_ADMIN_KEYS`: each shown once when made, stored as a digest with
    its scopes, revocable on its own."""


class ListedKey(msgspec.Struct, frozen=True):
    name: str
    fingerprint: str
    """The start of the key's SHA-256: enough to tell keys apart and to revoke one, nothing to sign in with."""
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> ListedKey:
        scopes = [scope for scope in Scope if scope in key.scopes]
        return cls(key.name, key.digest[:FINGERPRINT_CHARS], scopes, key.created_at, key.last_used_at, key.revoked_at)


FINGERPRINT_CHARS = 12


@keys_group.command(name="create", help="Make a key and print it, once: only its digest is stored.")
@click.argument("name", required=False)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice([scope.value for scope in Scope]),
    help="What the key may do, repeated for several: 'write' sends commands, 'admin' reads internal fields and opens "
    "the operator routes [default: write].",
)
def create_key(app: Litestar, name: str | None, scopes: tuple[str, ...]) -> None:
    """NAME says what the key is for [default: key-<fingerprint>]."""

    async def create(connections: Connections) -> tuple[ApiKey, str]:
        async with unit_of_work(connections.alchemy) as session:
            try:
                return await ApiKeyService(session=session).issue(name, frozenset(map(Scope, scopes)) or DEFAULT_SCOPES)
            except KeyNameTaken as taken:
                raise click.ClickException(str(taken)) from None

    record, key = _run_migrated(app, create)
    click.echo(
        f"Key {record.name!r} (fingerprint {record.digest[:FINGERPRINT_CHARS]}, scopes {_scopes(record.scopes)}); "
        "it is not shown again:"
    )
    click.echo(key)


@keys_group.command(name="list", help="List the stored keys (never the keys themselves), oldest first.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array instead of a table.")
def list_keys(app: Litestar, as_json: bool) -> None:
    async def listed(connections: Connections) -> list[ListedKey]:
        async with connections.alchemy.get_session() as session:
            return [ListedKey.of(key) for key in await ApiKeyService(session=session).listed()]

    keys = _run_migrated(app, listed)
    if as_json:
        click.echo(msgspec.json.encode(keys).decode())
        return
    rows = [("NAME", "FINGERPRINT", "SCOPES", "CREATED", "LAST USED", "REVOKED")]
    rows += [
        (
            key.name,
            key.fingerprint,
            _scopes(key.scopes),
            *(_when(moment) for moment in (key.created_at, key.last_used_at, key.revoked_at)),
        )
        for key in keys
    ]
    click.echo(_columns(rows) if keys else "No stored keys.")
    settings: Settings = app.state.settings
    for variable, configured, scopes in (
        ("WIDGETRY_API_KEYS", settings.api_keys, frozenset({Scope.WRITE})),
        ("WIDGETRY_ADMIN_KEYS", settings.admin_keys, frozenset(Scope)),
    ):
        if configured:
            click.echo(f"Also accepted: {len(configured)} key(s) from {variable}, scopes {_scopes(scopes)}.")


@keys_group.command(name="revoke", help="Revoke a stored key, named or by the start of its fingerprint.")
@click.argument("key", metavar="NAME-OR-FINGERPRINT")
def revoke_key(app: Litestar, key: str) -> None:
    settings: Settings = app.state.settings

    async def revoke(connections: Connections) -> ApiKey:
        async with unit_of_work(connections.alchemy) as session:
            try:
                return await ApiKeyService(session=session).revoke(key)
            except KeyNotFound as missing:
                raise click.ClickException(str(missing)) from None

    record = _run_migrated(app, revoke)
    click.echo(
        f"Key {record.name!r} (fingerprint {record.digest[:FINGERPRINT_CHARS]}) is revoked since "
        f"{_when(record.revoked_at)}: web processes refuse it within {settings.api_key_cache_seconds:g} s."
    )


def _run_migrated(app: Litestar, work: Callable[[Connections], Awaitable[T]]) -> T:
    """`_run`, on SQLite after migrating it as the server does when it starts (keys may be made before it ever has),
    and only when it is behind: Alembic tells of every upgrade it runs, even one with nothing to do."""
    settings: Settings = app.state.settings

    async def migrated(connections: Connections) -> T:
        if settings.uses_sqlite:
            await upgrade_if_behind(connections.alchemy, settings)
        return await work(connections)

    return _run(app, migrated)


def _scopes(scopes: Iterable[Scope]) -> str:
    return ",".join(scope for scope in Scope if scope in scopes) or "-"


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "-"


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(map(str.ljust, row, widths)).rstrip() for row in rows)
