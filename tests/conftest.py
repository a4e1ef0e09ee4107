from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar

from tests import prerequisites
from tests.summary import SUMMARIES
from tests.support import ADMIN_KEY, API_KEY, serve
from widgetry.app import create_app
from widgetry.migrating import upgrade_database
from widgetry.settings import Settings

SQLITE_FILE = "widgetry.db"


SERIAL_GROUP = "faults"
"""The fault tests run one at a time, on one xdist worker: each starts and breaks servers of its own."""
FAULT_TIMEOUT_S = 600
"""A fault run's limit, past the suite's 240 s: one runs thousands of commands through servers of its own, and took
over 240 s on a slow machine whose other core ran the rest of the suite meanwhile (130 s alone)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `pytest -n N --dist loadgroup`, the unit tests are spread over the workers one by one; the tests of a
    module outside them stay together (they share a module's server), and the fault tests stay on one worker."""
    for item in items:
        group = item.nodeid.partition("::")[0]
        if group.startswith("tests/unit/"):
            continue
        if group.startswith("tests/faults/"):
            item.add_marker(pytest.mark.xdist_group(SERIAL_GROUP))
            item.add_marker(pytest.mark.timeout(FAULT_TIMEOUT_S))
        else:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):  # an xdist worker: its controller checks, once (below)
        return
    prerequisites.check((item.nodeid for item in session.items), _reporter(session.config))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    if not getattr(node.config, "_prerequisites_checked", False):
        node.config._prerequisites_checked = True  # noqa: SLF001 - a flag of this run's own on the config
        prerequisites.check(ids, _reporter(node.config))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workeroutput"):  # an xdist worker hands its summary lines to the controller
        session.config.workeroutput["summaries"] = SUMMARIES


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    SUMMARIES.extend(getattr(node, "workeroutput", {}).get("summaries", ()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARIES:
        terminalreporter.section("fault suite summary")
        for line in SUMMARIES:
            terminalreporter.write_line(line)


def _reporter(config: pytest.Config) -> Callable[[str], None]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return reporter.write_line if reporter else print


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database at the newest revision, made once a run: each test starting from a copy of it, the app
    finds nothing to migrate (running the migrations cost each test a tenth of a second of CPU)."""
    path = tmp_path_factory.mktemp("migrated") / SQLITE_FILE
    upgrade_database(Settings(database_url=f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture
def embedded_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_sqlite: Path) -> Settings:
    """The embedded defaults (SQLite file in the working directory, in-process fakeredis and worker), on a database
    already migrated, as a second start finds it."""
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(migrated_sqlite, tmp_path / SQLITE_FILE)
    return Settings(api_keys=(API_KEY,), admin_keys=(ADMIN_KEY,))


@pytest.fixture
async def app(embedded_settings: Settings) -> Litestar:
    return create_app(embedded_settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as http:
        yield http
