"""`widgetry bench`: the command line. Cheap to import: the bench itself loads only when the command runs."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import click

from widgetry.settings import DEFAULT_WORKER_CONCURRENCY

QUICK = {"commands": 600, "subscribers": 2}
"""`--quick`: a smoke run, spawning included, in well under a minute; options given explicitly still win."""


@click.command(
    name="bench",
    help="Load the service and measure it: write commands over HTTP and time each one until its event reaches "
    "every SSE subscriber, then run the raw SAQ and direct write baselines on the same Redis and database. "
    "Without --url it starts the stack itself: on DATABASE_URL and REDIS_URL when set, else on the embedded "
    "defaults. Exits 1 when a command was lost or a write answered with an error.",
)
@click.option("--url", "urls", multiple=True, help="A running web process to load (repeat for several).")
@click.option("--api-key", envvar="WIDGETRY_BENCH_API_KEY", help="The API key writes use with --url.")
@click.option("--web", "webs", type=click.IntRange(min=1), default=1, show_default=True, help="Web processes.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes.")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help=f"Jobs each worker runs at once [default: WIDGETRY_WORKER_CONCURRENCY or {DEFAULT_WORKER_CONCURRENCY}].",
)
@click.option("--subscribers", type=click.IntRange(min=1), default=1, show_default=True, help="SSE clients.")
@click.option("--commands", type=click.IntRange(min=1), default=5000, show_default=True, help="Writes to send.")
@click.option(
    "--skus", type=click.IntRange(min=1), default=None, help="Skus to spread them over [default: commands/4]."
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Commands per second offered in all (open loop); 0: as fast as they are accepted (closed loop).",
)
@click.option("--clients", type=click.IntRange(min=1), default=2, show_default=True, help="Writer processes.")
@click.option(
    "--connections",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Connections per writer process (writes in flight, in a closed loop).",
)
@click.option(
    "--idle-connections",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Extra SSE connections that get no events, held open through the run.",
)
@click.option("--no-baselines", is_flag=True, help="Skip the raw SAQ and direct write baselines.")
@click.option("--quick", is_flag=True, help=f"A smoke run: {QUICK['commands']} commands, 2 subscribers.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here.")
@click.option(
    "--compare",
    nargs=2,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="OLD.json NEW.json",
    help="Print two reports' figures side by side (and run nothing).",
)
def bench_command(
    ctx: click.Context,
    urls: tuple[str, ...],
    api_key: str | None,
    webs: int,
    workers: int,
    concurrency: int | None,
    subscribers: int,
    commands: int,
    skus: int | None,
    rate: float,
    clients: int,
    connections: int,
    idle_connections: int,
    no_baselines: bool,
    quick: bool,
    json_path: Path | None,
    compare: tuple[Path, Path] | None,
) -> None:
    from rich.console import Console  # noqa: PLC0415 - the bench loads only when it runs

    from widgetry.bench.http import run  # noqa: PLC0415
    from widgetry.bench.report import compare as compare_reports  # noqa: PLC0415
    from widgetry.bench.report import render_table  # noqa: PLC0415

    if compare:
        old, new = (json.loads(path.read_text()) for path in compare)
        click.echo(compare_reports(old, new))
        return
    if quick:
        given = {name for name in QUICK if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
        commands = commands if "commands" in given else QUICK["commands"]
        subscribers = subscribers if "subscribers" in given else QUICK["subscribers"]
    skus = skus or max(1, commands // 4)
    if skus > commands:
        raise click.UsageError(
            f"--skus ({skus}) must not exceed --commands ({commands}): each sku starts with a create"
        )
    if urls and not api_key:
        raise click.UsageError("--url needs --api-key (or WIDGETRY_BENCH_API_KEY)")
    if not urls and bool(os.environ.get("DATABASE_URL")) != bool(os.environ.get("REDIS_URL")):
        raise click.UsageError(
            "set both DATABASE_URL and REDIS_URL (external workers need both), or neither for the embedded defaults"
        )

    from widgetry.bench.channel import AgentFailed  # noqa: PLC0415
    from widgetry.bench.runner import Options, run_bench, succeeded  # noqa: PLC0415
    from widgetry.bench.stack import StackFailed  # noqa: PLC0415
    from widgetry.bench.system import raise_open_files_limit  # noqa: PLC0415

    options = Options(
        urls=urls,
        api_key=api_key,
        webs=webs,
        workers=workers,
        concurrency=concurrency or int(os.environ.get("WIDGETRY_WORKER_CONCURRENCY") or DEFAULT_WORKER_CONCURRENCY),
        subscribers=subscribers,
        commands=commands,
        skus=skus,
        rate=rate,
        clients=clients,
        connections=connections,
        idle_connections=idle_connections,
        baselines=not no_baselines,
        quick=quick,
    )
    raise_open_files_limit()
    try:
        report = run(run_bench(options, Console(stderr=True)))
    except (AgentFailed, StackFailed) as error:
        raise click.ClickException(str(error)) from error
    except asyncio.CancelledError:  # SIGTERM
        raise click.Abort from None
    click.echo(render_table(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    ctx.exit(0 if succeeded(report) else 1)
