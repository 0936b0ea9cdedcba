"""daemon: schedules (send minute, weekday, next send moment), delivery leases, heartbeats, source health

Adding columns is done in place on SQLite; the downgrade rebuilds tables, with foreign keys off
(see 0005: a rebuild with them on would cascade-delete every subscriber's preferences).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from newsletter.db.migrate import sqlite_foreign_keys_off

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('daemon_heartbeats',
    sa.Column('id', sa.String(length=100), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('beat_at', sa.DateTime(), nullable=False),
    sa.Column('stopped_at', sa.DateTime(), nullable=True),
    sa.Column('jobs', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('send_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('leased_by', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(), nullable=True))
        batch_op.create_index('ix_deliveries_status_next_attempt_at', ['status', 'next_attempt_at'], unique=False)

    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.add_column(sa.Column('consecutive_failures', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('last_success_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('last_new', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('last_note', sa.String(length=200), nullable=True))

    with op.batch_alter_table('subscribers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('send_minute', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('send_weekday', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('next_send_at', sa.DateTime(), nullable=True))
        batch_op.create_index('ix_subscribers_status_next_send_at', ['status', 'next_send_at'], unique=False)



def downgrade() -> None:
    with sqlite_foreign_keys_off():
        _downgrade()


def _downgrade() -> None:
    with op.batch_alter_table('subscribers', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_index('ix_subscribers_status_next_send_at')
        batch_op.drop_column('next_send_at')
        batch_op.drop_column('send_weekday')
        batch_op.drop_column('send_minute')

    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.drop_column('last_note')
        batch_op.drop_column('last_new')
        batch_op.drop_column('last_success_at')
        batch_op.drop_column('consecutive_failures')

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_status_next_attempt_at')
        batch_op.drop_column('lease_until')
        batch_op.drop_column('leased_by')
        batch_op.drop_column('send_at')

    op.drop_table('daemon_heartbeats')
