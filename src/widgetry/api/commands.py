"""Command status: kept after the command finishes, not only while it is queued."""

from __future__ import annotations

from uuid import UUID

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath

from widgetry.api.docs import READ_PROBLEMS, problem_responses
from widgetry.api.problems import problem_exception
from widgetry.api.schemas import CommandResource
from widgetry.services.commands import CommandService


@get("/commands/{command_id:uuid}", responses=problem_responses(*READ_PROBLEMS, "command-not-found"))
async def get_command(command_id: FromPath[UUID], commands: NamedDependency[CommandService]) -> CommandResource:
    """A command's status, and its problem once failed."""
    record = await commands.get_one_or_none(id=command_id)
    if record is None:
        raise problem_exception(404, f"No command has id {command_id}.", slug="command-not-found")
    return CommandResource.of(record)
