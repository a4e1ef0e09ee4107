"""`widgetry` as a newcomer meets it on the embedded defaults: its help, its output, and what it leaves unsaid."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec

from tests.support import API_KEY, AUTH, Process, Server, run_cli, wait_until


def test_help_speaks_of_widgetry_not_of_finding_an_app(tmp_path: Path) -> None:
    shown = run_cli("--help", cwd=tmp_path)

    assert shown.returncode == 0, shown.stderr
    assert "widgetry: a widget catalogue whose writes are commands." in shown.stdout
    for command in ("run", "workers", "database", "commands", "events", "keys", "bench"):
        assert f" {command} " in shown.stdout
    for litestar in ("app.py", "--app", "LITESTAR_APP", "Litestar CLI"):
        assert litestar not in shown.stdout


def test_commands_that_do_not_migrate_say_nothing_of_migrations(tmp_path: Path) -> None:
    first = run_cli("keys", "list", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Running upgrade" in first.stderr  # a new SQLite file is migrated, and that is told

    again = run_cli("keys", "list", cwd=tmp_path)

    assert again.returncode == 0, again.stderr
    assert again.stdout == "No stored keys.\n"
    assert again.stderr == ""


def test_json_output_is_one_document_ending_with_a_newline(tmp_path: Path) -> None:
    created = run_cli("keys", "create", "ci", cwd=tmp_path)
    assert created.returncode == 0, created.stderr

    for args in (("keys", "list", "--json"), ("commands", "failed", "--json")):
        shown = run_cli(*args, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.endswith("]\n"), args
        assert isinstance(msgspec.json.decode(shown.stdout), list)
    assert [key["name"] for key in msgspec.json.decode(run_cli("keys", "list", "--json", cwd=tmp_path).stdout)] == [
        "ci"
    ]


def test_events_tail_follows_the_stream_without_loading_the_application(tmp_path: Path) -> None:
    server = Server({"WIDGETRY_API_KEYS": API_KEY}, tmp_path)
    # Settings the application refuses to start with: the tail needs only the service's URL.
    unloadable = {"WIDGETRY_RECOVERY_INTERVAL_SECONDS": "7"}
    tail = Process(["events", "tail", "--url", server.url], unloadable, tmp_path, "tail")
    try:

        def following() -> bool:
            if tail.popen.poll() is not None:
                raise RuntimeError(f"the tail exited with {tail.popen.returncode}:\n{tail.output}")
            return "widgetry_sse_subscribers 1.0" in httpx.get(f"{server.url}/metrics").text

        wait_until(following, 30, "the tail to connect")
        created = httpx.post(
            f"{server.url}/widgets", json={"sku": "TAIL-1", "name": "Tailed", "price_cents": 5}, headers=AUTH
        )
        assert created.status_code == 202, created.text
        command_id = created.json()["id"]
        wait_until(lambda: command_id in tail.output, 15, f"the tail to show the event\n{tail.output}")
    finally:
        tail.stop()
        server.stop()

    [line] = [line for line in tail.output.splitlines() if command_id in line]
    assert "widget.created" in line
    assert "TAIL-1" in line


def test_the_bench_prints_its_report_and_no_line_per_request(tmp_path: Path) -> None:
    server = Server({"WIDGETRY_API_KEYS": API_KEY}, tmp_path)
    try:
        bench = run_cli("bench", "--url", server.url, "--api-key", API_KEY, "--quick", "--no-baselines", cwd=tmp_path)
    finally:
        server.stop()

    assert bench.returncode == 0, bench.stdout + bench.stderr
    assert "HTTP Request" not in bench.stdout + bench.stderr
    assert "accepted" in bench.stdout
