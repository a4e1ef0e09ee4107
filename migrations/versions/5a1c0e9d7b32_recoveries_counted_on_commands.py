"""recoveries counted on commands

Revision ID: 5a1c0e9d7b32
Revises: 2d84d928bb8d
Create Date: 2026-11-28 01:31:00.000000

"""

import warnings

import sqlalchemy as sa
from alembic import op

__all__ = ("downgrade", "upgrade", "schema_upgrades", "schema_downgrades", "data_upgrades", "data_downgrades")

# revision identifiers, used by Alembic.
revision = '5a1c0e9d7b32'
down_revision = '2d84d928bb8d'
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
        batch_op.add_column(sa.Column('recoveries', sa.Integer(), server_default='0', nullable=False))


def schema_downgrades() -> None:
    """schema downgrade migrations go here."""
    with op.batch_alter_table('commands', schema=None) as batch_op:
        batch_op.drop_column('recoveries')


def data_upgrades() -> None:
    """Add any optional data upgrade migrations here!"""

def data_downgrades() -> None:
    """Add any optional data downgrade migrations here!"""
