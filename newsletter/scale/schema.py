"""The job queue's schema in PostgreSQL (``scale``): procrastinate's tables and functions, and the relays' rate buckets.

Migration 0009 creates it, if procrastinate is installed when the migration runs. Installed later
(``pip install '.[scale]'`` after ``newsletter init``), the database is at the latest revision and has
no queue: ``ensure_queue_schema`` then applies the installed procrastinate's schema, as 0009 would
have, and says so in a warning. ``newsletter init`` (``db.migrate.upgrade``), a worker's start and
every enqueue call it; when the schema is there it costs one query. Processes that find it missing
at the same moment take turns on an advisory lock: one applies it, the others find it applied.

The steps are migration 0009's, repeated here rather than imported by it (a migration must not change
with later code); ``tests/scale/test_queue_schema.py`` holds the two to the same result.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Connection, Engine, text

from newsletter.errors import ConfigError
from newsletter.scale.app import SCHEMA

log = logging.getLogger(__name__)

APPLY_LOCK = 0x6E6577730009  # pg_advisory_xact_lock key: "news", migration 0009; held while the schema is applied

QUEUE_PRESENT = text(f"SELECT to_regclass('{SCHEMA}.procrastinate_jobs') IS NOT NULL "
                     f"AND to_regclass('{SCHEMA}.relay_rate_buckets') IS NOT NULL")
RELAY_RATE_BUCKETS = f"""
CREATE UNLOGGED TABLE IF NOT EXISTS {SCHEMA}.relay_rate_buckets (
    relay text PRIMARY KEY,
    tokens double precision NOT NULL,
    refilled_at timestamp with time zone NOT NULL
)
"""


def has_queue_schema(connection: Connection) -> bool:
    return bool(connection.scalar(QUEUE_PRESENT))


def ensure_queue_schema(engine: Engine) -> bool:
    """Apply the queue's schema to this PostgreSQL database if it lacks it; True when it did.

    Raises ConfigError if the database is not at the latest revision (``newsletter init`` migrates it and
    applies the queue in one go).
    """
    with engine.connect() as connection:
        if has_queue_schema(connection):
            return False
    _require_latest_revision(engine)
    from procrastinate import __version__

    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPLY_LOCK})
        if has_queue_schema(connection):  # another process applied it while this one waited
            return False
        raw = connection.connection.dbapi_connection
        assert raw is not None
        apply_queue_schema(raw)
    log.warning("the job queue's schema was missing (procrastinate was installed after this database was migrated): "
                "applied procrastinate %s's schema to schema %s", __version__, SCHEMA)
    return True


def apply_queue_schema(raw: Any) -> None:
    """Migration 0009's steps, on a raw psycopg connection in a transaction; each one skipped if already done."""
    from procrastinate.schema import SchemaManager

    raw.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    if raw.execute(f"SELECT to_regclass('{SCHEMA}.procrastinate_jobs')").fetchone()[0] is None:
        # The script creates its objects unqualified (and its execute() without parameters sends it as it is).
        previous = raw.execute("SELECT current_setting('search_path')").fetchone()[0]
        raw.execute(f"SET LOCAL search_path TO {SCHEMA}")
        raw.execute(SchemaManager.get_schema())
        raw.execute("SELECT set_config('search_path', %s, true)", (previous,))
        # Pinned to the schema, so that our own sessions' calls (enqueueing in the planning transaction) find its tables.
        functions = raw.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
            (SCHEMA,)).fetchall()
        for (signature,) in functions:
            raw.execute(f"ALTER FUNCTION {signature} SET search_path = {SCHEMA}")
    raw.execute(RELAY_RATE_BUCKETS)


def _require_latest_revision(engine: Engine) -> None:
    from newsletter.db import migrate

    current, head = migrate.current_revision(engine), migrate.head_revision(engine)
    if current != head:
        raise ConfigError(f"the database is at schema {current or 'none'}, not {head}: run `newsletter init` "
                          "(it migrates the database and applies the job queue's schema)")


__all__ = ["apply_queue_schema", "ensure_queue_schema", "has_queue_schema"]
