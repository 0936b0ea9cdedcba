"""The migrations build exactly the models' schema, both ways, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from newsletter.db import migrate
from newsletter.db.engine import make_engine
from newsletter.db.models import Base

TABLES = {"sources", "papers", "subscribers", "preferences", "deliveries", "delivery_items"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'empty.db'}"


def test_upgrade_downgrade_upgrade_leaves_the_models_schema(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine)
    assert TABLES <= set(inspect(engine).get_table_names())
    migrate.downgrade(engine, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    assert differences == [], f"models and migrations differ; write a migration for: {differences}"
    engine.dispose()


def test_the_models_check_catches_a_missing_migration(empty_database_url: str) -> None:
    """Guard the guard: an index in the models that the database lacks is reported."""
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_papers_first_seen_at"))
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert any(d[0] == "add_index" for d in differences)
    engine.dispose()


def test_the_migrations_build_each_index_as_the_models_declare_it(empty_database_url: str, tmp_path: Path) -> None:
    """compare_metadata does not compare a partial index's WHERE: the database's own definitions of the
    migrated indexes must equal those of the models' ``create_all``, predicates included."""
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine)
    if engine.dialect.name == "sqlite":
        declared = make_engine(f"sqlite:///{tmp_path / 'models.db'}")
        Base.metadata.create_all(declared)
        migrated, wanted = sqlite_indexes(engine), sqlite_indexes(declared)
        declared.dispose()
    else:  # the models' tables in a schema of their own, beside the migrated ones in public
        with engine.begin() as connection:
            connection.execute(text("CREATE SCHEMA models"))
            Base.metadata.create_all(connection.execution_options(schema_translate_map={None: "models"}))
        migrated, wanted = postgresql_indexes(engine, schema="public"), postgresql_indexes(engine, schema="models")
        del migrated["alembic_version_pkc"]
    assert "ix_deliveries_leased_by" in wanted
    assert migrated == wanted
    engine.dispose()


def sqlite_indexes(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        return dict(connection.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")).all())


def postgresql_indexes(engine: Engine, *, schema: str) -> dict[str, str]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = :schema"), {"schema": schema})
        return {name: definition.replace(f" {schema}.", " ") for name, definition in rows}


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() >= 5000
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()
