"""The fault suite: the guarantees of DESIGN.md, proven by breaking things for real, on PostgreSQL and Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.backends import app, database_url, empty_database, real_settings, redis_prefix

__all__ = ["app", "database_url", "empty_database", "real_settings", "redis_prefix"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(item.path).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.faults)
