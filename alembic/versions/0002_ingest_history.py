"""ingest: upvote history, version changes, content hash

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('paper_upvotes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('paper_id', sa.Integer(), nullable=False),
    sa.Column('observed_at', sa.DateTime(), nullable=False),
    sa.Column('upvotes', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['paper_id'], ['papers.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('paper_upvotes', schema=None) as batch_op:
        batch_op.create_index('ix_paper_upvotes_paper_observed', ['paper_id', 'observed_at'], unique=False)

    with op.batch_alter_table('papers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('keywords', sa.JSON(), nullable=False, server_default=sa.text("'[]'")))  # existing rows
        batch_op.add_column(sa.Column('updated_fields', sa.JSON(), nullable=False, server_default=sa.text("'[]'")))  # existing rows
        batch_op.add_column(sa.Column('version_updated_at', sa.DateTime(), nullable=True))

    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.add_column(sa.Column('content_sha256', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.drop_column('content_sha256')

    with op.batch_alter_table('papers', schema=None) as batch_op:
        batch_op.drop_column('version_updated_at')
        batch_op.drop_column('updated_fields')
        batch_op.drop_column('keywords')

    with op.batch_alter_table('paper_upvotes', schema=None) as batch_op:
        batch_op.drop_index('ix_paper_upvotes_paper_observed')

    op.drop_table('paper_upvotes')
