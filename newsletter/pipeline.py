"""The spine: ingest → score → render → send, for one issue date.

``run_digest`` reads top to bottom: pick the subscribers due, score the day's papers for all of
them at once, record each subscriber's picks in the delivery ledger (committed before anything is
sent), then render and send every delivery not yet sent, committing around each SMTP transaction.
Running it again for the same date sends nothing twice: the ledger row per subscriber per date
is unique, and only pending / retry / (once) unknown deliveries are sent.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import jinja2
from sqlalchemy.orm import Session, sessionmaker

from newsletter import tokens
from newsletter.db import repo
from newsletter.db.models import Delivery, Subscriber, utcnow
from newsletter.records import Digest, Profile, RankedPaper
from newsletter.render.digest import render_digest
from newsletter.render.message import build_message
from newsletter.score import PaperIndex, rank_papers
from newsletter.send.mailer import Mailer, PermanentFailure, TemporaryFailure, UnknownOutcome
from newsletter.settings import Settings

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class Pick:
    """What one subscriber gets (or would get) on the issue date."""

    email: str
    papers: list[RankedPaper]


@dataclass
class DigestRun:
    issue_date: dt.date
    candidates: int = 0
    picks: list[Pick] = field(default_factory=list)  # scored in this run
    outcomes: Counter[str] = field(default_factory=Counter)  # delivery status → count, after sending
    errors: list[str] = field(default_factory=list)


def is_due(subscriber: Subscriber, issue_date: dt.date) -> bool:
    """Daily subscribers every day; weekly ones on Mondays."""
    return subscriber.frequency != "weekly" or issue_date.weekday() == 0


def window_days(subscriber: Subscriber, *, daily_days: int) -> int:
    """How far back a digest looks: the daily window, or a whole week for weekly subscribers."""
    return max(daily_days, 7) if subscriber.frequency == "weekly" else daily_days


def score_subscribers(
    session: Session, *, settings: Settings, subscribers: list[Subscriber], issue_date: dt.date
) -> tuple[int, list[list[RankedPaper]]]:
    """Rank the papers first seen in the candidate window for each subscriber (pure scoring inside)."""
    picks: list[list[RankedPaper]] = [[] for _ in subscribers]
    end = dt.datetime.combine(issue_date + dt.timedelta(days=1), dt.time())
    sent = repo.sent_paper_keys(session, subscriber_ids=[s.id for s in subscribers])
    candidates = 0
    by_window: dict[int, list[int]] = {}
    for position, subscriber in enumerate(subscribers):
        by_window.setdefault(window_days(subscriber, daily_days=settings.candidate_window_days), []).append(position)
    for days, positions in by_window.items():
        papers = repo.papers_first_seen_between(session, start=end - dt.timedelta(days=days), end=end)
        candidates = max(candidates, len(papers))
        profiles = [
            Profile(
                subscriber_id=subscribers[p].id,
                email=subscribers[p].email,
                preferences=repo.preferences_record(subscribers[p].preferences),
                max_papers=subscribers[p].max_papers,
                already_sent=frozenset(sent.get(subscribers[p].id, ())),
            )
            for p in positions
        ]
        for position, ranked in zip(positions, rank_papers(PaperIndex.build(papers), profiles, min_score=settings.min_score), strict=True):
            picks[position] = ranked
    return candidates, picks


async def run_digest(
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    mailer: Mailer,
    templates: jinja2.Environment,
    issue_date: dt.date,
    only: str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> DigestRun:
    """Score, record, render and send the digests of ``issue_date``. ``dry_run`` writes and sends nothing."""
    run = DigestRun(issue_date)
    if dry_run:
        return _score_and_record(settings=settings, sessions=sessions, issue_date=issue_date, only=only, dry_run=True, run=run)
    settings.require("secret_key", "from_address", purpose="sending digests")
    # Reach the relay before anything is written: an unreachable relay leaves the database as it was.
    async with mailer:
        _score_and_record(settings=settings, sessions=sessions, issue_date=issue_date, only=only, dry_run=False, run=run)
        await send_pending(settings=settings, sessions=sessions, mailer=mailer, templates=templates,
                           issue_date=issue_date, only=only, run=run, progress=progress)
    return run


def _score_and_record(
    *, settings: Settings, sessions: sessionmaker[Session], issue_date: dt.date, only: str | None, dry_run: bool,
    run: DigestRun,
) -> DigestRun:
    """Pick papers for every due subscriber without a delivery yet and (unless dry) record them."""
    with sessions() as session:
        subscribers = [repo.get_subscriber(session, email=only)] if only else repo.list_subscribers(session, status="active")
        if only and subscribers[0].status != "active":
            run.errors.append(f"{subscribers[0].email} is {subscribers[0].status}, not active: nothing to send")
            return run
        already = repo.deliveries_on(session, issue_date=issue_date)
        due = [s for s in subscribers if is_due(s, issue_date) and (dry_run or s.id not in already)]
        run.candidates, ranked = score_subscribers(session, settings=settings, subscribers=due, issue_date=issue_date)
        run.picks = [Pick(s.email, r) for s, r in zip(due, ranked, strict=True)]
        if dry_run:
            return run
        for subscriber, picks in zip(due, ranked, strict=True):
            status = "pending" if picks or settings.send_empty_digest else "empty"  # quiet day: no email
            repo.create_delivery(session, subscriber_id=subscriber.id, issue_date=issue_date, picks=picks,
                                 status=status, message_domain=settings.from_domain)
        session.commit()
    return run


async def send_pending(
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    mailer: Mailer,
    templates: jinja2.Environment,
    issue_date: dt.date,
    run: DigestRun,
    only: str | None = None,
    progress: Progress | None = None,
) -> None:
    """Send every delivery of the date that is not sent yet, recording each outcome as it happens."""
    with sessions() as session:
        repo.mark_interrupted_sends(session)
        session.commit()
        deliveries = repo.deliveries_to_send(session, issue_date=issue_date)
        subscribers = {s.id: s for s in repo.list_subscribers(session)}
        if only:
            deliveries = [d for d in deliveries if subscribers[d.subscriber_id].email == only.strip().lower()]
        for done, delivery in enumerate(deliveries, start=1):
            subscriber = subscribers[delivery.subscriber_id]
            message = build_message(
                render_digest(digest_for(session, settings=settings, delivery=delivery, subscriber=subscriber),
                              env=templates, list_name=settings.list_name),
                from_address=settings.from_address or "",
                list_name=settings.list_name,
                list_id=f"digest.{settings.from_domain}",
                date=utcnow(),
                to=settings.redirect_all_to,
            )
            delivery.status, delivery.attempts = "sending", delivery.attempts + 1
            session.commit()  # from here until the next commit, a crash leaves "sending" → unknown
            await _send_one(mailer, message, delivery, sender=settings.from_address or "",
                            recipient=settings.redirect_all_to or subscriber.email)
            session.commit()
            run.outcomes[delivery.status] += 1
            if progress:
                progress(done, len(deliveries))


async def _send_one(mailer: Mailer, message, delivery: Delivery, *, sender: str, recipient: str) -> None:  # noqa: ANN001
    try:
        await mailer.send(message, sender=sender, recipient=recipient)
    except TemporaryFailure as exc:
        delivery.status, delivery.last_error = "retry", str(exc)
    except PermanentFailure as exc:
        delivery.status, delivery.last_error = "failed", str(exc)
    except UnknownOutcome as exc:
        delivery.status, delivery.last_error = "unknown", str(exc)
    else:
        delivery.status, delivery.last_error, delivery.sent_at = "sent", None, utcnow()


def digest_for(session: Session, *, settings: Settings, delivery: Delivery, subscriber: Subscriber) -> Digest:
    secret = settings.secret_key or ""
    base = settings.base_url.rstrip("/")
    unsubscribe = tokens.make_token(secret_key=secret, purpose=tokens.UNSUBSCRIBE, subscriber_id=subscriber.id)
    preferences = tokens.make_token(secret_key=secret, purpose=tokens.PREFERENCES, subscriber_id=subscriber.id)
    return Digest(
        email=subscriber.email,
        issue_date=delivery.issue_date,
        papers=tuple(repo.digest_papers(session, delivery=delivery)),
        unsubscribe_url=f"{base}/unsubscribe/{unsubscribe}",
        preferences_url=f"{base}/preferences/{preferences}",
        message_id=delivery.message_id,
    )
