"""On the embedded defaults the database is migrated at start, and only a database that is behind is."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import API_KEY, running
from widgetry.app import create_app
from widgetry.settings import Settings


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def alembic_lines() -> Iterator[list[str]]:
    handler, alembic = Collected(), logging.getLogger("alembic")
    level = alembic.level
    alembic.addHandler(handler)
    alembic.setLevel(logging.INFO)
    try:
        yield handler.messages
    finally:
        alembic.removeHandler(handler)
        alembic.setLevel(level)


async def test_a_start_migrates_a_new_database_and_says_nothing_of_one_already_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alembic_lines: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(api_keys=(API_KEY,))
    async with running(create_app(settings)):
        pass
    first_start = list(alembic_lines)
    async with running(create_app(settings)):
        pass

    assert any(line.startswith("Running upgrade") for line in first_start), first_start
    assert alembic_lines == first_start
