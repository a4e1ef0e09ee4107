from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from litestar import Litestar

from tests import prerequisites
from tests.support import API_KEY, serve
from widgetry.app import create_app
from widgetry.settings import Settings


def pytest_collection_finish(session: pytest.Session) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    prerequisites.check(session.items, reporter.write_line if reporter else print)


@pytest.fixture
def embedded_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The embedded defaults (SQLite file in the working directory, in-process fakeredis and worker)."""
    monkeypatch.chdir(tmp_path)
    return Settings(api_keys=(API_KEY,))


@pytest.fixture
async def app(embedded_settings: Settings) -> Litestar:
    return create_app(embedded_settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as http:
        yield http
