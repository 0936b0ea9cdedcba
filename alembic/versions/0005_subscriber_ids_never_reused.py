"""subscribers: ids never reused (SQLite AUTOINCREMENT)

Without AUTOINCREMENT, SQLite hands the highest id out again once its row is deleted, so a link
in an email to a removed subscriber acted for the next one to sign up. SQLite cannot add
AUTOINCREMENT to a table in place: the table is rebuilt (batch mode). PostgreSQL's sequences never
go back, so there is nothing to do there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


@contextmanager
def foreign_keys_off() -> Iterator[None]:
    """Rebuilding drops the old table, and with foreign keys on SQLite's DROP TABLE first deletes
    every row, cascading to preferences, deliveries and feedback. The pragma only takes effect
    outside a transaction, hence the autocommit blocks around the (transactional) rebuild."""
    with op.get_context().autocommit_block():
        op.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
        if op.get_context().as_sql:  # offline (--sql): nothing to check
            return
        broken = op.get_bind().exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"rebuilding subscribers left rows without their subscriber: {broken[:5]}")
    finally:
        with op.get_context().autocommit_block():
            op.execute("PRAGMA foreign_keys=ON")


def rebuild_subscribers(*, autoincrement: bool) -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    with foreign_keys_off(), op.batch_alter_table(
            'subscribers', recreate='always', table_kwargs={'sqlite_autoincrement': autoincrement}):
        pass


def upgrade() -> None:
    rebuild_subscribers(autoincrement=True)


def downgrade() -> None:
    rebuild_subscribers(autoincrement=False)
