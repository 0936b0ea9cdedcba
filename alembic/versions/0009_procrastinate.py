"""scale-out: procrastinate's job queue and the relays' shared rate buckets, in schema "scale" (PostgreSQL only)

Everything lives in its own schema, so our models' schema (public) stays exactly what the models say
(the migration test compares only the default schema) and a downgrade is one DROP SCHEMA. procrastinate's
own connections find its tables through ``search_path`` (``newsletter.scale.app.conninfo``); its
functions are pinned to the schema here, so that calling ``scale.procrastinate_defer_jobs_v1`` from our
own sessions (enqueueing in the planning transaction) finds its tables and triggers too.

On SQLite: nothing (the embedded default dispatches in process). On PostgreSQL the scale extra
(procrastinate) must be installed: this applies the installed procrastinate's ``schema.sql``; a later
procrastinate release brings its own ``sql/migrations``, applied by a later migration of ours.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "scale"  # newsletter.scale.app.SCHEMA; a migration must not import code that may change later

RELAY_RATE_BUCKETS = f"""
-- One token bucket per relay, shared by every worker (newsletter.scale.ratelimit). UNLOGGED: after a
-- database crash the bucket starts full again, which is what a relay's one-second limit allows anyway.
CREATE UNLOGGED TABLE {SCHEMA}.relay_rate_buckets (
    relay text PRIMARY KEY,
    tokens double precision NOT NULL,
    refilled_at timestamp with time zone NOT NULL
)
"""


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    try:
        from procrastinate.schema import SchemaManager
    except ImportError:
        # The default install has no job queue (NEWSLETTER_DISPATCH=inline): nothing to create. The
        # scale extra applies the schema when it is installed before this migration runs.
        return

    # The raw psycopg connection: its execute() without parameters sends the script as it is (no
    # placeholder parsing) and in alembic's transaction.
    raw = op.get_bind().connection.dbapi_connection
    assert raw is not None
    raw.execute(f"CREATE SCHEMA {SCHEMA}")
    # The script creates its objects unqualified: point search_path at the schema for it, then back.
    previous = raw.execute("SELECT current_setting('search_path')").fetchone()[0]  # type: ignore[index]
    raw.execute(f"SET LOCAL search_path TO {SCHEMA}")
    raw.execute(SchemaManager.get_schema())
    raw.execute("SELECT set_config('search_path', %s, true)", (previous,))
    functions = raw.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
        (SCHEMA,)).fetchall()
    for (signature,) in functions:
        raw.execute(f"ALTER FUNCTION {signature} SET search_path = {SCHEMA}")
    raw.execute(RELAY_RATE_BUCKETS)


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
