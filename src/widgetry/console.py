"""The `widgetry` command: `events tail` at once, everything else through Litestar's CLI with the app preset.

Litestar's CLI builds the application before it runs any command (its plugins add theirs), which takes seconds.
Following the event stream needs only the service's URL: `events tail` is answered here, before any of that is
imported, so it is connected a moment after it was run instead of missing what happened meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click
import msgspec

from widgetry.domain.events import STREAM_RESET

if TYPE_CHECKING:
    from widgetry.client import Event

APP_PATH = "widgetry.app:create_app"
HELP = """widgetry: a widget catalogue whose writes are commands.

`widgetry run` serves the API with its worker; `widgetry workers run` runs external workers; `widgetry database
upgrade` migrates. Settings come from the environment (DATABASE_URL, REDIS_URL, WIDGETRY_*); with none set, the
service runs on a SQLite file in the working directory and an in-process Redis.
"""
APP_OPTIONS = ("app_path", "app_dir")
"""Litestar's options for finding an application: widgetry's is preset."""


def main() -> None:
    # httpx logs each request it sends at INFO: the bench's and the tail's requests would be lines among their output.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if sys.argv[1:3] == ["events", "tail"]:
        sys.exit(events_group(sys.argv[2:], prog_name="widgetry events"))
    os.environ.setdefault("LITESTAR_APP", APP_PATH)
    from litestar.cli.main import litestar_group  # noqa: PLC0415 - read LITESTAR_APP first, and only when needed

    litestar_group.help = HELP
    for option in litestar_group.params:
        if option.name in APP_OPTIONS and isinstance(option, click.Option):
            option.hidden = True
    sys.exit(litestar_group(prog_name="widgetry"))


@click.group(name="events", help="Follow the event stream.")
def events_group() -> None:
    """The stream as an operator watches it: through the Python client, over HTTP, from any machine."""


SHOWN_DATA_CHARS = 100
OMITTED_DATA = frozenset({"sku", "version", "created_at", "updated_at"})
"""Said elsewhere on an event's line already, or noise there."""


@events_group.command(
    name="tail",
    help="Print events as they happen, for ever, resuming where it left off after a disconnect or a server restart.",
)
@click.option("--url", help="The service [default: WIDGETRY_URL, else http://127.0.0.1:8000].")
@click.option("--api-key", envvar="WIDGETRY_API_KEY", help="Needed when reads are protected [WIDGETRY_API_KEY].")
@click.option("--sku", "skus", multiple=True, help="Only this sku's events (repeatable).")
@click.option("--since", metavar="ID", help="Start after this event id (an earlier line's), not at the live end.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as one JSON object per line.")
def tail_events(url: str | None, api_key: str | None, skus: tuple[str, ...], since: str | None, as_json: bool) -> None:
    # Imported here: the client brings httpx, 2 MB of every process this module starts, the web server's included.
    from widgetry.client import AsyncWidgetryClient, ProblemError, service_url  # noqa: PLC0415

    async def follow() -> None:
        async with AsyncWidgetryClient(url, api_key) as client:
            async for event in client.events(sku=skus or None, last_event_id=since):
                click.echo(msgspec.json.encode(event).decode() if as_json else _event_line(event))

    try:
        asyncio.run(follow())
    except ProblemError as refused:
        raise click.ClickException(f"{service_url(url)} refused the event stream: {refused}") from None
    except KeyboardInterrupt:
        pass


def _event_line(event: Event) -> str:
    if event.type == STREAM_RESET:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        return f"{now}  {STREAM_RESET}  the stream no longer holds where this left off: events may have been missed"
    shown = {name: value for name, value in event.data.items() if name not in OMITTED_DATA}
    data = " ".join(f"{name}={msgspec.json.encode(value).decode()}" for name, value in shown.items())
    if len(data) > SHOWN_DATA_CHARS:
        data = data[: SHOWN_DATA_CHARS - 3] + "..."
    fields = (
        event.occurred_at.isoformat(timespec="milliseconds") if event.occurred_at else "-",
        event.type.ljust(17),
        event.sku or "-",
        f"v{event.version}" if event.version is not None else "-",
        f"command {event.command_id}",
        data or "-",
        f"[{event.id}]",
    )
    return "  ".join(fields)
