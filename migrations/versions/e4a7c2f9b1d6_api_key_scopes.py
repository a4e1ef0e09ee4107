"""api key scopes: what each stored key may do (`write`, `admin`)

Revision ID: e4a7c2f9b1d6
Revises: c3f8a1d5e2b7
Create Date: 2026-11-30 09:10:00.000000

"""

import warnings

import sqlalchemy as sa
from alembic import op

__all__ = ("downgrade", "upgrade", "schema_upgrades", "schema_downgrades", "data_upgrades", "data_downgrades")

# revision identifiers, used by Alembic.
revision = 'e4a7c2f9b1d6'
down_revision = 'c3f8a1d5e2b7'
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
    # Keys made before scopes existed were accepted on writes: they keep exactly that.
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scopes', sa.String(length=100), server_default='write', nullable=False))


def schema_downgrades() -> None:
    """schema downgrade migrations go here."""
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('scopes')


def data_upgrades() -> None:
    """Add any optional data upgrade migrations here!"""

def data_downgrades() -> None:
    """Add any optional data downgrade migrations here!"""
