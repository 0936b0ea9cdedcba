"""``newsletter daemon``: one process that ingests, plans, sends, retries and cleans up, on a schedule.

APScheduler 3 (``AsyncIOScheduler``) keeps time on one asyncio event loop and runs the jobs of
``newsletter.jobs`` (its docstring has the table: triggers, misfire grace, coalescing, and why).
Everything that blocks (SQL, scoring, rendering, fetching feeds) runs in worker threads, so the loop
is always free to start the next job, move bytes to the relay and answer SIGTERM. One ``Runtime``
(settings, engine and sessions, templates, mailer factory, DKIM key, semantic model) is built at
start and used by every job. Each job run logs one line (what, how many, how long; the counts as
fields in JSON lines) and updates this process's heartbeat row, which ``newsletter status`` reads.

Sending is not a scheduled job but one sender per process, woken by the tick and the retry drain; it
first asks whether anything is due, so an idle tick opens no connection. A send may outlast many ticks
(a rate-limited relay) while ticks go on planning and beating; and there is one, because a process
claims deliveries under one name (``Runtime.holder``) and releases them all when a send ends. An
unreachable relay is a warning and the send job's ``last_error``; the next tick tries again.

With ``NEWSLETTER_DISPATCH=procrastinate`` (``newsletter.scale``) this process sends and fetches
nothing: the tick enqueues send batches in its planning transactions, the ingest and trending jobs
enqueue an ``ingest_source`` job per source, and ``newsletter worker`` processes run them.

SIGTERM or SIGINT: no further message is taken, those in flight finish and are recorded, what was
claimed and not sent is released, the heartbeat records the stop, exit 0 within 10 s. Blocking work
still running in a thread by then is abandoned: its transaction is rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from newsletter import logs
from newsletter.db import heartbeats
from newsletter.db.ledger import anything_to_send
from newsletter.db.models import naive
from newsletter.deliver import send_due, wall_clock
from newsletter.errors import NewsletterError
from newsletter.jobs import cleanup, ingest_configured, job_table, missed_at_start, queue_configured
from newsletter.plan import plan_due
from newsletter.runtime import Runtime, holder_is_dead
from newsletter.send.dispatch import one_line
from newsletter.settings import Settings
from newsletter.wording import plural

log = logging.getLogger(__name__)

SHUTDOWN_BUDGET_S = 7.0  # SIGTERM → exit: the promise is 10 s; the rest is margin for the interpreter's exit on a loaded host
WORKER_THREADS = 4  # blocking work: planning, claiming and rendering, ingest, heartbeats; more would only queue on the database
WORKER_PREFIX = "newsletter-work"


@dataclass(frozen=True, slots=True)
class Done:
    """What a job run did: its log line (``summary``, with ``counts`` as fields) and its heartbeat entry."""

    summary: str
    counts: dict[str, int] = field(default_factory=dict)
    level: int = logging.INFO  # DEBUG for a run that found nothing to do
    error: str | None = None  # kept as the job's last_error


@dataclass
class JobState:
    last_run_at: dt.datetime | None = None
    last_seconds: float | None = None
    last_result: str | None = None
    last_error: str | None = None

    def as_dict(self, next_run_at: dt.datetime | None) -> dict[str, Any]:
        return {"next_run_at": iso(next_run_at), "last_run_at": iso(self.last_run_at), "last_seconds": self.last_seconds,
                "last_result": self.last_result, "last_error": self.last_error}


def iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds") if moment else None


class Daemon:
    """The scheduler, its jobs and the sender, around one ``Runtime``. ``run()`` until ``request_stop()``."""

    def __init__(self, runtime: Runtime, *, clock: Callable[[], dt.datetime] = wall_clock) -> None:
        self.runtime, self.clock = runtime, clock
        self.id = f"{socket.gethostname()[:60]}:{os.getpid()}"  # the heartbeat's row
        self.started_at = clock()
        self.specs = job_table(runtime.settings)
        self.jobs: dict[str, JobState] = {spec.id: JobState() for spec in self.specs} | {"send": JobState()}
        self.scheduler = AsyncIOScheduler(timezone=dt.UTC)
        self.stop = asyncio.Event()
        self.stopping_since: float | None = None  # time.monotonic() of the stop request
        self._wake = asyncio.Event()  # the sender's: something may be due
        self._ingesting = asyncio.Lock()  # ingest and trending take turns
        self._running: set[asyncio.Task[Any]] = set()

    def request_stop(self, reason: str = "asked to") -> None:
        if self.stop.is_set():
            return
        self.stopping_since = time.monotonic()
        log.info("stopping (%s): no further message is taken, those in flight finish, claims are released", reason)
        self.stop.set()
        self._wake.set()

    async def run(self, *, signals: bool = False) -> None:
        if signals:
            for number in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(number, self.request_stop, signal.Signals(number).name)
        now = self.clock()
        missed = await asyncio.to_thread(missed_at_start, self.runtime, self.specs, now=now)
        work = {"tick": self._tick, "retry": self._retry, "ingest": self._ingest, "trending": self._trending, "cleanup": self._cleanup}
        for spec in self.specs:
            start = {"next_run_time": now} if spec.at_start or spec.id in missed else {}
            self.scheduler.add_job(self._run, spec.trigger, args=(spec.id, work[spec.id]), id=spec.id, name=spec.id,
                                   misfire_grace_time=spec.misfire_grace_s, coalesce=True, max_instances=1, **start)
        self.scheduler.start()
        # With the job queue the workers send and ingest; this daemon plans and enqueues.
        sender = asyncio.create_task(self._send_loop(), name="sender")
        log.info("daemon %s started; every %s s a tick, every %s s a retry drain; next %s", self.id, f"{self.runtime.settings.tick_s:g}",
                 f"{self.runtime.settings.retry_drain_s:g}",
                 ", ".join(f"{s.id} {iso(self._next_run(s.id))}" for s in self.specs if s.id not in ("tick", "retry")))
        try:
            await self.stop.wait()
        finally:
            await self._shut_down(sender)

    # --- jobs ------------------------------------------------------------------------------------

    @property
    def _queued(self) -> bool:
        """NEWSLETTER_DISPATCH=procrastinate: this daemon plans and enqueues; `newsletter worker`s send and ingest."""
        return self.runtime.settings.dispatch == "procrastinate"

    async def _tick(self) -> Done:
        enqueue = None
        if self._queued:
            from newsletter.scale.app import relay_queue
            from newsletter.scale.enqueue import PlannedBatches

            enqueue = PlannedBatches(relay_queue(self.runtime.settings))
        report = await asyncio.to_thread(plan_due, self.runtime, now=self.clock(), after_record=enqueue)
        self._wake.set()
        counts = {"planned": report.due, "quiet": report.empty, "missed": report.missed}
        queued = f", {plural(enqueue.jobs, 'send batch', 'send batches')} queued" if enqueue is not None else ""
        return Done(f"planned {report.due:,} ({report.empty:,} quiet, {report.missed:,} missed){queued}", counts,
                    logging.INFO if report.due or report.missed else logging.DEBUG)

    async def _retry(self) -> Done:
        if self._queued:  # the safety net: due deliveries no job names (retries are their batch job's own)
            from newsletter.scale.app import relay_queue
            from newsletter.scale.enqueue import enqueue_unowned

            jobs = await asyncio.to_thread(self._with_session, enqueue_unowned, now=naive(self.clock()),
                                           queue=relay_queue(self.runtime.settings))
            return Done(f"{plural(jobs, 'send batch', 'send batches')} queued for deliveries no job named", {"queued": jobs},
                        logging.INFO if jobs else logging.DEBUG)
        self._wake.set()
        return Done("sender woken for retries and anything else due", level=logging.DEBUG)


    async def _send(self) -> Done:
        if not await asyncio.to_thread(self._with_session, anything_to_send, now=naive(self.clock()), is_dead=holder_is_dead):
            return Done("nothing due", level=logging.DEBUG)
        async with contextlib.AsyncExitStack() as stack:
            try:  # reach the relay before claiming anything
                mailers = [await stack.enter_async_context(m) for m in self.runtime.mailers()]
            except NewsletterError as exc:
                return Done(f"not sending: {exc}; trying again at the next tick", level=logging.WARNING, error=str(exc))
            report = await send_due(self.runtime, mailers=mailers, stop=self.stop)
        counts = {status: report.outcomes.get(status, 0) for status in ("sent", "retry", "failed", "unknown", "expired")}
        counts["expired"] += report.expired
        counts["recovered"] = report.recovered  # left "sending" by a sender that died: now unknown
        counts["taken over"] = report.taken_over  # held by a sender of this host that died: sent now
        summary = ", ".join(f"{status} {count:,}" for status, count in counts.items()
                            if count or status in ("sent", "retry", "failed", "unknown"))  # the others when there are any
        if report.error:
            return Done(f"{summary}; stopped early: {report.error}; the rest stays pending for the next tick", counts,
                        logging.WARNING, report.error)
        return Done(summary, counts)

    async def _ingest(self) -> Done:
        return await self._ingest_sources("ingest", trending=False)

    async def _trending(self) -> Done:
        return await self._ingest_sources("trending", trending=True)

    async def _ingest_sources(self, job: str, *, trending: bool) -> Done:
        if self._queued:  # the workers ingest, a job per source, one at a time per source (its lock)
            sources, queued = await asyncio.to_thread(queue_configured, self.runtime, trending=trending)
            if not sources:
                return Done("no sources configured", level=logging.DEBUG if trending else logging.INFO)
            waiting = f", {sources - queued:,} still waiting from before" if queued < sources else ""
            return Done(f"{plural(sources, 'source')}: {plural(queued, 'ingest job')} queued for the workers{waiting}",
                        {"sources": sources, "queued": queued})
        async with self._ingesting:
            reports = await asyncio.to_thread(ingest_configured, self.runtime, trending=trending, job=job)
        if not reports:
            return Done("no sources configured", level=logging.DEBUG if trending else logging.INFO)
        failed = [r for r in reports if r.error]
        counts = {"sources": len(reports), "new": sum(r.new for r in reports), "updated": sum(r.updated for r in reports),
                  "failed": len(failed)}
        error = "; ".join(f"{r.source}: {r.error}" for r in failed) or None
        return Done(f"{plural(len(reports), 'source')}, {plural(counts['new'], 'new paper')}, {counts['updated']:,} updated, "
                    f"{len(failed)} failed", counts, error=error)  # each failed source had its own warning

    async def _cleanup(self) -> Done:
        expired, forgotten = await asyncio.to_thread(self._with_session, cleanup, now=naive(self.clock()),
                                                     window=dt.timedelta(hours=self.runtime.settings.retry_window_h))
        return Done(f"expired {expired:,} deliveries past the retry window, forgot {forgotten:,} silent daemons",
                    {"expired": expired, "forgotten": forgotten}, logging.INFO if expired or forgotten else logging.DEBUG)

    # --- running them ----------------------------------------------------------------------------

    async def _run(self, job: str, work: Callable[[], Awaitable[Done]]) -> None:
        """Run one job: never raises (a job never takes the daemon down), logs one line, beats the heartbeat."""
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            await self._timed(job, work)
        except asyncio.CancelledError:  # stopping, past the budget
            left = ("a message in flight is resent once, with the same Message-ID, after the next start" if job == "send"
                    else "what it had not committed is rolled back")
            log.warning("%s: still running at the shutdown deadline, abandoned (%s)", job, left, extra={"job": job})
        finally:
            self._running.discard(task)

    async def _timed(self, job: str, work: Callable[[], Awaitable[Done]]) -> None:
        started_at, started, failure = self.clock(), time.perf_counter(), None
        try:
            done = await work()
        except Exception as exc:  # a job's own errors are a line; anything else is a bug: with its traceback
            failure = None if isinstance(exc, NewsletterError | SQLAlchemyError) else exc
            done = Done(f"failed: {one_line(exc)}", level=logging.ERROR if failure else logging.WARNING, error=one_line(exc))
        seconds = time.perf_counter() - started
        state = self.jobs[job]
        state.last_run_at, state.last_seconds, state.last_result, state.last_error = started_at, round(seconds, 3), done.summary, done.error
        log.log(done.level, "%s: %s (took %.2f s)", job, done.summary, seconds, exc_info=failure,
                extra={"job": job, "seconds": round(seconds, 3), **done.counts, **({"error": done.error} if done.error else {})})
        await self._beat()

    async def _send_loop(self) -> None:
        if self._queued:  # the workers send (newsletter.scale); this daemon plans, enqueues and ingests
            await self.stop.wait()
            return
        while True:
            await self._wake.wait()
            if self.stop.is_set():
                return
            self._wake.clear()
            await self._run("send", self._send)

    def _next_run(self, job: str) -> dt.datetime | None:
        scheduled = self.scheduler.get_job(job)
        return scheduled.next_run_time if scheduled is not None else None

    async def _beat(self, *, stopped: bool = False) -> None:
        jobs = {job: state.as_dict(None if stopped else self._next_run(job)) for job, state in self.jobs.items()}
        try:
            await asyncio.to_thread(self._with_session, heartbeats.beat, daemon_id=self.id, started_at=naive(self.started_at),
                                    now=naive(self.clock()), jobs=jobs, stopped=stopped)
        except (NewsletterError, SQLAlchemyError) as exc:  # a locked or unreachable database: the next beat tries again
            log.warning("heartbeat not written: %s", one_line(exc))

    def _with_session(self, function: Callable[..., Any], **kwargs: Any) -> Any:
        with self.runtime.sessions() as session:
            result = function(session, **kwargs)
            session.commit()
            return result

    async def _shut_down(self, sender: asyncio.Task[None]) -> None:
        deadline = (self.stopping_since or time.monotonic()) + SHUTDOWN_BUDGET_S - 1.0  # a second for the last heartbeat
        if self.scheduler.running:
            self.scheduler.pause()  # no new runs; the running ones get until the deadline
        self._wake.set()
        _, late = await asyncio.wait({sender, *self._running}, timeout=max(deadline - time.monotonic(), 0.1))
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=0.5)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the loop's next turn
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._beat(stopped=True), timeout=1.0)


# --- the process -----------------------------------------------------------------------------------


def run_daemon(settings: Settings, *, engine: Engine | None = None) -> int:
    """The ``newsletter daemon`` process: runs until SIGTERM or SIGINT, then exits 0 within 10 s.

    Configuration errors are raised before anything starts (the CLI prints them on one line).
    """
    settings.require("secret_key", "from_address", purpose="the daemon (it sends digests)")
    runtime = Runtime.build(settings, engine=engine)
    daemon = Daemon(runtime)
    logs.configure(log_format=settings.log_format, level=settings.log_level)
    loop = asyncio.new_event_loop()
    loop.set_default_executor(ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix=WORKER_PREFIX))
    try:
        loop.run_until_complete(daemon.run(signals=True))
    finally:
        _close(loop)
    deadline = (daemon.stopping_since or time.monotonic()) + SHUTDOWN_BUDGET_S
    busy = [t for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX)]
    for thread in busy:
        thread.join(timeout=max(deadline - time.monotonic(), 0))
    if any(thread.is_alive() for thread in busy):
        log.warning("daemon %s stopped; work still running in a thread is abandoned (its transaction is rolled back)", daemon.id)
        logging.shutdown()
        os._exit(0)  # the interpreter would wait for those threads; their database work rolls back
    runtime.close()
    log.info("daemon %s stopped", daemon.id)
    return 0


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Like the end of ``asyncio.run``, without waiting for the worker threads (``run_daemon`` bounds that)."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()  # shuts the worker pool down without waiting


__all__ = ["Daemon", "Done", "run_daemon"]
