"""The unit of work: a session whose transaction the caller (a request, a job, an operator's command) owns.

Services read, change and flush; they never commit or roll back. Whoever calls them decides what one transaction
holds, so two service calls can share one, and a job's retry policy lives with the job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from advanced_alchemy.config import SQLAlchemyAsyncConfig
    from sqlalchemy.ext.asyncio import AsyncSession


@asynccontextmanager
async def unit_of_work(alchemy: SQLAlchemyAsyncConfig) -> AsyncIterator[AsyncSession]:
    """A session in a transaction that commits when the block ends, and rolls back if it raises."""
    async with alchemy.get_session() as session, session.begin():
        yield session
