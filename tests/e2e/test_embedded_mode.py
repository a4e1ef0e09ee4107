"""The embedded defaults are a real way to run widgetry: idle when idle, and nothing lost across a restart."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx

from tests.support import API_KEY, AUTH, WAIT, Server, wait_until

IDLE_WINDOW_S = 10
IDLE_CPU_LIMIT = 0.05


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used (Linux `/proc`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_server_uses_under_five_percent_of_a_core(tmp_path: Path) -> None:
    server = Server({"WIDGETRY_API_KEYS": API_KEY}, tmp_path)
    try:
        with httpx.Client(base_url=server.url, headers=AUTH | WAIT) as client:
            assert client.post("/widgets", json={"sku": "IDLE", "name": "x", "price_cents": 1}).status_code == 200
        before = cpu_seconds(server.popen.pid)
        time.sleep(IDLE_WINDOW_S)  # the measurement window itself, not a wait for a condition
        used = cpu_seconds(server.popen.pid) - before
    finally:
        server.stop()

    print(f"idle CPU: {used:.3f}s over {IDLE_WINDOW_S}s = {used / IDLE_WINDOW_S:.1%} of a core")
    assert used / IDLE_WINDOW_S < IDLE_CPU_LIMIT


def test_without_keys_a_development_key_is_generated_printed_and_accepted(tmp_path: Path) -> None:
    server = Server({"WIDGETRY_API_KEYS": ""}, tmp_path)
    try:
        printed = re.search(r"development API key: (\S+)", server.output)
        assert printed is not None, server.output
        with httpx.Client(base_url=server.url) as client:
            body = {"sku": "DEV", "name": "x", "price_cents": 1}
            assert client.post("/widgets", json=body, headers={"X-API-Key": "guess"}).status_code == 401
            assert client.post("/widgets", json=body, headers={"X-API-Key": printed[1]}).status_code == 202
    finally:
        server.stop()


def test_a_restart_keeps_widgets_and_finishes_commands_accepted_before_it(tmp_path: Path) -> None:
    env = {"WIDGETRY_API_KEYS": API_KEY}
    first = Server(env, tmp_path, "first")
    with httpx.Client(base_url=first.url, headers=AUTH | WAIT) as client:
        assert client.post("/widgets", json={"sku": "KEEP", "name": "Kept", "price_cents": 1}).status_code == 200
    first.stop()
    assert "Application shutdown complete" in first.output

    # No worker in this run: commands are recorded and queued on the in-process queue, which dies with the process.
    second = Server(env | {"WIDGETRY_WORKERS": "external"}, tmp_path, "second")
    with httpx.Client(base_url=second.url, headers=AUTH) as client:
        created = client.post("/widgets", json={"sku": "LATE", "name": "Late", "price_cents": 2})
        patched = client.patch("/widgets/KEEP", json={"price_cents": 3})
        assert (created.status_code, patched.status_code) == (202, 202)
        assert client.get(created.headers["location"]).json()["status"] == "accepted"
    second.stop()
    assert "Application shutdown complete" in second.output

    third = Server(env, tmp_path, "third")
    try:
        with httpx.Client(base_url=third.url) as client:
            wait_until(
                lambda: client.get(patched.headers["location"]).json()["status"] == "succeeded",
                15,
                "the command accepted before the restart to finish",
            )
            assert client.get(created.headers["location"]).json()["status"] == "succeeded"
            kept = client.get("/widgets/KEEP").json()
            late = client.get("/widgets/LATE").json()
    finally:
        third.stop()

    assert (kept["name"], kept["price_cents"], kept["version"]) == ("Kept", 3, 2)
    assert (late["name"], late["price_cents"]) == ("Late", 2)
