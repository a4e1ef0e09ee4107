"""imports: rows as child commands, results on commands

Revision ID: 9d4b2e7f1a36
Revises: 8c3e1f6a2b94
Create Date: 2026-11-28 13:40:00.000000

"""

import warnings

import sqlalchemy as sa
from alembic import op
from advanced_alchemy.types import GUID, JsonB

__all__ = ("downgrade", "upgrade", "schema_upgrades", "schema_downgrades", "data_upgrades", "data_downgrades")

# revision identifiers, used by Alembic.
revision = '9d4b2e7f1a36'
down_revision = '8c3e1f6a2b94'
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
    """schema upgrade migrations go here."""
    with op.batch_alter_table('commands', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_id', GUID(length=16), nullable=True))
        batch_op.add_column(sa.Column('result', JsonB, nullable=True))
        batch_op.create_index('ix_commands_parent_id', ['parent_id'], unique=False)


def schema_downgrades() -> None:
    """schema downgrade migrations go here."""
    with op.batch_alter_table('commands', schema=None) as batch_op:
        batch_op.drop_index('ix_commands_parent_id')
        batch_op.drop_column('result')
        batch_op.drop_column('parent_id')


def data_upgrades() -> None:
    """Add any optional data upgrade migrations here!"""

def data_downgrades() -> None:
    """Add any optional data downgrade migrations here!"""
