"""``newsletter worker``: a procrastinate worker process that claims send batches and ingest jobs and runs them.

At start it makes sure the database has the queue's schema (``scale.schema``: the scale extra may
have been installed after ``newsletter init``), then builds once what every job uses (``Runtime``:
settings, database, templates, mailers, DKIM key; and the relay's shared rate limit) and hands it to
the jobs as procrastinate's ``additional_context``. Jobs run on one asyncio loop, ``concurrency`` at
a time (``DEFAULT_CONCURRENCY``); their blocking parts (claiming, rendering, SQL) run in threads
(``deliver.send_due``).

A worker that dies (SIGKILL, a lost machine) stops beating its heartbeat; every worker looks for jobs
left running by a worker silent for ``STALLED_AFTER_S`` and puts them back in the queue. The batch's
deliveries are the ledger's: the one that was being handed to the relay at the moment of death is
resent once, with the same Message-ID, after its lease lapses (``scale.batch``).

SIGTERM or SIGINT: no further job is taken; running ones get ``SHUTDOWN_GRACE_S`` to finish, then
are cancelled (what they claimed and did not send is released).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import Sequence

from procrastinate import App
from procrastinate.app import WorkerOptions

from newsletter import logs
from newsletter.runtime import Runtime
from newsletter.scale.app import check_dispatch, conninfo, make_app, relay_queue
from newsletter.scale.ratelimit import SharedRateLimiter
from newsletter.scale.schema import ensure_queue_schema
from newsletter.settings import Settings

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0  # procrastinate's default is 10 s; a beat is one tiny UPDATE
STALLED_AFTER_S = 10.0  # five missed beats: the worker is gone (a live one on a loaded host still beats within this)
STALLED_CHECK_S = 2.0  # how often a worker looks for jobs of gone workers
SHUTDOWN_GRACE_S = 8.0  # SIGTERM → running batches finish (500 messages at local speed take a second or two)
# Send batches one worker runs at once (``newsletter worker --concurrency``). A batch is claimed and rendered
# (in threads) before it is sent, so with one at a time the relay connections wait for each render; with two,
# one batch renders while the other sends. Measured, one worker at 100,000 subscribers: 208 emails/s with
# one, 266 with two (+28%).
DEFAULT_CONCURRENCY = 2
EXTRA_CONNECTIONS = 3  # beyond one per concurrent job: procrastinate's LISTEN, its heartbeat, the stalled-job check


class BatchesInBrief(logging.Filter):
    """procrastinate logs a job's arguments with each line about it ("Starting job send_batch[7](delivery_ids=[…])",
    and its ``job`` field in JSON lines): a send batch's 500 delivery ids become their count."""

    IDS = re.compile(r"delivery_ids=\[([\d, ]*)\]")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("procrastinate"):
            return True
        if isinstance(record.msg, str) and "delivery_ids=[" in record.msg:
            record.msg = self.IDS.sub(lambda found: f"delivery_ids=<{len(found[1].split(',')) if found[1] else 0} ids>", record.msg)
        job = getattr(record, "job", None)
        if isinstance(job, dict) and isinstance(arguments := job.get("task_kwargs"), dict) and \
                isinstance(ids := arguments.get("delivery_ids"), list):
            record.job = {**job, "task_kwargs": {**arguments, "delivery_ids": f"<{len(ids)} ids>"},
                          **({"call_string": self.IDS.sub(f"delivery_ids=<{len(ids)} ids>", job["call_string"])}
                             if isinstance(job.get("call_string"), str) else {})}
        return True


def run_worker(settings: Settings, *, concurrency: int = DEFAULT_CONCURRENCY, queues: Sequence[str] | None = None) -> int:
    """Run a worker until SIGTERM or SIGINT; ``queues`` None: every queue. Configuration errors are raised
    before anything starts (the CLI prints them on one line)."""
    check_dispatch(settings.model_copy(update={"dispatch": "procrastinate"}))
    settings.require("secret_key", "from_address", purpose="a worker (it sends digests)")
    logs.configure(log_format=settings.log_format, level=settings.log_level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(BatchesInBrief())
    limiter = (SharedRateLimiter(conninfo(settings.database_url), relay=relay_queue(settings), per_second=settings.smtp_rate_per_s)
               if settings.smtp_rate_per_s > 0 else None)
    runtime = Runtime.build(settings)  # with the shared limit on, each batch is sent under it, not a per-process one
    app = make_app(settings.database_url, min_size=1, max_size=concurrency + EXTRA_CONNECTIONS)
    try:
        ensure_queue_schema(runtime.engine)  # the scale extra installed after `newsletter init`: the queue is applied now
        asyncio.run(_serve(app, runtime=runtime, limiter=limiter, concurrency=concurrency, queues=queues))
    finally:
        runtime.close()
    return 0


async def _serve(app: App, *, runtime: Runtime, limiter: SharedRateLimiter | None, concurrency: int,
                 queues: Sequence[str] | None) -> None:
    name = f"{socket.gethostname()[:60]}:{os.getpid()}"
    async with app.open_async():
        reaper = asyncio.create_task(_requeue_stalled_jobs(app))
        try:
            options: WorkerOptions = {
                "name": name, "concurrency": concurrency, "additional_context": {"runtime": runtime, "limiter": limiter},
                "update_heartbeat_interval": HEARTBEAT_S, "stalled_worker_timeout": STALLED_AFTER_S,
                "shutdown_graceful_timeout": SHUTDOWN_GRACE_S,
                "delete_jobs": "successful",  # 20,000 jobs a day at 10 M subscribers; failed ones stay for status
            }
            if queues:  # otherwise every queue
                options["queues"] = list(queues)
            await app.run_worker_async(**options)
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            if limiter is not None:
                await limiter.close()


async def _requeue_stalled_jobs(app: App) -> None:
    """Put jobs left running by a worker silent for STALLED_AFTER_S back in the queue (every worker does this;
    two doing it at once is harmless: a job already back in the queue is skipped)."""
    while True:
        await asyncio.sleep(STALLED_CHECK_S)
        try:
            for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_AFTER_S):
                with contextlib.suppress(Exception):  # another worker put it back first
                    await app.job_manager.retry_job(job)
                    log.warning("job %s (%s) of a worker gone silent is back in the queue", job.id, job.task_name)
        except Exception:  # the database briefly unreachable: the next check tries again
            log.warning("could not look for jobs of gone workers; trying again in %.0f s", STALLED_CHECK_S, exc_info=True)


__all__ = ["DEFAULT_CONCURRENCY", "HEARTBEAT_S", "STALLED_AFTER_S", "run_worker"]
