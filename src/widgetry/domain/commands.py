"""Commands: what a client can ask to happen to a widget. Field values come already validated by the DTOs."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec


class CommandStatus(StrEnum):
    ACCEPTED = "accepted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class CreateWidget(msgspec.Struct, tag="create_widget", frozen=True):
    values: dict[str, Any]


class UpdateWidget(msgspec.Struct, tag="update_widget", frozen=True):
    changes: dict[str, Any]
    expected_version: int | None = None


class DeleteWidget(msgspec.Struct, tag="delete_widget", frozen=True):
    expected_version: int | None = None


class UpsertWidget(msgspec.Struct, tag="upsert_widget", frozen=True):
    """One row of an import: creates the widget, or sets these values on the one there. `row` is its place in the
    import (1-based), to name it in the import's result."""

    values: dict[str, Any]
    row: int


class ImportWidgets(msgspec.Struct, tag="import_widgets", frozen=True):
    """An import as a client sees it: its rows are commands of their own (`UpsertWidget`), recorded with it.
    `rejected` holds the rows refused at intake, each `{"row", "sku", "reason"}`."""

    total: int
    rejected: list[dict[str, Any]] = []


Command = CreateWidget | UpdateWidget | DeleteWidget | UpsertWidget | ImportWidgets


def command_type(command: Command) -> str:
    return type(command).__struct_config__.tag  # type: ignore[return-value]


def dump_command(command: Command) -> dict[str, Any]:
    return msgspec.to_builtins(command)


def encode_command(command: Command) -> str:
    """The command as the JSON its record stores (what `dump_command` gives, already encoded)."""
    return msgspec.json.encode(command).decode()


def load_command(payload: dict[str, Any]) -> Command:
    return msgspec.convert(payload, Command)  # type: ignore[arg-type]
