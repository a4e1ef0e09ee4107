"""compose.yaml runs the PostgreSQL major version the tests run against."""

from __future__ import annotations

import asyncio
import re

import asyncpg

from tests.backends import ADMIN_URL
from tests.test_compose import SERVICES


def test_postgres_is_the_major_version_the_tests_run_against() -> None:
    async def server_major() -> int:
        connection = await asyncpg.connect(ADMIN_URL)
        try:
            return connection.get_server_version().major
        finally:
            await connection.close()

    image_major = int(re.fullmatch(r"postgres:(\d+)(\.\d+)*(-\w+)?", SERVICES["postgres"]["image"]).group(1))
    assert image_major == asyncio.run(server_major())
