"""Enqueueing jobs in the caller's transaction: the rows a job acts on and the job commit together, or neither.

Jobs are written through the SQLAlchemy session with procrastinate's own SQL function
(``scale.procrastinate_defer_jobs_v1``, one call for all jobs), not through a procrastinate App with
its own connection: a planner that crashes before its commit leaves neither delivery rows nor jobs,
and one that commits leaves both. The insert's trigger NOTIFYs the workers at commit.

Send batches hold about ``SEND_BATCH_SIZE`` deliveries of one issue date, so a worker renders that
day's shared parts once per batch. Ingest jobs name their source (URL and kind: the database's sources
and NEWSLETTER_SOURCES alike) and carry its locks.

What a run enqueues through (``PlannedBatches``, ``enqueue_unowned``, ``enqueue_ingest``) first makes sure
the queue's schema is there (``scale.schema``: procrastinate installed after ``newsletter init``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, and_, select, text
from sqlalchemy.orm import Session

from newsletter.db.ledger import SENDABLE, due_filter, lease_free
from newsletter.db.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus
from newsletter.db.repo import IN_CHUNK
from newsletter.ingest.sources import SourceSpec
from newsletter.scale.app import INGEST_QUEUE, INGEST_SOURCE, SEND_BATCH
from newsletter.scale.schema import ensure_queue_schema

SEND_BATCH_SIZE = 500  # deliveries per job: deliver.CLAIM_BATCH, one claim and one render pass per job

DEFER_JOBS = text("""
SELECT scale.procrastinate_defer_jobs_v1(ARRAY(
    SELECT ROW(job.queue_name, job.task_name, job.priority, job.lock, job.queueing_lock, job.args,
               job.scheduled_at)::scale.procrastinate_job_to_defer_v1
    FROM jsonb_to_recordset(CAST(:jobs AS jsonb)) AS job(queue_name varchar, task_name varchar, priority integer, lock text,
                                                         queueing_lock text, args jsonb, scheduled_at timestamptz)))
""")
# Ingest jobs carry a queueing lock (one waiting ingest per source is enough); procrastinate's function
# would fail the whole transaction on a second one, so they are inserted directly and a duplicate is
# skipped. The same columns and triggers as the function's INSERT.
DEFER_INGEST = text("""
INSERT INTO scale.procrastinate_jobs (queue_name, task_name, lock, queueing_lock, args)
SELECT :queue, :task, job.lock, job.queueing_lock, job.args
FROM ROWS FROM (jsonb_to_recordset(CAST(:jobs AS jsonb)) AS (lock text, queueing_lock text, args jsonb)) WITH ORDINALITY AS job
ORDER BY job.ordinality
ON CONFLICT DO NOTHING
RETURNING id
""")
OWNED_DELIVERIES = text("""
SELECT DISTINCT CAST(owned.id AS bigint) FROM scale.procrastinate_jobs AS job,
       jsonb_array_elements_text(job.args -> 'delivery_ids') AS owned(id)
WHERE job.task_name = :task AND job.status IN ('todo', 'doing')
""")


def defer_jobs(session: Session, *, jobs: Sequence[dict[str, Any]]) -> list[int]:
    """Insert ``jobs`` (each: queue_name, task_name, args; optional priority, lock, queueing_lock, scheduled_at)."""
    if not jobs:
        return []
    rows = [{"priority": 0, "lock": None, "queueing_lock": None, "scheduled_at": None, **job} for job in jobs]
    return list(session.execute(DEFER_JOBS, {"jobs": json.dumps(rows, default=str)}).scalar_one() or [])


def enqueue_due_batches(session: Session, *, deliveries: Iterable[tuple[int, dt.date]], queue: str,
                        batch_size: int = SEND_BATCH_SIZE) -> int:
    """Enqueue ``send_batch`` jobs for (delivery id, issue date) pairs: ``batch_size`` ids of one date a job.
    Returns the number of jobs."""
    by_date: dict[dt.date, list[int]] = defaultdict(list)
    for delivery_id, issue_date in deliveries:
        by_date[issue_date].append(delivery_id)
    jobs = []
    for issue_date in sorted(by_date):
        ids = sorted(by_date[issue_date])
        jobs += [{"queue_name": queue, "task_name": SEND_BATCH, "args": {"delivery_ids": ids[start : start + batch_size]}}
                 for start in range(0, len(ids), batch_size)]
    return len(defer_jobs(session, jobs=jobs))


def enqueue_planned(session: Session, *, issues: Collection[tuple[int, dt.date]], queue: str) -> int:
    """Enqueue the pending deliveries just recorded for ``issues`` ((subscriber id, issue date), as
    ``ledger.record_deliveries`` returns them); quiet days and missed issues have nothing to send."""
    wanted = set(issues)
    subscriber_ids = sorted({subscriber_id for subscriber_id, _ in wanted})
    found: list[tuple[int, dt.date]] = []
    for start in range(0, len(subscriber_ids), IN_CHUNK):
        rows = session.execute(
            select(Delivery.id, Delivery.subscriber_id, Delivery.issue_date)
            .where(Delivery.subscriber_id.in_(subscriber_ids[start : start + IN_CHUNK]), Delivery.status == DeliveryStatus.PENDING))
        found += [(delivery_id, issue_date) for delivery_id, subscriber_id, issue_date in rows if (subscriber_id, issue_date) in wanted]
    return enqueue_due_batches(session, deliveries=found, queue=queue)


class PlannedBatches:
    """``plan_due``/``plan_now``'s ``after_record`` for the job queue: enqueues the send batches of what each
    planning transaction recorded, in that transaction, onto the relay's queue; ``jobs`` counts them."""

    def __init__(self, queue: str) -> None:
        self.queue, self.jobs = queue, 0
        self._queue_ready = False

    def __call__(self, session: Session, recorded: set[tuple[int, dt.date]]) -> None:
        if not self._queue_ready:  # once a run
            ensure_queue(session)
            self._queue_ready = True
        self.jobs += enqueue_planned(session, issues=recorded, queue=self.queue)


def enqueue_unowned(session: Session, *, now: dt.datetime, queue: str) -> int:
    """Enqueue every delivery due now (``now`` naive UTC) and free that no waiting or running ``send_batch`` job
    names: the safety net (a job deleted by hand, rows planned before dispatch was procrastinate). Run it
    where the daemon drains retries; a batch job already owns its own retries (``scale.batch``)."""
    ensure_queue(session)
    owned = set(session.scalars(OWNED_DELIVERIES, {"task": SEND_BATCH}))
    rows = session.execute(
        select(Delivery.id, Delivery.issue_date).join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(and_(Delivery.status.in_(SENDABLE), due_filter(now=now), lease_free(now=now),
                    Subscriber.status == SubscriberStatus.ACTIVE))
    ).all()
    return enqueue_due_batches(session, deliveries=[(i, d) for i, d in rows if i not in owned], queue=queue)


def enqueue_ingest(session: Session, *, sources: Iterable[SourceSpec]) -> int:
    """Enqueue an ``ingest_source`` job per source, in order: at most one waiting per source (its queueing lock), one
    running (its lock, ``source_lock``). Returns the number enqueued: sources already waiting are not."""
    specs = list(dict.fromkeys(sources))
    if not specs:
        return 0
    ensure_queue(session)
    jobs = [{"lock": source_lock(spec.url), "queueing_lock": f"waiting-{source_lock(spec.url)}",
             "args": {"url": spec.url, "kind": spec.kind}} for spec in specs]
    return len(session.execute(DEFER_INGEST, {"queue": INGEST_QUEUE, "task": INGEST_SOURCE, "jobs": json.dumps(jobs)}).all())


def source_lock(url: str) -> str:
    """The procrastinate lock of a source's ingest jobs (no two run at once): a digest of its URL, as a lock is a
    btree key and a URL may be kilobytes long."""
    return f"source:{hashlib.sha256(url.encode()).hexdigest()[:32]}"


def ensure_queue(session: Session) -> None:
    """The queue's schema, applied if this database lacks it (``scale.schema``), on a connection of its own: the
    caller's transaction goes on, and finds procrastinate's tables and functions once that connection commits."""
    bind = session.get_bind()
    ensure_queue_schema(bind if isinstance(bind, Engine) else bind.engine)


__all__ = ["SEND_BATCH_SIZE", "PlannedBatches", "defer_jobs", "enqueue_due_batches", "enqueue_ingest", "enqueue_planned",
           "enqueue_unowned", "ensure_queue", "source_lock"]
