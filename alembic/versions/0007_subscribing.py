"""subscribing: confirmation nonces and pending changes, subscription events, forgotten addresses, the archive's trending

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from newsletter.db.migrate import sqlite_foreign_keys_off

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('subscription_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('subscriber_id', sa.Integer(), nullable=True),
    sa.Column('address_hash', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('via', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['subscriber_id'], ['subscribers.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('subscription_events', schema=None) as batch_op:
        batch_op.create_index('ix_subscription_events_address_kind_at', ['address_hash', 'kind', 'at'], unique=False)
        batch_op.create_index(batch_op.f('ix_subscription_events_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_subscription_events_subscriber_id'), ['subscriber_id'], unique=False)

    op.create_table('forgotten_addresses',
    sa.Column('address_hash', sa.String(length=64), nullable=False),
    sa.Column('forgotten_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('address_hash')
    )
    with op.batch_alter_table('subscribers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token_nonce', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('pending_change', sa.JSON(), nullable=True))

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('trending_ids', sa.JSON(), nullable=True))
        batch_op.create_index('ix_deliveries_message_id', ['message_id'], unique=False)


def downgrade() -> None:
    with sqlite_foreign_keys_off():
        _downgrade()


def _downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_message_id')
        batch_op.drop_column('trending_ids')

    with op.batch_alter_table('subscribers', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_column('pending_change')
        batch_op.drop_column('token_nonce')

    op.drop_table('forgotten_addresses')
    with op.batch_alter_table('subscription_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_subscription_events_subscriber_id'))
        batch_op.drop_index(batch_op.f('ix_subscription_events_at'))
        batch_op.drop_index('ix_subscription_events_address_kind_at')
    op.drop_table('subscription_events')
