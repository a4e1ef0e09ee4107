"""Why a command can fail: one class per failure, each with its problem `type` and HTTP status (RFC 9457)."""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "/problems/"


class Problem(Exception):
    """An error with its problem `type` (`/problems/<slug>`), title and HTTP status."""

    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"
    status: ClassVar[int] = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def problem(self) -> dict[str, Any]:
        return problem(self.slug, self.title, self.status, self.detail)


class CommandFailed(Problem):
    """A command that cannot take effect; recorded on the command and announced as `command.failed`."""


class IdempotencyKeyReused(Problem):
    """The request reuses an `Idempotency-Key` with a different command: refused, nothing recorded."""

    slug, title, status = "idempotency-key-reused", "Idempotency key reused", 422


class WidgetExists(CommandFailed):
    slug, title, status = "widget-exists", "Widget already exists", 409


class WidgetNotFound(CommandFailed):
    slug, title, status = "widget-not-found", "Widget not found", 404


class VersionConflict(CommandFailed):
    slug, title, status = "conflict", "Version conflict", 412


class InvalidCommand(CommandFailed):
    slug, title, status = "invalid", "Invalid command", 422


def problem(slug: str, title: str, status: int, detail: str, **extra: Any) -> dict[str, Any]:
    return {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail, **extra}
