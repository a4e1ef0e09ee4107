"""compose.yaml parses, has the services the design names, and runs the commands the README documents.
(The integration suite runs those same commands against the local PostgreSQL and Redis.)"""

from __future__ import annotations

import shlex

import yaml

from tests.support import ROOT

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
README = (ROOT / "README.md").read_text()


def test_compose_has_the_stack_with_health_checks() -> None:
    assert {"postgres", "redis", "migrate", "web", "worker"} <= set(SERVICES)
    for name in ("postgres", "redis", "web", "worker"):
        assert SERVICES[name]["healthcheck"]["test"], name


def test_redis_keeps_an_append_only_file() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"


def test_migrate_runs_once_before_web_and_workers() -> None:
    assert SERVICES["migrate"]["restart"] == "no"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "worker"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert SERVICES[name]["environment"]["WIDGETRY_WORKERS"] == "external"


def test_workers_scale_without_fixed_names_or_ports() -> None:
    assert "container_name" not in SERVICES["worker"]
    assert "ports" not in SERVICES["worker"]


def test_services_run_the_commands_the_readme_documents() -> None:
    for name in ("migrate", "web", "worker"):
        command = shlex.join(SERVICES[name]["command"])
        assert command in README, f"{name}: `{command}` is not in the README"
