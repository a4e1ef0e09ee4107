"""Bringing the database to the newest revision, and saying so only when there was something to do."""

from __future__ import annotations

import anyio
from advanced_alchemy.extensions.litestar import AlembicCommands, SQLAlchemyAsyncConfig
from alembic.script import ScriptDirectory
from sqlalchemy import column, select, table
from sqlalchemy.exc import OperationalError

from widgetry.connections import build_alchemy
from widgetry.settings import Settings


def upgrade_database(settings: Settings) -> None:
    """Migrates to the newest revision, on an engine of its own that the migration environment disposes of: the
    app's engine belongs to the event loop, and migrations run in a thread."""
    AlembicCommands(sqlalchemy_config=build_alchemy(settings)).upgrade(revision="head")


async def is_current(alchemy: SQLAlchemyAsyncConfig) -> bool:
    """Whether the database is at the newest revision, read from Alembic's version table: Alembic's own way (a
    migration context) logs two lines of its own each time, even with nothing to do."""
    newest = ScriptDirectory.from_config(AlembicCommands(sqlalchemy_config=alchemy).config).get_heads()
    versions = table(alchemy.alembic_config.version_table_name, column("version_num"))
    try:
        async with alchemy.get_engine().connect() as connection:
            applied = (await connection.execute(select(versions.c.version_num))).scalars().all()
    except OperationalError:  # no version table yet: a new database
        return False
    return sorted(applied) == sorted(newest)


async def upgrade_if_behind(alchemy: SQLAlchemyAsyncConfig, settings: Settings) -> None:
    if not await is_current(alchemy):
        await anyio.to_thread.run_sync(upgrade_database, settings)
