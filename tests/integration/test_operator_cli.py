"""The operator's tools as an operator runs them: `widgetry events tail` following a server through a restart, and
`widgetry keys create|list|revoke` against a running service, on the real PostgreSQL and Redis."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import API_KEY, Process, Server, free_port, run_cli, wait_until
from widgetry.client import WidgetryClient
from widgetry.services.keys import KEY_PREFIX, digest

TTL_S = 1


@pytest.fixture
def env(real_env: dict[str, str]) -> dict[str, str]:
    return real_env | {"WIDGETRY_API_KEY_CACHE_SECONDS": str(TTL_S)}


def serve_on(port: int, env: dict[str, str], cwd: Path, name: str) -> Process:
    """`widgetry run` on a given port (a restart must come back where its clients left it), once it answers."""
    server = Process(["run", "--host", "127.0.0.1", "--port", str(port)], env, cwd, name)

    def healthy() -> bool:
        if server.popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {server.popen.returncode}:\n{server.output}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 60, f"{name} to answer /health")
    return server


def printed(follower: Process) -> list[dict[str, Any]]:
    """The events `events tail --json` printed so far (its log has its stderr too)."""
    lines = [line for line in follower.output.splitlines() if line.startswith("{")]
    return [event for event in map(json.loads, lines) if "command_id" in event]


def wait_for_events(follower: Process, count: int) -> list[dict[str, Any]]:
    def enough() -> bool:
        if follower.popen.poll() is not None:
            raise RuntimeError(f"events tail exited with {follower.popen.returncode}:\n{follower.output}")
        return len(printed(follower)) >= count

    wait_until(enough, 30, f"{count} events printed\n{follower.output}")
    return printed(follower)


def widget_lines(reader: Process) -> list[str]:
    return [line for line in reader.output.splitlines() if "  widget." in line]


def position(stream_id: str) -> tuple[int, int]:
    milliseconds, sequence = stream_id.split("-")
    return int(milliseconds), int(sequence)


def test_events_tail_follows_another_process_writes_across_a_server_restart_exactly(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Started before any server answers there, from the start of this test's (empty) stream.
    follower = Process(["events", "tail", "--url", url, "--json", "--since", "0-0"], {}, tmp_path, "tail")
    try:
        server = serve_on(port, env, tmp_path, "web-1")
        with WidgetryClient(url, API_KEY) as client:
            commands = [client.create("TAIL-1", "Tailed", 1, wait=10), client.update("TAIL-1", price_cents=2, wait=10)]
        before_restart = wait_for_events(follower, 2)
        server.stop()
        server = serve_on(port, env, tmp_path, "web-2")
        with WidgetryClient(url, API_KEY) as client:
            commands += [
                client.update("TAIL-1", price_cents=3, wait=10),
                client.create("TAIL-2", "Tailed too", 4, wait=10),
                client.delete("TAIL-1", wait=10),
            ]
            events = wait_for_events(follower, 5)
            # One more write: a duplicate of anything earlier would be printed before its event.
            commands.append(client.update("TAIL-2", name="Tailed still", wait=10))
        events = wait_for_events(follower, 6)
        still_following = follower.popen.poll() is None
        reader = Process(["events", "tail", "--url", url, "--sku", "TAIL-2", "--since", "0-0"], {}, tmp_path, "pretty")
        wait_until(lambda: len(widget_lines(reader)) >= 2, 30, f"two lines printed\n{reader.output}")
        reader.stop()
        server.stop()
    finally:
        follower.stop()

    assert [command.status for command in commands] == ["succeeded"] * 6
    assert before_restart == events[:2]
    assert [(e["type"], e["sku"], e["version"], e["command_id"]) for e in events] == [
        ("widget.created", "TAIL-1", 1, str(commands[0].id)),
        ("widget.updated", "TAIL-1", 2, str(commands[1].id)),
        ("widget.updated", "TAIL-1", 3, str(commands[2].id)),
        ("widget.created", "TAIL-2", 1, str(commands[3].id)),
        ("widget.deleted", "TAIL-1", 4, str(commands[4].id)),
        ("widget.updated", "TAIL-2", 2, str(commands[5].id)),
    ]
    positions = [position(event["id"]) for event in events]
    assert positions == sorted(set(positions))
    assert events[1]["data"]["price_cents"] == 2
    assert still_following, follower.output
    created, renamed = widget_lines(reader)
    assert created.startswith(events[3]["occurred_at"][:19])
    assert f"widget.created     TAIL-2  v1  command {commands[3].id}  " in created
    assert 'name="Tailed too" price_cents=4' in created
    assert created.endswith(f"[{events[3]['id']}]")
    assert f"widget.updated     TAIL-2  v2  command {commands[5].id}  " in renamed


def test_a_created_key_writes_is_listed_without_itself_and_once_revoked_is_refused(
    env: dict[str, str], tmp_path: Path
) -> None:
    name = f"ops-{uuid.uuid4().hex[:8]}"
    server = Server(env, tmp_path)
    try:
        created = run_cli("keys", "create", name, env=env, cwd=tmp_path)
        key = created.stdout.strip().splitlines()[-1]
        accepted = write(server.url, key, "KEY-1")
        table = run_cli("keys", "list", env=env, cwd=tmp_path)
        listed = run_cli("keys", "list", "--json", env=env, cwd=tmp_path)
        revoked = run_cli("keys", "revoke", name, env=env, cwd=tmp_path)
        attempts = iter(range(1000))
        wait_until(
            lambda: write(server.url, key, f"KEY-R{next(attempts)}").status_code == 401,
            TTL_S + 10,
            "the revoked key to be refused",
        )
        configured = write(server.url, API_KEY, "KEY-2")
    finally:
        server.stop()

    assert created.returncode == 0, created.stderr
    assert key.startswith(KEY_PREFIX)
    assert accepted.status_code == 202, accepted.text
    assert table.returncode == 0, table.stderr
    assert name in table.stdout and digest(key)[:12] in table.stdout
    assert key not in table.stdout + listed.stdout
    [entry] = [entry for entry in json.loads(listed.stdout) if entry["name"] == name]
    assert entry["fingerprint"] == digest(key)[:12]
    assert entry["scopes"] == ["write"]
    assert entry["last_used_at"] is not None and entry["revoked_at"] is None
    assert revoked.returncode == 0, revoked.stderr
    assert f"Key {name!r}" in revoked.stdout and "revoked" in revoked.stdout
    assert configured.status_code == 202


def write(url: str, key: str, sku: str) -> httpx.Response:
    return httpx.post(
        f"{url}/widgets", json={"sku": sku, "name": "Keyed", "price_cents": 1}, headers={"X-API-Key": key}, timeout=10
    )
