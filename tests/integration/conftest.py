"""The integration suite: the real PostgreSQL and Redis (fixtures in `tests/backends.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.backends import app, database_url, empty_database, real_settings, redis_prefix

__all__ = ["app", "database_url", "empty_database", "real_settings", "redis_prefix"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(item.path).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.integration)
