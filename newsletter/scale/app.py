"""The procrastinate App, its connection to PostgreSQL, the queue names, and the dispatch check.

procrastinate's tables and functions live in the PostgreSQL schema ``scale`` (migration 0009), so its
connections put that schema first on their ``search_path``; our own SQL names it (``scale.…``).
"""

from __future__ import annotations

import re
from typing import Any

from procrastinate import App, BaseConnector, PsycopgConnector
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

from newsletter.errors import ConfigError
from newsletter.settings import Settings

SCHEMA = "scale"  # alembic/versions/0009_procrastinate.py creates it
NAMESPACE = "newsletter"  # procrastinate prefixes our task names with it
SEND_BATCH = f"{NAMESPACE}:send_batch"
INGEST_SOURCE = f"{NAMESPACE}:ingest_source"
INGEST_QUEUE = "ingest"
QUEUE_NAME_CHARS = 128  # procrastinate_jobs.queue_name is varchar(128)


def dispatch_of(settings: Settings) -> str:
    """``NEWSLETTER_DISPATCH``: ``inline`` (the default: send in the planning process) or ``procrastinate``."""
    return settings.dispatch


def check_dispatch(settings: Settings) -> None:
    """Dispatch through procrastinate needs PostgreSQL: on SQLite, a one-line ConfigError."""
    if dispatch_of(settings) == "procrastinate" and make_url(settings.database_url).get_backend_name() != "postgresql":
        raise ConfigError("NEWSLETTER_DISPATCH=procrastinate needs PostgreSQL (NEWSLETTER_DATABASE_URL=postgresql://…); "
                          "on SQLite use NEWSLETTER_DISPATCH=inline")


def conninfo(database_url: str) -> str:
    """A libpq connection string for ``database_url`` (a SQLAlchemy URL), with the queue's schema first on the path."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ConfigError("the job queue (procrastinate) needs PostgreSQL: NEWSLETTER_DATABASE_URL=postgresql://…")
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return make_conninfo(plain, options=f"-c search_path={SCHEMA},public")


def relay_queue(settings: Settings) -> str:
    """The send queue of the relay these settings send through: one queue per relay, so workers can be given
    a relay's queue, and ``newsletter status`` counts its backlog apart."""
    relay = f"{settings.smtp_host}:{settings.smtp_port}" if settings.email_backend == "smtp" else settings.email_backend
    return ("send:" + re.sub(r"[^A-Za-z0-9._:-]", "_", relay))[:QUEUE_NAME_CHARS]


def make_app(database_url: str | None = None, *, connector: BaseConnector | None = None, **connector_options: Any) -> App:
    """The App with our tasks, on PostgreSQL (``database_url``) or on ``connector`` (tests: ``InMemoryConnector``).

    Nothing connects until the app is opened (``async with app.open_async()``).
    """
    from newsletter.scale.tasks import blueprint

    if connector is None:
        if database_url is None:
            raise ValueError("make_app needs a database URL or a connector")
        connector = PsycopgConnector(conninfo=conninfo(database_url), **connector_options)
    app = App(connector=connector)
    app.add_tasks_from(blueprint(), namespace=NAMESPACE)
    return app


__all__ = ["INGEST_QUEUE", "INGEST_SOURCE", "SCHEMA", "SEND_BATCH", "check_dispatch", "conninfo", "dispatch_of", "make_app",
           "relay_queue"]
