"""Alembic, driven from code: ``newsletter init`` and the tests call these, not the alembic CLI."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from newsletter.paths import resource_dir

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported where it is used: every command checks the schema's revision, and importing all of
# alembic for that cost a tenth of a second of each command's start.


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resource_dir("alembic")))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to ``revision``. At the head, on PostgreSQL with the scale extra installed, the job queue's schema
    too, if migration 0009 ran before the extra was installed and so created none (``scale.schema``)."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)
    if revision == "head" and engine.dialect.name == "postgresql" and importlib.util.find_spec("procrastinate") is not None:
        from newsletter.scale.schema import ensure_queue_schema

        ensure_queue_schema(engine)


def downgrade(engine: Engine, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


@contextmanager
def sqlite_foreign_keys_off() -> Iterator[None]:
    """For a migration that rebuilds a table on SQLite (batch mode): foreign keys off around it.

    Rebuilding drops the old table, and with foreign keys on SQLite's DROP TABLE first deletes every
    row, cascading to preferences, deliveries and feedback. The pragma only takes effect outside a
    transaction, hence the autocommit blocks around the (transactional) rebuild. Elsewhere: nothing.
    """
    from alembic import op

    if op.get_context().dialect.name != "sqlite":
        yield
        return
    with op.get_context().autocommit_block():
        op.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
        if op.get_context().as_sql:  # offline (--sql): nothing to check
            return
        broken = op.get_bind().exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"rebuilding a table left rows without their parent: {broken[:5]}")
    finally:
        with op.get_context().autocommit_block():
            op.execute("PRAGMA foreign_keys=ON")


__all__ = ["sqlite_foreign_keys_off", "alembic_config", "upgrade", "downgrade", "current_revision", "head_revision"]
