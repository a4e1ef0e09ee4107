"""Structured logs: one command is found from request to event by its `command_id`, in JSON lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.support import API_KEY, AUTH, WAIT, Server, wait_until
from widgetry.observability.logs import writes_json
from widgetry.settings import LogFormat, Settings


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_one_command_is_found_from_request_to_event_by_its_id(tmp_path: Path) -> None:
    server = Server(
        {"WIDGETRY_API_KEYS": API_KEY, "WIDGETRY_LOG_FORMAT": "json", "WIDGETRY_LOG_LEVEL": "DEBUG"}, tmp_path
    )
    try:
        created = httpx.post(
            f"{server.url}/widgets", json={"sku": "L-1", "name": "Logged", "price_cents": 5}, headers=AUTH | WAIT
        )
        command_id = created.json()["id"]

        def told() -> list[str]:
            return [line["event"] for line in json_lines(server.output) if line.get("command_id") == command_id]

        wait_until(lambda: "event.published" in told(), 10, f"the published line\n{server.output}")
    finally:
        server.stop()

    assert created.status_code == 200
    assert told() == ["command.accepted", "command.applied", "event.published"]
    lines = {line["event"]: line for line in json_lines(server.output) if line.get("command_id") == command_id}
    assert lines["command.accepted"] | {"timestamp": None} == lines["command.accepted"] | {
        "type": "create_widget",
        "sku": "L-1",
        "level": "debug",
        "timestamp": None,
    }
    assert lines["event.published"]["event_type"] == "widget.created"
    # The standard library's lines (here the migrations run on start) come out in the same shape.
    assert any(line["logger"].startswith("alembic") for line in json_lines(server.output)), server.output


def test_failed_commands_are_told_with_their_outcome(tmp_path: Path) -> None:
    server = Server(
        {"WIDGETRY_API_KEYS": API_KEY, "WIDGETRY_LOG_FORMAT": "json", "WIDGETRY_LOG_LEVEL": "DEBUG"}, tmp_path
    )
    try:
        missing = httpx.delete(f"{server.url}/widgets/NOPE-1", headers=AUTH | WAIT)
        command_id = missing.headers["Location"].rsplit("/", 1)[-1]

        def told() -> list[str]:
            return [line["event"] for line in json_lines(server.output) if line.get("command_id") == command_id]

        wait_until(lambda: "event.published" in told(), 10, f"the published line\n{server.output}")
    finally:
        server.stop()

    assert missing.status_code == 404
    assert told() == ["command.accepted", "command.failed", "event.published"]


def test_at_info_each_command_is_one_line_its_outcome_and_an_idle_shutdown_warns_of_nothing(tmp_path: Path) -> None:
    server = Server({"WIDGETRY_API_KEYS": API_KEY, "WIDGETRY_LOG_FORMAT": "json"}, tmp_path)
    try:
        body = {"sku": "L-2", "name": "Logged", "price_cents": 5}
        created = httpx.post(f"{server.url}/widgets", json=body, headers=AUTH | WAIT)
        refused = httpx.post(f"{server.url}/widgets", json=body, headers=AUTH | WAIT)
        commands = {
            created.json()["id"]: "command.applied",
            refused.json()["command"].rsplit("/", 1)[-1]: "command.failed",
        }

        def told() -> dict[str, list[str]]:
            lines = json_lines(server.output)
            return {
                command: [line["event"] for line in lines if line.get("command_id") == command] for command in commands
            }

        wait_until(lambda: all(told().values()), 10, f"each command's line\n{server.output}")
    finally:
        server.stop()

    assert (created.status_code, refused.status_code) == (200, 409)
    assert told() == {command: [outcome] for command, outcome in commands.items()}
    assert [line for line in json_lines(server.output) if line["level"] not in ("debug", "info")] == []
    # No line per request either, unless WIDGETRY_ACCESS_LOG asks for one (the redaction test turns it on).
    assert [line for line in json_lines(server.output) if line.get("logger") == "uvicorn.access"] == []


def test_log_format_follows_the_setting_and_else_the_terminal() -> None:
    assert writes_json(Settings(log_format=LogFormat.JSON))
    assert not writes_json(Settings(log_format=LogFormat.CONSOLE))
    # Under pytest stderr is captured, not a terminal: auto means JSON.
    assert writes_json(Settings())


CREDENTIAL_QUERIES = {
    "api_key": "QS-SECRET-1",
    "key": "QS-SECRET-2",
    "token": "QS-SECRET-3",
    "access_token": "QS-SECRET-4",
    "X-API-Key": "QS-SECRET-5",
    "api%5Fkey": "QS-SECRET-6",
}
"""Credential-like query parameters as they are sent (names already percent-encoded where they need it)."""


def test_credentials_in_the_query_string_are_redacted_from_every_log_line(tmp_path: Path) -> None:
    server = Server(
        {"WIDGETRY_API_KEYS": API_KEY, "WIDGETRY_LOG_FORMAT": "json", "WIDGETRY_ACCESS_LOG": "true"}, tmp_path
    )
    try:
        statuses = [
            httpx.get(f"{server.url}/widgets/Q-1?sku=Q-1&{name}={secret}&limit=1").status_code
            for name, secret in CREDENTIAL_QUERIES.items()
        ]
        refused = httpx.post(
            f"{server.url}/widgets?api_key=QS-SECRET-7", json={"sku": "Q-1", "name": "q", "price_cents": 1}
        )

        def access_lines() -> list[str]:
            return [line["event"] for line in json_lines(server.output) if line.get("logger") == "uvicorn.access"]

        wait_until(lambda: len(access_lines()) >= len(statuses) + 1, 10, f"the access log lines\n{server.output}")
    finally:
        server.stop()

    assert statuses == [404] * len(CREDENTIAL_QUERIES)
    assert refused.status_code == 401
    assert "QS-SECRET" not in server.output
    logged = access_lines()
    for name in CREDENTIAL_QUERIES:
        assert any(f"/widgets/Q-1?sku=Q-1&{name}=[redacted]&limit=1 " in line for line in logged), (name, logged)
    assert any("/widgets?api_key=[redacted] " in line for line in logged), logged
