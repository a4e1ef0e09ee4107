"""A run that needs what the machine lacks says so before any test runs, and how to get it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ROOT, free_port


def test_a_missing_server_is_named_with_its_remedy_before_any_test_runs() -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/integration/test_compose_postgres.py"],
        cwd=ROOT,
        env={**os.environ, "WIDGETRY_TEST_REDIS_URL": dead_redis},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 4, output
    assert "prerequisite: Redis: MISSING" in output
    assert f"cannot reach {dead_redis}" in output
    assert "to get it: start redis-server" in output
    assert "passed" not in output
