"""The daemon's jobs: when each runs (``job_table``, from the settings) and the blocking work each does.

=========  ==================================================  =============  ===================================
job        trigger                                             misfire grace  does
=========  ==================================================  =============  ===================================
tick       every NEWSLETTER_TICK_S (60 s), and at start        one interval   plan every digest due now; wake the sender
retry      every NEWSLETTER_RETRY_DRAIN_S (300 s), and at      one interval   wake the sender between ticks
           start
ingest     NEWSLETTER_INGEST_CRON in NEWSLETTER_INGEST_        20 h           the configured sources but hf-daily
           TIMEZONE (20:05 New York, Sunday to Thursday)                      (with the job queue: a job each)
trending   NEWSLETTER_TRENDING_CRON, UTC (hourly, at :15)      30 min         the hf-daily sources (idem)
cleanup    NEWSLETTER_CLEANUP_CRON, UTC (03:30), and at start  1 day          expire stale deliveries, forget old heartbeats
=========  ==================================================  =============  ===================================

Why:

- Misfire grace is how late a run may start and still run (the loop stalled, the host slept). The tick
  and the retry drain act on what is due *now*, so a late run is as good as one on time; the latest of
  the coalesced runs is always within an interval. An ingest missed altogether loses that day's
  listing (arXiv's RSS shows it only until the next announcement, 24 h later), so a late one must run,
  but not into the next: 20 h. Trending is fetched hourly anyway: 30 min. Cleanup is daily and
  idempotent: a day.
- ``coalesce=True`` on every job: after missing several runs a job runs once, not once per run missed;
  each run works on the state of its moment, so the others would find nothing more.
- ``max_instances=1`` on every job: a run still going when the next is due is not doubled (APScheduler
  warns and skips it; the next run catches up).
- A start is a catch-up. The tick, the retry drain and the cleanup run at once (``plan_due`` decides
  what is still due and records what was missed); an ingest or trending run whose time came within its
  grace while the daemon was down, and whose sources were not all fetched successfully since, runs at
  once too (``missed_at_start``).

Crons are crontab lines (minute hour day month day-of-week), the day of week counted as crontab
counts it (0 or 7 is Sunday; APScheduler 3 alone would read 0 as Monday). Unlike crontab, a line
that restricts both the day of the month and the day of the week needs both to match.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import zoneinfo
from dataclasses import dataclass

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.orm import Session

from newsletter.db import heartbeats, ledger
from newsletter.db.models import utcnow
from newsletter.errors import ConfigError
from newsletter.ingest.run import SourceReport, configured_sources
from newsletter.runtime import Runtime
from newsletter.settings import Settings

log = logging.getLogger("newsletter.daemon")  # one logger for everything the daemon says

INGEST_GRACE_S = 20 * 3600  # arXiv's RSS holds a listing until the next announcement, 24 h later: late beats lost
TRENDING_GRACE_S = 30 * 60  # fetched every hour anyway
CLEANUP_GRACE_S = 24 * 3600  # daily and idempotent
HEARTBEAT_KEEP = dt.timedelta(days=7)  # a daemon silent this long is forgotten by the cleanup


@dataclass(frozen=True, slots=True)
class JobSpec:
    id: str
    trigger: BaseTrigger
    misfire_grace_s: int  # APScheduler takes whole seconds
    at_start: bool  # run once at start; the ingest jobs instead only when they missed a run (missed_at_start)


def job_table(settings: Settings) -> list[JobSpec]:
    """The scheduled jobs, from the settings; an invalid cron or time zone is a ConfigError naming its setting."""
    return [
        JobSpec("tick", IntervalTrigger(seconds=settings.tick_s, timezone=dt.UTC), math.ceil(settings.tick_s), True),
        JobSpec("retry", IntervalTrigger(seconds=settings.retry_drain_s, timezone=dt.UTC), math.ceil(settings.retry_drain_s), True),
        JobSpec("ingest", cron(settings.ingest_cron, settings.ingest_timezone, "INGEST_CRON"), INGEST_GRACE_S, False),
        JobSpec("trending", cron(settings.trending_cron, "UTC", "TRENDING_CRON"), TRENDING_GRACE_S, False),
        JobSpec("cleanup", cron(settings.cleanup_cron, "UTC", "CLEANUP_CRON"), CLEANUP_GRACE_S, True),
    ]


def cron(expression: str, timezone: str, setting: str) -> CronTrigger:
    """A crontab line's trigger, its day-of-week field read as crontab does (0 or 7 is Sunday)."""
    try:
        zone = zoneinfo.ZoneInfo(timezone)
    except (ValueError, KeyError):
        raise ConfigError(f"NEWSLETTER_INGEST_TIMEZONE is invalid: {timezone!r} is not an IANA time zone. "
                          "Fix it in the environment or in .env") from None
    try:
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError(f"{len(fields)} fields, not 5")
        minute, hour, day, month, weekdays = fields
        return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=crontab_weekdays(weekdays), timezone=zone)
    except ValueError as exc:
        raise ConfigError(f"NEWSLETTER_{setting} is invalid: {expression!r} ({exc}); use five cron fields (minute hour "
                          "day month day-of-week), e.g. '5 20 * * sun-thu'. Fix it in the environment or in .env") from None


WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab's numbering: 0 (and 7) is Sunday


def crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field in APScheduler 3's terms, which counts 0 as Monday and has no Sunday-first ranges.

    ``sun-thu`` → ``sun,mon,tue,wed,thu``; ``1-5`` (crontab's Monday to Friday) → ``mon,tue,wed,thu,fri``.
    """
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        span, _, step = part.partition("/")
        if span == "*":
            first, last = 0, 6
        else:
            start, _, end = span.partition("-")
            first = _weekday(start)
            last = _weekday(end) if end else (6 if step else first)
        run = [(first + offset) % 7 for offset in range((last - first) % 7 + 1)]
        days.update(run[:: int(step)] if step else run)
    return ",".join(WEEKDAYS[day] for day in sorted(days))


def _weekday(text: str) -> int:
    if text.isdigit() and int(text) <= 7:
        return int(text) % 7
    if text[:3] in WEEKDAYS:
        return WEEKDAYS.index(text[:3])
    raise ValueError(f"{text!r} is not a day of the week (0-7 or sun-sat)")


def last_fire_time(trigger: BaseTrigger, *, now: dt.datetime, within_s: float) -> dt.datetime | None:
    """The latest time in (now - within_s, now] that ``trigger`` fired at, if any."""
    latest, moment = None, trigger.get_next_fire_time(None, now - dt.timedelta(seconds=within_s))
    while moment is not None and moment <= now:
        latest, moment = moment, trigger.get_next_fire_time(moment, moment)
    return latest


# --- the blocking parts, run in worker threads -----------------------------------------------------


def ingest_configured(runtime: Runtime, *, trending: bool, job: str) -> list[SourceReport]:
    """Ingest the configured sources of one kind, logging a line per source (a warning for one that failed)."""
    from newsletter.ingest.fetch import Fetcher, make_client
    from newsletter.ingest.run import ingest_sources

    specs = [spec for spec, _ in configured_sources(runtime.settings, runtime.sessions, trending=trending)]
    if not specs:
        return []
    settings = runtime.settings
    with make_client(timeout_s=settings.fetch_timeout_s, contact_email=settings.contact_email) as client:
        reports = ingest_sources(specs, sessions=runtime.sessions, fetcher=Fetcher.from_settings(settings, client), now=utcnow(),
                                 on_done=lambda _index, report: log_source(job, report))
    if any(r.new or r.updated for r in reports):
        embed_after_ingest(runtime, job=job)
    return reports


def embed_after_ingest(runtime: Runtime, *, job: str) -> int:
    """``plan.embed_new_papers`` after an ingest, logged. A failure is logged, never raised: the papers are
    stored already, and planning embeds whatever it finds without a vector."""
    from newsletter.plan import embed_new_papers

    started = time.perf_counter()
    try:
        embedded = embed_new_papers(runtime, now=utcnow())
    except Exception as exc:  # the model's files broken, the database busy: planning embeds them instead
        log.warning("%s: could not embed the new papers for the semantic ranker (%s: %s); the next plan will",
                    job, type(exc).__name__, exc, exc_info=True)
        return 0
    if embedded:
        log.info("%s: embedded %d new papers for the semantic ranker in %.1f s", job, embedded, time.perf_counter() - started,
                 extra={"job": job, "embedded": embedded})
    return embedded


def queue_configured(runtime: Runtime, *, trending: bool) -> tuple[int, int]:
    """NEWSLETTER_DISPATCH=procrastinate: an ``ingest_source`` job per configured source of one kind, for the
    workers, in one transaction. Returns (sources, jobs queued): a source whose job is still waiting is not queued again."""
    from newsletter.scale.enqueue import enqueue_ingest

    specs = [spec for spec, _ in configured_sources(runtime.settings, runtime.sessions, trending=trending)]
    if not specs:
        return 0, 0
    with runtime.sessions() as session:
        queued = enqueue_ingest(session, sources=specs)
        session.commit()
    return len(specs), queued


def log_source(job: str, report: SourceReport) -> None:
    fields = {"job": job, "source": report.source, "new": report.new, "updated": report.updated, "seconds": report.seconds}
    if report.error:
        log.warning("%s: %s failed: %s", job, report.source, report.error, extra={**fields, "error": report.error})
    else:
        note = f" ({report.note})" if report.note else ""
        log.info("%s: %s: %d new, %d updated, %d unchanged%s in %.2f s", job, report.source, report.new, report.updated,
                 report.unchanged, note, report.seconds, extra=fields)


def cleanup(session: Session, *, now: dt.datetime, window: dt.timedelta) -> tuple[int, int]:
    """Expire deliveries still unsent after the retry window; forget daemons silent for HEARTBEAT_KEEP."""
    return ledger.expire_stale(session, now=now, window=window), heartbeats.forget_silent(session, before=now - HEARTBEAT_KEEP)


def missed_at_start(runtime: Runtime, specs: list[JobSpec], *, now: dt.datetime) -> set[str]:
    """The ingest jobs whose time came within their grace and whose sources were not all fetched successfully since."""
    missed = set()
    for spec in specs:
        if spec.id in ("ingest", "trending"):
            fired = last_fire_time(spec.trigger, now=now, within_s=spec.misfire_grace_s)
            sources = configured_sources(runtime.settings, runtime.sessions, trending=spec.id == "trending")
            if fired and any(fetched is None or fetched.replace(tzinfo=dt.UTC) < fired for _, fetched in sources):
                missed.add(spec.id)
    return missed


__all__ = ["JobSpec", "cleanup", "crontab_weekdays", "ingest_configured", "job_table",
           "last_fire_time", "missed_at_start", "queue_configured"]
