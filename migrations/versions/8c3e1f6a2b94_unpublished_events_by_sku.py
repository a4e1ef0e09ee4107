"""unpublished events by sku

Revision ID: 8c3e1f6a2b94
Revises: 5a1c0e9d7b32
Create Date: 2026-11-28 04:40:00.000000

"""

import warnings

import sqlalchemy as sa
from alembic import op

__all__ = ("downgrade", "upgrade", "schema_upgrades", "schema_downgrades", "data_upgrades", "data_downgrades")

# revision identifiers, used by Alembic.
revision = '8c3e1f6a2b94'
down_revision = '5a1c0e9d7b32'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        with op.get_context().autocommit_block():
            schema_upgrades()
            data_upgrades()

def downgrade() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        with op.get_context().autocommit_block():
            data_downgrades()
            schema_downgrades()

def schema_upgrades() -> None:
    """The publish after each job looks up its skus' unpublished events: by sku, so it reads those skus' index
    entries only, not every entry the unpublished-events index keeps until vacuum removes them."""
    op.create_index(
        'ix_events_unpublished_sku',
        'events',
        ['sku', 'id'],
        unique=False,
        postgresql_where=sa.text('stream_id IS NULL'),
        sqlite_where=sa.text('stream_id IS NULL'),
    )


def schema_downgrades() -> None:
    op.drop_index('ix_events_unpublished_sku', table_name='events')


def data_upgrades() -> None:
    """Add any optional data upgrade migrations here!"""

def data_downgrades() -> None:
    """Add any optional data downgrade migrations here!"""
