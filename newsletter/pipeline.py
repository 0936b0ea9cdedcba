"""The spine: ingest → score → render → send, for one issue date.

``run_digest`` reads top to bottom: open the connections to the relay (an unreachable relay stops
the run before anything is written), pick the subscribers due, score the day's papers for all of
them at once, record each subscriber's picks in the delivery ledger (committed before anything is
sent), then render and send every delivery not yet sent over a pool of connections, the ledger
written around each message (``newsletter.send.dispatch``). Running it again for the same date sends
nothing twice: the ledger row per subscriber per date is unique, and only pending, due retry and
(once) unknown deliveries are sent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import jinja2
from sqlalchemy.orm import Session, sessionmaker

from newsletter import tokens
from newsletter.db import repo
from newsletter.db.ledger import Ledger, RetryPolicy, recent_send_times, recover_interrupted
from newsletter.db.models import Subscriber, utcnow
from newsletter.errors import NewsletterError
from newsletter.records import Digest, Envelope, Example, Paper, Profile, RankedPaper
from newsletter.render.digest import DigestRenderer
from newsletter.render.mime import DkimKey, build_message
from newsletter.score import PaperIndex, rank_papers
from newsletter.send.dispatch import GroupCommitter, Job, RateLimiter, dispatch, one_line
from newsletter.send.mailer import Mailer, wire_address
from newsletter.settings import Settings

Progress = Callable[[int, int], None]  # (done, total)
SEND_BATCH = 500  # deliveries read, rendered and queued at a time


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


def day_end(issue_date: dt.date) -> dt.datetime:
    return dt.datetime.combine(issue_date + dt.timedelta(days=1), dt.time())


def score_subscribers(
    session: Session, *, settings: Settings, subscribers: list[Subscriber], issue_date: dt.date
) -> tuple[int, list[list[RankedPaper]]]:
    """Rank the papers first seen in the candidate window for each subscriber (pure scoring inside)."""
    picks: list[list[RankedPaper]] = [[] for _ in subscribers]
    end = day_end(issue_date)
    sent = repo.sent_paper_keys(session, subscriber_ids=[s.id for s in subscribers])
    examples = load_examples(session, subscribers=subscribers)
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
                examples=examples.get(subscribers[p].id, ()),
            )
            for p in positions
        ]
        similarity = semantic_similarity(papers, profiles) if settings.semantic else None
        index = PaperIndex.build(papers, now=end, trending_weight=settings.trending_weight,
                                 recency_penalty_per_day=settings.recency_penalty_per_day)
        ranked = rank_papers(index, profiles, min_score=settings.min_score, semantic=similarity)
        for position, subscriber_picks in zip(positions, ranked, strict=True):
            picks[position] = subscriber_picks
    return candidates, picks


def semantic_similarity(papers: Sequence[Paper], profiles: Sequence[Profile]):
    """profiles × papers cosine similarity from the optional sentence-embedding model."""
    from newsletter.errors import ConfigError
    from newsletter.score.semantic import SemanticModel

    if not SemanticModel.available():
        raise ConfigError("NEWSLETTER_SEMANTIC is on but the semantic extra is not installed: pip install '.[semantic]'")
    model = SemanticModel.load()
    return model.embed_profiles([p.preferences for p in profiles]) @ model.embed_papers(papers).T


def load_examples(session: Session, *, subscribers: list[Subscriber]) -> dict[int, tuple[Example, ...]]:
    """Each subscriber's seed papers (+1) and feedback ("more like this" +1, "less like this" -1)."""
    feedback = repo.feedback_for(session, subscriber_ids=[s.id for s in subscribers])
    seed_ids = {i for s in subscribers if s.preferences for i in s.preferences.seed_papers}
    seeds = repo.papers_by_arxiv_ids(session, ids=seed_ids)
    rated = repo.papers_by_id(session, ids={paper_id for rows in feedback.values() for paper_id, _ in rows})
    found: dict[int, tuple[Example, ...]] = {}
    for subscriber in subscribers:
        chosen = [Example(seeds[i], 1.0, "seed") for i in (subscriber.preferences.seed_papers if subscriber.preferences else [])
                  if i in seeds]
        chosen += [Example(rated[paper_id], float(value), "liked" if value > 0 else "disliked")
                   for paper_id, value in feedback.get(subscriber.id, ()) if paper_id in rated]
        if chosen:
            found[subscriber.id] = tuple(chosen)
    return found


def open_mailers(settings: Settings, connect: Callable[[], Mailer]) -> list[Mailer]:
    """One mailer per connection: the SMTP pool, or a single file/console/recording backend."""
    size = settings.smtp_pool_size if settings.email_backend == "smtp" else 1
    return [connect() for _ in range(size)]


async def run_digest(
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    connect: Callable[[], Mailer],
    templates: jinja2.Environment,
    issue_date: dt.date,
    only: str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> DigestRun:
    """Score, record, render and send the digests of ``issue_date``. ``dry_run`` writes and sends nothing."""
    run = DigestRun(issue_date)
    if dry_run:
        return plan_digests(settings=settings, sessions=sessions, issue_date=issue_date, only=only, dry_run=True, run=run)
    settings.require("secret_key", "from_address", purpose="sending digests")
    async with contextlib.AsyncExitStack() as stack:
        # Reach the relay before anything is written: an unreachable relay leaves the database as it was.
        mailers = [await stack.enter_async_context(m) for m in open_mailers(settings, connect)]
        plan_digests(settings=settings, sessions=sessions, issue_date=issue_date, only=only, dry_run=False, run=run)
        await send_due(settings=settings, sessions=sessions, mailers=mailers, templates=templates,
                       issue_date=issue_date, only=only, run=run, progress=progress)
    return run


def plan_digests(
    *, settings: Settings, sessions: sessionmaker[Session], issue_date: dt.date, only: str | None, dry_run: bool,
    run: DigestRun,
) -> DigestRun:
    """Pick papers for every due subscriber without a delivery yet and (unless dry) record them."""
    with sessions() as session:
        subscribers = [repo.get_subscriber(session, email=only)] if only else repo.list_subscribers(session, status="active")
        if only and subscribers[0].status != "active":
            run.errors.append(f"{subscribers[0].email} is {subscribers[0].status}, not active: nothing to send")
            return run
        served = set() if dry_run else repo.subscribers_with_delivery(session, issue_date=issue_date)
        due = [s for s in subscribers if is_due(s, issue_date) and s.id not in served]
        run.candidates, ranked = score_subscribers(session, settings=settings, subscribers=due, issue_date=issue_date)
        run.picks = [Pick(s.email, r) for s, r in zip(due, ranked, strict=True)]
        if dry_run:
            return run
        planned = [repo.PlannedDelivery(s.id, picks, "pending" if picks or settings.send_empty_digest else "empty")
                   for s, picks in zip(due, ranked, strict=True)]  # a quiet day sends no email
        repo.record_deliveries(session, issue_date=issue_date, planned=planned, message_domain=settings.from_domain)
        session.commit()
    return run


def dkim_key(settings: Settings) -> DkimKey | None:
    if settings.dkim_private_key_path is None:
        return None
    from newsletter.errors import ConfigError

    try:
        pem = settings.dkim_private_key_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"NEWSLETTER_DKIM_PRIVATE_KEY_PATH: cannot read {settings.dkim_private_key_path} ({exc.strerror})") from None
    return DkimKey(settings.dkim_selector, settings.dkim_domain or settings.from_domain, pem)


async def send_due(
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    mailers: Sequence[Mailer],
    templates: jinja2.Environment,
    issue_date: dt.date,
    run: DigestRun,
    only: str | None = None,
    progress: Progress | None = None,
) -> None:
    """Send every delivery of the date that is due, recording each outcome as it happens."""
    now = utcnow()
    with sessions() as session:
        recover_interrupted(session, now=now)
        session.commit()
        renderer = day_renderer(session, settings=settings, templates=templates, issue_date=issue_date)
        recent = recent_send_times(session, since=now - dt.timedelta(seconds=2), limit=max(int(settings.smtp_rate_per_s), 1))
        limiter = RateLimiter(settings.smtp_rate_per_s, recent=[t.replace(tzinfo=dt.UTC).timestamp() for t in recent])
        ledger = Ledger(session, policy=RetryPolicy(base_s=settings.retry_base_s, window_s=settings.retry_window_h * 3600,
                                                    bounce_limit=settings.bounce_limit))

        def write(started: list[int], finished: list) -> None:
            moment = utcnow()
            try:
                if started:
                    ledger.started(started, now=moment)
                if finished:
                    ledger.finished(finished, now=moment)
                session.commit()
            except Exception:
                session.rollback()  # the run stops; the outcomes not written are recovered at the next start
                raise

        done = 0

        def counted(_outcome: object) -> None:
            nonlocal done
            done += 1
            if progress:
                progress(done, done)

        jobs = _jobs(session, settings=settings, renderer=renderer, issue_date=issue_date, now=now, only=only,
                     dkim=dkim_key(settings))
        result = await dispatch(jobs, mailers=mailers, committer=GroupCommitter(write), limiter=limiter, on_outcome=counted)
    run.outcomes.update(result.outcomes)
    if ledger.expired:  # the outcome was "try again later", but the retry window is over
        run.outcomes["retry"] -= ledger.expired
        run.outcomes["expired"] += ledger.expired
        run.outcomes = +run.outcomes  # drop zero counts
    if result.error:
        run.errors.append(f"{result.error}; the remaining digests stay pending for the next run")


async def _jobs(
    session: Session, *, settings: Settings, renderer: DigestRenderer, issue_date: dt.date, now: dt.datetime,
    only: str | None, dkim: DkimKey | None,
) -> AsyncIterator[Job]:
    """Due deliveries in id order, a batch at a time, rendered from their recorded picks.

    A digest that cannot be built (its data, a render bug only its papers hit) becomes a job that
    fails alone, with the reason. Until one digest has been built those failures are held back: if
    the first BUILD_FAILURES_TO_STOP all fail (or every one of a smaller run, when more than one),
    it is a bug that hits everyone, and the run stops with all of them still pending.
    """
    papers: dict[int, Paper] = {}
    held: list[Job] = []  # failures before the first digest that could be built
    built = False
    after = 0
    while batch := repo.due_deliveries(session, issue_date=issue_date, now=now, after_id=after, limit=SEND_BATCH, email=only):
        after = batch[-1].id
        items = repo.delivery_items(session, delivery_ids=[d.id for d in batch])
        missing = {paper_id for rows in items.values() for paper_id, _, _ in rows} - papers.keys()
        papers.update(repo.papers_by_id(session, ids=missing))
        for delivery in batch:
            job = _job(delivery, settings=settings, renderer=renderer, picks=items[delivery.id], papers=papers, dkim=dkim)
            if job.failure is not None and not built:
                held.append(job)
                if len(held) >= BUILD_FAILURES_TO_STOP:
                    raise _no_digest_builds(held)
                continue
            built = True
            for failed in held:
                yield failed
            held = []
            yield job
    if len(held) > 1:
        raise _no_digest_builds(held)
    for failed in held:
        yield failed


BUILD_FAILURES_TO_STOP = 10  # digests failing to build before any succeeds: a bug for everyone, not one's data


def _no_digest_builds(held: Sequence[Job]) -> NewsletterError:
    return NewsletterError(f"none of the first {len(held)} digests could be built, so it is not one subscriber's data: "
                           f"{held[0].failure}")


def _job(delivery: repo.DueDelivery, *, settings: Settings, renderer: DigestRenderer,
         picks: Sequence[tuple[int, float, list[str]]], papers: dict[int, Paper], dkim: DkimKey | None) -> Job:
    """One delivery's message, or the reason it cannot be built."""
    recipient = settings.redirect_all_to or delivery.email
    sender = settings.from_address or ""
    try:
        email = renderer.render(digest_for(settings=settings, delivery=delivery, picks=recorded_picks(picks, papers)))
        address, smtputf8 = wire_address(recipient)  # an IDN domain as xn--…; UTF-8 only before the @
        data = build_message(email, from_address=sender, list_name=settings.list_name, list_id=f"digest.{settings.from_domain}",
                             date=utcnow(), to=recipient if smtputf8 else address, dkim_key=dkim)
    except Exception as exc:  # this digest fails alone, with the reason; the others go on
        return Job(delivery.id, delivery.subscriber_id, Envelope(sender, recipient, delivery.message_id, b""),
                   failure=f"the message could not be built ({one_line(exc)})")
    return Job(delivery.id, delivery.subscriber_id, Envelope(sender, recipient, delivery.message_id, data))


def day_renderer(session: Session, *, settings: Settings, templates: jinja2.Environment, issue_date: dt.date) -> DigestRenderer:
    """The renderer of one issue date, with that day's "trending today" papers."""
    trending = repo.trending_papers(session, since=day_end(issue_date) - dt.timedelta(days=settings.candidate_window_days),
                                    limit=settings.trending_count)
    return DigestRenderer(env=templates, list_name=settings.list_name, issue_date=issue_date, trending=trending)


def recorded_picks(items: Sequence[tuple[int, float, list[str]]], papers: dict[int, Paper]) -> tuple[RankedPaper, ...]:
    """A delivery's picks as recorded in the ledger: (paper id, score, reasons) → RankedPaper."""
    return tuple(RankedPaper(papers[paper_id], score, tuple(reasons)) for paper_id, score, reasons in items)


def digest_for(*, settings: Settings, delivery: repo.DueDelivery, picks: Sequence[RankedPaper],
               now: dt.datetime | None = None) -> Digest:
    """One delivery's digest with its signed links.

    Each paper's "more / less like this" link names the subscriber and that paper, issued at the
    start of the issue date (UTC), or at ``now`` (aware UTC) while that is still ahead: every render
    of a delivery carries the same links, and they expire ``feedback_link_days`` after its date.
    """
    secret = settings.secret_key or ""
    base = settings.base_url.rstrip("/")

    def token(purpose: str) -> str:
        return tokens.make_token(secret_key=secret, purpose=purpose, subscriber_id=delivery.subscriber_id)

    day_start = dt.datetime.combine(delivery.issue_date, dt.time(), dt.UTC)
    feedback = tokens.feedback_signer(secret_key=secret, issued_at=min(day_start, now or dt.datetime.now(dt.UTC)))

    def feedback_url(paper: Paper) -> str:
        if paper.id is None:  # not stored: nothing a link could name
            return ""
        return f"{base}/feedback/{feedback.token(subscriber_id=delivery.subscriber_id, paper_id=paper.id)}/{paper.id}"

    return Digest(
        email=delivery.email,
        issue_date=delivery.issue_date,
        papers=tuple(picks),
        unsubscribe_url=f"{base}/unsubscribe/{token(tokens.UNSUBSCRIBE)}",
        preferences_url=f"{base}/preferences/{token(tokens.PREFERENCES)}",
        view_url=f"{base}/digest/{delivery.issue_date.isoformat()}/{token(tokens.VIEW)}",
        message_id=delivery.message_id,
        feedback_urls=tuple(feedback_url(pick.paper) for pick in picks),
    )
