from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import API_KEY, Server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`widgetry run` on the embedded defaults, as a user starts it."""
    live = Server({"WIDGETRY_API_KEYS": API_KEY}, tmp_path_factory.mktemp("e2e"))
    yield live
    live.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
