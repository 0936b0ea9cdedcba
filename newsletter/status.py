"""``newsletter status``: the state of the service, read from the database, and whether a person must act.

``read_status`` gathers the facts in one read-only transaction; ``assess`` decides, as a pure
function of those facts and the clock, what *needs a person* (the command exits 1, so a monitor can
page on it) and what is only a *warning* (printed, exit 0). The rules:

- **Daemon.** Every daemon process writes a heartbeat row each tick. "running": some process beat
  within ``SILENT_AFTER`` and has not stopped. "silent": none did, and the latest process to beat
  never stopped cleanly (it crashed or hangs): needs a person. "not running": no heartbeat, or the
  latest process stopped cleanly. That alone is fine: ``newsletter digest`` from cron is a legitimate
  setup, so only a daemon that went silent is a fault.
- **Sources.** ``FAILING_AFTER`` failed fetches in a row: needs a person; one is a warning (upstream
  blips happen). An arXiv listing (``arxiv-rss``) whose last successful fetch was empty on a weekday
  in New York: a warning, never more, since arXiv's holidays look the same; weekends are normal.
- **Daemon jobs.** A job whose last run ended in an error: a warning. One where the relay refused
  the login (SMTP 530/535, "authentication"): needs a person, as no retry will fix the password.
- **Deliveries.** Any delivery expired in the last ``RECENT``: needs a person (someone did not get
  their digest); so does one whose outcome stayed unknown after its one retry (the relay took it twice
  without confirming, and it is not sent a third time). Unsent deliveries older than ``STUCK_AFTER``: a warning. The counts by status are
  over the deliveries *recorded* in the last ``RECENT`` (by ``created_at``), not by issue date: issue
  dates are each subscriber's local date, so "today" differs per subscriber.

All datetimes are naive UTC, as stored.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.db import ledger
from newsletter.db.models import DELIVERY_STATUSES, DaemonHeartbeat, Delivery, DeliveryStatus, Source, Subscriber, SubscriberStatus
from newsletter.ingest.run import ARXIV_TIMEZONE, EMPTY_LISTING, is_arxiv_weekday
from newsletter.ingest.sources import ARXIV_RSS
from newsletter.wording import plural

SILENT_AFTER = dt.timedelta(minutes=5)  # the daemon beats every tick (a minute or less): five missed ticks is a dead process
FAILING_AFTER = 2  # failed fetches in a row that need a person; one alone is often a blip upstream
RECENT = dt.timedelta(hours=24)  # the window of the delivery counts and of "expired lately"
STUCK_AFTER = dt.timedelta(hours=1)  # retries back off to an hour at most: an unsent delivery older than this keeps failing
NEXT_SENDS = 5  # upcoming sends listed
# A relay refusing our login: 530 (authentication required), 535 (credentials invalid), or said in words.
LOGIN_REFUSED = re.compile(r"\b53[05]\b|authenticat|\blogin\b|credentials", re.IGNORECASE)
UNSENT = (DeliveryStatus.PENDING, DeliveryStatus.RETRY, DeliveryStatus.UNKNOWN)


@dataclass(frozen=True, slots=True)
class Job:
    """One scheduled job of the daemon, as its latest heartbeat tells it."""

    id: str
    next_run_at: dt.datetime | None = None
    last_run_at: dt.datetime | None = None
    last_seconds: float | None = None
    last_result: str | None = None
    last_error: str | None = None

    @classmethod
    def from_heartbeat(cls, job_id: str, entry: Any) -> Job:
        entry = entry if isinstance(entry, Mapping) else {}
        seconds = entry.get("last_seconds")
        result, error = entry.get("last_result"), entry.get("last_error")
        return cls(job_id, _instant(entry.get("next_run_at")), _instant(entry.get("last_run_at")),
                   float(seconds) if isinstance(seconds, int | float) else None,
                   None if result is None else str(result), None if error is None else str(error))


@dataclass(frozen=True, slots=True)
class Heartbeat:
    id: str  # host:pid
    started_at: dt.datetime
    beat_at: dt.datetime
    stopped_at: dt.datetime | None
    jobs: tuple[Job, ...] = ()


class DaemonState(enum.StrEnum):
    RUNNING = "running"
    SILENT = "silent"  # crashed or hung: needs a person
    NOT_RUNNING = "not running"  # never started, or stopped cleanly: fine (cron may run the digests)


@dataclass(frozen=True, slots=True)
class Daemon:
    state: DaemonState
    process: Heartbeat | None = None  # the one running, the one gone silent, or the last one that stopped
    gone: bool = False  # silent because its process (of this host) no longer exists
    others: tuple[Heartbeat, ...] = ()  # other daemons beating now, besides ``process`` (several hosts, or by mistake)
    # Other daemons that stopped beating without a clean stop, and nothing was started since (see daemon_state),
    # each with whether its process (of this host) is gone.
    crashed: tuple[tuple[Heartbeat, bool], ...] = ()

    def uptime(self, *, now: dt.datetime) -> dt.timedelta | None:
        """How long the process has been up: until ``now`` while it beats (a beat is up to a tick old), until
        its last beat once it went silent (nothing says it lived longer); None when none runs."""
        if self.process is None or self.state == DaemonState.NOT_RUNNING:
            return None
        until = now if self.state == DaemonState.RUNNING else self.process.beat_at
        return until - self.process.started_at


@dataclass(frozen=True, slots=True)
class SourceHealth:
    id: int
    url: str
    kind: str
    name: str | None
    last_fetched_at: dt.datetime | None  # the last attempt, failed or not
    last_success_at: dt.datetime | None
    last_new: int | None  # new papers of the last success
    last_note: str | None  # the last success's note: "no new papers (...)", "not modified since the last fetch"
    last_error: str | None
    consecutive_failures: int

    @property
    def label(self) -> str:
        """``arxiv:cs.LG`` for arXiv's listings, as they were added; the URL for anything else."""
        if self.kind == "arxiv-rss" and self.url.startswith(ARXIV_RSS):
            return "arxiv:" + self.url.removeprefix(ARXIV_RSS)
        return self.url


@dataclass(frozen=True, slots=True)
class Deliveries:
    since: dt.datetime  # the counts are over deliveries recorded since then
    by_status: dict[str, int]
    retries_waiting: int  # status retry, any date
    oldest_unsent_at: dt.datetime | None  # the oldest pending, retry or unknown delivery's creation
    expired_recently: int  # expired since ``since``
    bounced_subscribers: int  # subscribers with at least one permanent failure
    suppressed_subscribers: int  # status bounced: no longer sent to
    held: int = 0  # unsent, under a sender's live lease now
    held_by_dead: int = 0  # of those, held by a process of this host that no longer exists
    unconfirmed: int = 0  # unknown after its retry too: the relay took it twice without confirming; not sent again
    interrupted: int = 0  # left "sending" by a sender that stopped mid-message (no live lease): unknown at the next run


@dataclass(frozen=True, slots=True)
class NextSend:
    email: str
    at: dt.datetime
    timezone: str

    @property
    def local(self) -> str:
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            return f"{self.at:%Y-%m-%d %H:%M} UTC"
        return f"{self.at.replace(tzinfo=dt.UTC).astimezone(zone):%Y-%m-%d %H:%M} {self.timezone}"


@dataclass(frozen=True, slots=True)
class Report:
    now: dt.datetime
    daemon: Daemon
    sources: tuple[SourceHealth, ...]
    deliveries: Deliveries
    next_sends: tuple[NextSend, ...]
    needs_a_person: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # The job queue (NEWSLETTER_DISPATCH=procrastinate): jobs per queue and workers seen; None without one.
    queue: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.needs_a_person

    def as_dict(self) -> dict[str, Any]:
        """The whole report as JSON-ready data; times as ISO 8601 UTC strings ("...Z")."""
        process, uptime = self.daemon.process, self.daemon.uptime(now=self.now)
        return _jsonable({
            "ok": self.ok, "now": self.now, "needs_a_person": list(self.needs_a_person), "warnings": list(self.warnings),
            "daemon": {
                "state": self.daemon.state,
                "process": None if process is None else {
                    "id": process.id, "started_at": process.started_at, "beat_at": process.beat_at,
                    "stopped_at": process.stopped_at, "seconds_since_beat": round((self.now - process.beat_at).total_seconds()),
                    "seconds_up": None if uptime is None else round(uptime.total_seconds()),
                },
                "jobs": [asdict(job) for job in (process.jobs if process else ())],
                "others": [{"id": other.id, "started_at": other.started_at, "beat_at": other.beat_at,
                            "jobs": [asdict(job) for job in other.jobs]} for other in self.daemon.others],
                "crashed": [{"id": other.id, "started_at": other.started_at, "beat_at": other.beat_at, "process_gone": gone}
                            for other, gone in self.daemon.crashed],
            },
            "sources": [{"label": s.label, **asdict(s)} for s in self.sources],
            "deliveries": asdict(self.deliveries),
            "next_sends": [{"email": n.email, "at": n.at, "local": n.local} for n in self.next_sends],
            "queue": self.queue,
        })


# --- reading ---------------------------------------------------------------------------------------


def read_status(session: Session, *, now: dt.datetime, is_dead: Callable[[str], bool] = lambda _holder: False) -> Report:
    """Everything ``newsletter status`` shows, as of ``now`` (naive UTC), assessed. ``is_dead``: whether a
    lease holder or a daemon is known to be a process that no longer exists (``runtime.holder_is_dead``)."""
    heartbeats = [Heartbeat(row.id, row.started_at, row.beat_at, row.stopped_at,
                            tuple(Job.from_heartbeat(str(k), v) for k, v in sorted((row.jobs or {}).items())))
                  for row in session.scalars(select(DaemonHeartbeat))]
    sources = tuple(
        SourceHealth(s.id, s.url, s.kind, s.name, s.last_fetched_at, s.last_success_at, s.last_new, s.last_note,
                     s.last_error, s.consecutive_failures or 0)
        for s in session.scalars(select(Source).order_by(Source.id))
    )
    next_sends = tuple(NextSend(email, at, timezone) for email, at, timezone in session.execute(
        select(Subscriber.email, Subscriber.next_send_at, Subscriber.timezone)
        .where(Subscriber.status == SubscriberStatus.ACTIVE, Subscriber.next_send_at.is_not(None))
        .order_by(Subscriber.next_send_at, Subscriber.id).limit(NEXT_SENDS)
    ) if at is not None)
    from newsletter.scale.status import queue_status  # SQL only: no procrastinate needed to read its tables

    report = Report(now, daemon_state(heartbeats, now=now, is_dead=is_dead), sources,
                    _deliveries(session, now=now, is_dead=is_dead), next_sends, queue=queue_status(session))
    problems, warnings = assess(report)
    return replace(report, needs_a_person=problems, warnings=warnings)


def _deliveries(session: Session, *, now: dt.datetime, is_dead: Callable[[str], bool]) -> Deliveries:
    since = now - RECENT
    held = {holder: count for holder, (count, _) in ledger.live_leases(session, now=now).items()}
    counted: dict[str, int] = {status: n for status, n in session.execute(
        select(Delivery.status, func.count()).where(Delivery.created_at >= since).group_by(Delivery.status))}
    count = func.count()
    return Deliveries(
        since=since,
        by_status={str(status): 0 for status in DELIVERY_STATUSES} | counted,
        retries_waiting=session.scalar(select(count).where(Delivery.status == DeliveryStatus.RETRY)) or 0,
        oldest_unsent_at=session.scalar(select(func.min(Delivery.created_at)).where(Delivery.status.in_(UNSENT))),
        expired_recently=session.scalar(
            select(count).where(Delivery.status == DeliveryStatus.EXPIRED, Delivery.updated_at >= since)) or 0,
        bounced_subscribers=session.scalar(select(count).where(Subscriber.bounce_count > 0)) or 0,
        suppressed_subscribers=session.scalar(select(count).where(Subscriber.status == SubscriberStatus.BOUNCED)) or 0,
        held=sum(held.values()),
        held_by_dead=sum(n for holder, n in held.items() if is_dead(holder)),
        unconfirmed=session.scalar(select(count).where(Delivery.status == DeliveryStatus.UNKNOWN,
                                                       Delivery.attempts >= ledger.UNKNOWN_MAX_ATTEMPTS)) or 0,
        interrupted=session.scalar(select(count).where(Delivery.status == DeliveryStatus.SENDING,
                                                       ledger.lease_free(now=now))) or 0,
    )


# --- deciding ----------------------------------------------------------------------------------


def daemon_state(heartbeats: Sequence[Heartbeat], *, now: dt.datetime,
                 is_dead: Callable[[str], bool] = lambda _process: False) -> Daemon:
    """Running, silent or not running (see the module's docstring), with the process it is about.

    A fresh beat from a process of this host that no longer exists (``is_dead``: SIGKILL, OOM) is silence at
    once, not "running" for SILENT_AFTER more."""
    alive = [h for h in heartbeats if h.stopped_at is None and now - h.beat_at <= SILENT_AFTER and not is_dead(h.id)]

    def crashed_beside(shown: Heartbeat) -> tuple[tuple[Heartbeat, bool], ...]:
        # A daemon that died while another ran (two hosts, or two by mistake) is a fault the survivor hid. One
        # that a later start followed is history: someone restarted the service after it.
        quiet = [h for h in heartbeats if h is not shown and h.stopped_at is None and h not in alive]
        return tuple((h, is_dead(h.id)) for h in sorted(quiet, key=lambda h: h.id)
                     if not any(other.started_at > h.beat_at for other in heartbeats))

    if alive:
        latest = max(alive, key=lambda h: h.beat_at)
        return Daemon(DaemonState.RUNNING, latest, others=tuple(sorted((h for h in alive if h is not latest), key=lambda h: h.id)),
                      crashed=crashed_beside(latest))
    if not heartbeats:
        return Daemon(DaemonState.NOT_RUNNING)
    # A crash followed by a clean start and stop is history, not silence: only the latest process counts.
    latest = max(heartbeats, key=lambda h: max(h.beat_at, h.stopped_at or h.beat_at))
    if latest.stopped_at:
        return Daemon(DaemonState.NOT_RUNNING, latest, crashed=crashed_beside(latest))
    return Daemon(DaemonState.SILENT, latest, gone=is_dead(latest.id), crashed=crashed_beside(latest))


def assess(report: Report) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What needs a person, and what is only worth a look: each a few words (the details are in the report)."""
    problems: list[str] = []
    warnings: list[str] = []
    now, process = report.now, report.daemon.process
    if report.daemon.state == DaemonState.SILENT and process is not None:
        gone = f", its process {process.id} is gone" if report.daemon.gone else ""
        problems.append(f"daemon silent for {span(now - process.beat_at)}{gone}")
    for crashed, process_gone in report.daemon.crashed:
        problems.append(f"daemon {crashed.id} stopped beating {span(now - crashed.beat_at)} ago without a clean stop"
                        f"{' (its process is gone)' if process_gone else ''}; start it again or clear it by starting any daemon")
    if process is not None and report.daemon.state != DaemonState.NOT_RUNNING:
        daemons = (process, *report.daemon.others)
        for daemon in daemons:  # each daemon's own jobs: one relay setting may be wrong on one host only
            of = f" of {daemon.id}" if len(daemons) > 1 else ""
            for job in daemon.jobs:
                if job.last_error and LOGIN_REFUSED.search(job.last_error):
                    problems.append(f"the relay refuses the login (job {job.id}{of})")
                elif job.last_error:
                    warnings.append(f"job {job.id}{of} failed on its last run")
    for source in report.sources:
        if source.consecutive_failures >= FAILING_AFTER:
            problems.append(f"source {source.label} failing ({source.consecutive_failures} in a row)")
        elif source.consecutive_failures:
            warnings.append(f"source {source.label} failed on its last fetch")
        if empty_weekday_listing(source) and source.last_success_at:
            warnings.append(f"source {source.label} was empty on a weekday ({_arxiv_day(source.last_success_at)}): "
                            "an arXiv holiday, or a fault at arXiv")
    deliveries = report.deliveries
    if deliveries.expired_recently:
        problems.append(f"{plural(deliveries.expired_recently, 'delivery', 'deliveries')} expired in the last "
                        f"{span(RECENT)} (not sent within the retry window)")
    if deliveries.unconfirmed:  # retried once already: a third copy could be a duplicate, so a person decides
        problems.append(f"{plural(deliveries.unconfirmed, 'digest')} the relay took twice without confirming "
                        "(a stall or a lost connection after the message): not sent again, it may have them; "
                        "check the relay's log for their Message-IDs")
    if deliveries.interrupted:
        warnings.append(f"{plural(deliveries.interrupted, 'delivery', 'deliveries')} left \"sending\" by a sender that "
                        "stopped mid-message: the next run records them unknown and sends them once more")
    if deliveries.held_by_dead:
        # With the job queue, 'digest' plans and queues only: a worker starting on this host takes them over.
        who = "the next 'newsletter worker' started on this host" if report.queue is not None else "the next 'newsletter digest'"
        warnings.append(f"{plural(deliveries.held_by_dead, 'delivery', 'deliveries')} held by a sender of this host that "
                        f"died: {who} sends them")
    if deliveries.oldest_unsent_at is not None and now - deliveries.oldest_unsent_at > STUCK_AFTER:
        warnings.append(f"a delivery has waited {span(now - deliveries.oldest_unsent_at)} unsent")
    if report.queue is not None:
        queues = report.queue["queues"]
        waiting = sum(q["waiting"] for name, q in queues.items() if name.startswith("send:"))
        if waiting and not report.queue["workers_seen"]:
            problems.append(f"{plural(waiting, 'send batch', 'send batches')} waiting and no worker seen in the last minute")
        if failed := sum(q["failed"] for q in queues.values()):
            warnings.append(f"{plural(failed, 'queued job')} failed (see the queue section)")
    return tuple(problems), tuple(warnings)


def empty_weekday_listing(source: SourceHealth) -> bool:
    """An arXiv listing whose last successful fetch was empty on a day arXiv lists papers (Monday to Friday, New York)."""
    return (source.kind == "arxiv-rss" and source.last_note == EMPTY_LISTING and source.last_success_at is not None
            and is_arxiv_weekday(source.last_success_at))


def span(delta: dt.timedelta) -> str:
    """A duration as people say it: ``40 s``, ``12 min``, ``3 h``, ``2 days``."""
    seconds = max(int(delta.total_seconds()), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} days"


def _arxiv_day(moment: dt.datetime) -> str:
    return f"{moment.replace(tzinfo=dt.UTC).astimezone(ARXIV_TIMEZONE):%a %Y-%m-%d} New York"


def _instant(value: Any) -> dt.datetime | None:
    """An ISO 8601 string from a heartbeat as naive UTC (naive strings are UTC); None if absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds") + "Z"  # stored naive UTC
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


__all__ = ["Daemon", "DaemonState", "Deliveries", "Heartbeat", "Job", "NextSend", "Report", "SourceHealth", "assess", "daemon_state",
           "empty_weekday_listing", "read_status", "span"]
