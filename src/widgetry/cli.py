"""`widgetry`: Litestar's CLI with the app preset, plus `run` and `workers run --concurrency`.

Advanced Alchemy contributes `database ...` and litestar-saq `workers ...`; this plugin adjusts two commands.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click
from litestar.plugins import CLIPlugin

if TYPE_CHECKING:
    from litestar import Litestar

APP_PATH = "widgetry.app:create_app"
GRACEFUL_SHUTDOWN_S = 5


def main() -> None:
    os.environ.setdefault("LITESTAR_APP", APP_PATH)
    from litestar.cli.main import litestar_group  # noqa: PLC0415 - read LITESTAR_APP first

    sys.exit(litestar_group())


class WidgetryCLIPlugin(CLIPlugin):
    def on_cli_init(self, cli: click.Group) -> None:
        cli.add_command(run_command)
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

    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
    )
    Server(config).run()


def _workers_run_command(saq_run: click.Command) -> click.Command:
    @click.command(name="run", help="Run external worker processes (PostgreSQL/Redis deployments).")
    @click.option(
        "--concurrency",
        type=click.IntRange(min=1),
        default=None,
        help="Jobs each worker process runs at once [default: WIDGETRY_WORKER_CONCURRENCY or 10].",
    )
    @click.option(
        "--processes", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes to start."
    )
    def run_workers(ctx: click.Context, app: Litestar, concurrency: int | None, processes: int) -> None:
        if app.state.settings.embedded_redis:
            raise click.UsageError("External workers need a shared Redis: set REDIS_URL (and DATABASE_URL).")
        from litestar_saq import SAQPlugin  # noqa: PLC0415

        plugin = app.plugins.get(SAQPlugin)
        for queue_config in plugin.config.queue_configs:
            queue_config.separate_process = True
            if concurrency is not None:
                queue_config.concurrency = concurrency
        plugin.remove_workers()
        ctx.invoke(saq_run, workers=processes)

    return run_workers
