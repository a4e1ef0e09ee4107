"""compose.yaml parses, has the services the design names, and runs the commands the docs document.
(The integration suite runs those same commands against the local PostgreSQL and Redis.)"""

from __future__ import annotations

import re
import shlex

import yaml

from tests.support import ROOT

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
WIDGETRY_SERVICES = ("migrate", "web", "worker")
DOCS = "\n".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


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


def test_services_run_the_commands_the_docs_document() -> None:
    for name in WIDGETRY_SERVICES:
        command = shlex.join(SERVICES[name]["command"])
        assert command in DOCS, f"{name}: `{command}` is in neither the README nor docs/"


def test_one_image_is_built_once_and_run_by_every_widgetry_service() -> None:
    images = {SERVICES[name]["image"] for name in WIDGETRY_SERVICES}
    builders = [name for name in SERVICES if "build" in SERVICES[name]]
    assert len(images) == 1
    assert builders == ["migrate"]


def test_there_is_no_default_key_and_the_api_is_published_on_loopback_unless_asked() -> None:
    keys = SERVICES["web"]["environment"]["WIDGETRY_API_KEYS"]
    assert re.fullmatch(r"\$\{WIDGETRY_API_KEYS:\?[^}]+\}", keys), keys
    (published,) = SERVICES["web"]["ports"]
    assert published.startswith("${WIDGETRY_BIND:-127.0.0.1}:"), published


def test_the_build_context_leaves_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "*.db", ".hypothesis", ".env"} <= ignored
