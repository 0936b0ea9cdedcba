"""The jobs workers run: ``send_batch`` (queue per relay) and ``ingest_source`` (a lock per source).

Both take what the worker process built once at its start from ``context.additional_context``
(``newsletter.scale.worker``): ``runtime`` (settings, database, templates, mailers) and ``limiter``
(the relay's shared rate limit, or None). They call the same code as the daemon: ``deliver.send_due``
(through ``scale.batch``) and ``ingest.run.ingest_one``, logging the daemon's line per source (``jobs.log_source``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from procrastinate import Blueprint, JobContext, RetryStrategy

from newsletter.db.models import utcnow
from newsletter.ingest.run import SourceReport
from newsletter.ingest.sources import SourceSpec
from newsletter.jobs import embed_after_ingest, log_source
from newsletter.runtime import Runtime
from newsletter.scale.app import SEND_BATCH
from newsletter.scale.batch import deliver_batch

# A batch's own failures (the relay, a held delivery, a 4xx) are follow-up jobs, not retries (scale.batch);
# these retries are for the rest: a database that was briefly unreachable, say.
SEND_RETRY = RetryStrategy(max_attempts=3, exponential_wait=10)
INGEST_RETRY = RetryStrategy(max_attempts=2, wait=60)  # a failed fetch already retried 429/5xx itself
log = logging.getLogger(__name__)


def blueprint() -> Blueprint:
    """Our tasks, for an App (``app.make_app``). A new Blueprint per App: adding one to an App renames its tasks."""
    tasks = Blueprint()
    tasks.task(name="send_batch", pass_context=True, retry=SEND_RETRY)(send_batch)
    tasks.task(name="ingest_source", pass_context=True, retry=INGEST_RETRY)(ingest_source)
    return tasks


async def send_batch(context: JobContext, delivery_ids: list[int], relay_failures: int = 0) -> dict[str, Any]:
    """Send what is due of ``delivery_ids`` (about 500 deliveries of one issue date); hand what is left to a follow-up."""
    runtime: Runtime = context.additional_context["runtime"]
    started = time.perf_counter()
    result = await deliver_batch(runtime, delivery_ids, limiter=context.additional_context.get("limiter"),
                                 relay_failures=relay_failures)
    if result.remaining:
        await context.app.configure_task(SEND_BATCH, queue=context.job.queue, schedule_at=result.retry_at).defer_async(
            delivery_ids=list(result.remaining), relay_failures=result.relay_failures)
    done = ", ".join(f"{status} {count:,}" for status, count in sorted(result.outcomes.items())) or "nothing to send"
    later = f"; {len(result.remaining):,} left for {result.retry_at:%H:%M:%S} UTC" if result.remaining and result.retry_at else ""
    log.log(logging.WARNING if result.error else logging.INFO, "send batch of %s on %s: %s%s%s (took %.1f s)",
            f"{len(delivery_ids):,}", context.job.queue, done, later, f"; {result.error}" if result.error else "",
            time.perf_counter() - started)
    return {"outcomes": result.outcomes, "remaining": len(result.remaining), "error": result.error}


async def ingest_source(context: JobContext, url: str, kind: str) -> dict[str, object]:
    """Fetch one source and store its papers. Deferred with ``lock=enqueue.source_lock(url)``: one ingest of a source at a time."""
    runtime: Runtime = context.additional_context["runtime"]
    report = await asyncio.to_thread(ingest_source_now, runtime, SourceSpec(url, kind))
    log_source("ingest", report)
    if report.new or report.updated:
        await asyncio.to_thread(embed_after_ingest, runtime, job="ingest")
    return report.as_dict()


def ingest_source_now(runtime: Runtime, spec: SourceSpec) -> SourceReport:
    """Ingest ``spec`` now, as the daemon would, if it is still configured (in the database or NEWSLETTER_SOURCES)."""
    from newsletter.ingest.fetch import Fetcher, make_client
    from newsletter.ingest.run import configured_sources, ingest_one

    settings = runtime.settings
    if spec.url not in {configured.url for configured, _ in configured_sources(settings, runtime.sessions)}:
        return SourceReport(spec.url, note="no longer configured")  # removed since the job was queued
    with make_client(timeout_s=settings.fetch_timeout_s, contact_email=settings.contact_email) as client:
        return ingest_one(spec, sessions=runtime.sessions, fetcher=Fetcher.from_settings(settings, client), now=utcnow())


__all__ = ["blueprint", "ingest_source", "ingest_source_now", "send_batch"]
