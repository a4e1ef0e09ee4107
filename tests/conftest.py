from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from litestar import Litestar

from tests import prerequisites
from tests.support import ADMIN_KEY, API_KEY, serve
from widgetry.app import create_app
from widgetry.migrating import upgrade_database
from widgetry.settings import Settings

SQLITE_FILE = "widgetry.db"


def pytest_collection_finish(session: pytest.Session) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    prerequisites.check(session.items, reporter.write_line if reporter else print)


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
