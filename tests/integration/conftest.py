"""The integration suite: the real PostgreSQL and Redis (fixtures in `tests/backends.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.backends import REDIS_URL, app, database_url, empty_database, real_settings, redis_prefix
from tests.support import API_KEY

__all__ = ["app", "database_url", "empty_database", "real_settings", "redis_prefix"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(item.path).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def real_env(empty_database: str, redis_prefix: str) -> dict[str, str]:
    """The environment of a `widgetry` process on this run's database and this test's Redis prefix."""
    return {
        "DATABASE_URL": empty_database,
        "REDIS_URL": REDIS_URL,
        "WIDGETRY_REDIS_PREFIX": redis_prefix,
        "WIDGETRY_API_KEYS": API_KEY,
    }


@pytest.fixture
def external_env(real_env: dict[str, str]) -> dict[str, str]:
    """The same, for a deployment with external workers."""
    return real_env | {"WIDGETRY_WORKERS": "external"}
