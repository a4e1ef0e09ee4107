"""api keys: stored keys made by `widgetry keys create`

Revision ID: c3f8a1d5e2b7
Revises: 9d4b2e7f1a36
Create Date: 2026-11-28 15:20:00.000000

"""

import warnings

import sqlalchemy as sa
from alembic import op
from advanced_alchemy.types import GUID, DateTimeUTC

__all__ = ("downgrade", "upgrade", "schema_upgrades", "schema_downgrades", "data_upgrades", "data_downgrades")

# revision identifiers, used by Alembic.
revision = 'c3f8a1d5e2b7'
down_revision = '9d4b2e7f1a36'
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
    op.create_table('api_keys',
    sa.Column('id', GUID(length=16), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('created_at', DateTimeUTC(timezone=True), nullable=False),
    sa.Column('last_used_at', DateTimeUTC(timezone=True), nullable=True),
    sa.Column('revoked_at', DateTimeUTC(timezone=True), nullable=True),
    sa.Column('sa_orm_sentinel', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('digest', name=op.f('uq_api_keys_digest')),
    sa.UniqueConstraint('name', name=op.f('uq_api_keys_name'))
    )


def schema_downgrades() -> None:
    """schema downgrade migrations go here."""
    op.drop_table('api_keys')


def data_upgrades() -> None:
    """Add any optional data upgrade migrations here!"""

def data_downgrades() -> None:
    """Add any optional data downgrade migrations here!"""
