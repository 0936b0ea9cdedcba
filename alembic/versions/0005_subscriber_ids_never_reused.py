"""subscribers: ids never reused (SQLite AUTOINCREMENT)

Without AUTOINCREMENT, SQLite hands the highest id out again once its row is deleted, so a link
in an email to a removed subscriber acted for the next one to sign up. SQLite cannot add
AUTOINCREMENT to a table in place: the table is rebuilt (batch mode). PostgreSQL's sequences never
go back, so there is nothing to do there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""
from collections.abc import Sequence

from alembic import op
from newsletter.db.migrate import sqlite_foreign_keys_off

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def rebuild_subscribers(*, autoincrement: bool) -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    with sqlite_foreign_keys_off(), op.batch_alter_table(
            'subscribers', recreate='always', table_kwargs={'sqlite_autoincrement': autoincrement}):
        pass


def upgrade() -> None:
    rebuild_subscribers(autoincrement=True)


def downgrade() -> None:
    rebuild_subscribers(autoincrement=False)
