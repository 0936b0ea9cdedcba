"""The scale extra installed after ``newsletter init``, on the real local PostgreSQL: migration 0009 then ran
without procrastinate and created no queue; ``newsletter init`` again, a planning run that enqueues, or a
worker's start applies the schema, with a warning, the same as 0009 would have, and once."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from newsletter.db import migrate
from newsletter.db.engine import make_engine
from tests.conftest import FIXTURES

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 90
APPLIED = "the job queue's schema was missing (procrastinate was installed after this database was migrated): applied procrastinate"

CATALOG = text("""
SELECT 'relation ' || c.relname || ' ' || c.relkind::text || c.relpersistence::text FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'scale'
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text || ' ' || coalesce(array_to_string(p.proconfig, ','), '') FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'scale'
UNION ALL
SELECT 'type ' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'scale'
UNION ALL
SELECT 'trigger ' || t.tgname || ' on ' || c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'scale' AND NOT t.tgisinternal
ORDER BY 1
""")


@contextlib.contextmanager
def without_the_scale_extra(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """procrastinate not installed, as far as importing it goes (migration 0009 and ``migrate.upgrade`` ask)."""
    with monkeypatch.context() as hidden:
        hidden.setitem(sys.modules, "procrastinate", None)
        hidden.setitem(sys.modules, "procrastinate.schema", None)
        yield


def catalog(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(CATALOG))


def has_queue(engine: Engine) -> bool:
    with engine.connect() as connection:
        return connection.scalar(text("SELECT to_regnamespace('scale')")) is not None


def applied_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "newsletter.scale.schema" and r.levelname == "WARNING"]


@pytest.fixture
def initialised_before_the_extra(cli, env, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A database `newsletter init` migrated to the latest revision while procrastinate was not installed."""
    env(database_url=postgres_url)
    with without_the_scale_extra(monkeypatch):
        assert cli("init").code == 0
    engine = make_engine(postgres_url)
    assert migrate.current_revision(engine) == migrate.head_revision(engine) and not has_queue(engine)
    yield engine
    engine.dispose()


def test_init_again_applies_the_missing_queue_as_migration_0009_would_and_only_once(
        cli, initialised_before_the_extra: Engine, caplog: pytest.LogCaptureFixture) -> None:
    engine = initialised_before_the_extra
    caplog.set_level(logging.WARNING, logger="newsletter.scale.schema")
    assert cli("init").code == 0
    assert [line.startswith(APPLIED) for line in applied_lines(caplog)] == [True]
    applied = catalog(engine)
    assert "relation procrastinate_jobs rp" in applied and "relation relay_rate_buckets ru" in applied  # ru: unlogged
    assert "function scale.procrastinate_defer_jobs_v1(scale.procrastinate_job_to_defer_v1[]) search_path=scale" in applied

    assert cli("init").code == 0
    assert len(applied_lines(caplog)) == 1, "there now: nothing more to do"

    migrate.downgrade(engine, "0008")  # and the same as the migration makes with procrastinate installed
    migrate.upgrade(engine)
    assert catalog(engine) == applied
    assert len(applied_lines(caplog)) == 1


def test_a_planning_run_applies_the_missing_queue_before_it_enqueues(
        cli, env, initialised_before_the_extra: Engine, caplog: pytest.LogCaptureFixture) -> None:
    env(dispatch="procrastinate", secret_key="test-secret-key-0123456789abcdefghij", from_address="digest@example.org")
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    assert cli("subscribers", "add", "reader@example.org", "--topic", "diffusion models").code == 0
    caplog.set_level(logging.WARNING, logger="newsletter.scale.schema")

    queued = cli("digest")
    assert queued.code == 0, queued.err
    assert "queued 1 send batch for the workers" in queued.out
    assert [line.startswith(APPLIED) for line in applied_lines(caplog)] == [True]
    with initialised_before_the_extra.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM scale.procrastinate_jobs WHERE status = 'todo'")) == 1


def test_a_worker_started_on_a_database_without_the_queue_applies_it_and_sends(
        cli, env, postgres_url: str, initialised_before_the_extra: Engine, smtp_server, tmp_path: Path) -> None:
    values = dict(database_url=postgres_url, dispatch="procrastinate", secret_key="test-secret-key-0123456789abcdefghij",
                  from_address="digest@example.org", email_backend="smtp", smtp_host=smtp_server.host,
                  smtp_port=smtp_server.port, smtp_security="none", smtp_pool_size=1, log_level="WARNING", log_format="json")
    env(**values)
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    assert cli("subscribers", "add", "reader@example.org", "--topic", "diffusion models").code == 0

    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    environ.update({f"NEWSLETTER_{k.upper()}": str(v) for k, v in values.items()})
    log = tmp_path / "worker.log"
    with log.open("wb") as stderr:
        worker = subprocess.Popen([sys.executable, "-m", "newsletter", "worker"], cwd=REPO, env=environ,
                                  stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        started = time.monotonic()
        while not has_queue(initialised_before_the_extra) and time.monotonic() - started < DEADLINE_S and worker.poll() is None:
            time.sleep(0.1)
        assert has_queue(initialised_before_the_extra), log.read_text()[-2000:]
        queued = cli("digest")
        assert "queued 1 send batch for the workers" in queued.out, queued.err
        while not smtp_server.received and time.monotonic() - started < DEADLINE_S and worker.poll() is None:
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert [r.recipients for r in smtp_server.received] == [["reader@example.org"]], log.read_text()[-2000:]
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert [(e["level"], e["logger"]) for e in lines if e["message"].startswith(APPLIED)] == [("warning", "newsletter.scale.schema")]
    assert worker.returncode == 0
