"""`widgetry bench --quick`, run as CI runs it: a subprocess that starts the stack itself (on this run's PostgreSQL
database and Redis, and on the embedded defaults), loads it, runs the baselines and writes its JSON report.
Timing is never asserted: only that every command was accepted, completed and seen by every subscriber."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.backends import REDIS_URL
from tests.unit.test_bench_report import REQUIRED_KEYS
from widgetry.bench.report import dig

QUICK_TIMEOUT_S = 120
POSITIVE = (
    "e2e.commands_per_s",
    "e2e.accepted_per_s",
    "e2e.latency_ms.p50",
    "e2e.latency_ms.max",
    "post_to_202_ms.p50",
    "post_to_202_ms.max",
    "sse.deliveries_per_s",
    "rss_mb.web",
    "rss_mb.workers",
    "baselines.raw_saq.jobs_per_s",
    "baselines.direct.commands_per_s",
    "ratios.e2e_vs_raw_saq",
    "ratios.e2e_vs_direct",
)


def bench(cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`python -m widgetry bench --quick --json out.json` with only the given settings."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("WIDGETRY_") and name not in ("DATABASE_URL", "REDIS_URL")
    }
    out = cwd / "out.json"
    finished = subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "widgetry", "bench", "--quick", "--json", str(out)],
        env=environ | {"COLUMNS": "240", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT_S,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished, json.loads(out.read_text())


def assert_every_command_seen_by_every_subscriber(report: dict[str, Any]) -> None:
    assert report["commands"] == 600
    assert report["accepted"] == report["commands"]
    assert (report["lost"], report["failed"], report["errors"]) == (0, 0, {})
    assert report["sse"]["subscribers"] == 2
    assert report["sse"]["deliveries"] == report["accepted"] * report["sse"]["subscribers"]
    assert report["e2e"]["latency_ms"]["count"] == report["sse"]["deliveries"]
    assert [key for key in REQUIRED_KEYS if dig(report, key) is None] == []


def test_a_quick_bench_on_postgresql_and_redis_completes_every_command(database_url: str, tmp_path: Path) -> None:
    finished, report = bench(tmp_path, {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL})

    assert report["mode"] == "spawned"
    assert_every_command_seen_by_every_subscriber(report)
    assert [key for key in POSITIVE if not dig(report, key) > 0] == []
    assert report["baselines"]["raw_saq"]["backend"] == "Redis"
    assert report["baselines"]["direct"]["database"] == "postgresql"
    assert "lost" in finished.stdout and "e2e / raw SAQ" in finished.stdout


def test_a_quick_bench_on_the_embedded_defaults_completes_every_command(tmp_path: Path) -> None:
    _, report = bench(tmp_path, {})

    assert report["mode"] == "embedded"
    assert_every_command_seen_by_every_subscriber(report)
    assert [key for key in POSITIVE if not dig(report, key) > 0] == []
    assert report["baselines"]["raw_saq"]["backend"].startswith("fakeredis")
    assert report["baselines"]["direct"]["database"].startswith("SQLite")
    assert not list(tmp_path.glob("*.db")), "the embedded stack works in a directory of its own"
