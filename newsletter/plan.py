"""Planning: whose digest is due, and what goes in it. Recorded in the ledger before anything is sent.

Each subscriber carries ``next_send_at``, their next send moment in UTC (``newsletter.schedule``
decides it from their zone, hour, minute and frequency). A planning pass asks the database for
those due (by index, in batches), and for each walks their schedule up to now:

- an issue whose local day ended before anyone planned it (the daemon was down) is recorded
  ``missed``; its papers roll into the next digest, whose window reaches back to the last one planned;
- the issue due now is scored (papers first seen in its window, before its send moment, never sent
  to them before) and recorded ``pending``, or ``empty`` on a quiet day;
- ``next_send_at`` moves on to the next send moment.

Claims: on PostgreSQL the due subscribers are locked as they are read (``FOR UPDATE SKIP LOCKED``),
so concurrent planners split them. On SQLite a batch is scored outside the write lock and recorded
only for those whose ``next_send_at`` is still what it read (``plan_in_batches``): concurrent
planners may score the same subscribers, and the first to record has them. Either way the ledger's
one-delivery-per-subscriber-per-local-date key makes a second plan of the same issue a no-op.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from newsletter import schedule
from newsletter.db import embeddings, ledger, repo
from newsletter.db.ledger import PlannedDelivery
from newsletter.db.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus, aware, naive, utcnow
from newsletter.errors import NewsletterError
from newsletter.records import Example, Paper, Profile, RankedPaper
from newsletter.runtime import Runtime
from newsletter.score import PaperIndex, learn, rank_papers, semantic
from newsletter.settings import Settings

logger = logging.getLogger(__name__)
PLAN_BATCH = 2_000  # due subscribers claimed, scored and recorded per transaction
MAX_MISSED_RECORDED = 31  # after a longer outage, older issues are skipped without a row each
EMBED_AHEAD_DAYS = 8  # papers first seen this recently can still be picked (a weekly digest's window and a day)
Window = tuple[dt.datetime, dt.datetime]  # [start, end) in naive UTC


@dataclass
class Pick:
    """What one subscriber gets (or would get) in the issue of ``issue_date`` (their local date)."""

    email: str
    papers: list[RankedPaper]
    issue_date: dt.date | None = None


@dataclass
class PlanReport:
    due: int = 0  # digests that were due and got planned (pending or empty)
    served: int = 0  # of those, with papers
    empty: int = 0  # quiet days: nothing above the subscriber's threshold
    missed: int = 0  # issues whose local day ended before they were planned
    candidates: int = 0  # papers in the largest window scored
    picks: list[Pick] = field(default_factory=list)


AfterRecord = Callable[[Session, set[tuple[int, dt.date]]], object]


def plan_due(runtime: Runtime, *, now: dt.datetime, keep_picks: bool = False,
             after_record: AfterRecord | None = None, stopped: Callable[[], bool] = lambda: False,
             batch: int | None = None, batches: int | None = None) -> PlanReport:
    """Plan every digest due at ``now`` (aware), ``batch`` subscribers at a time (default PLAN_BATCH), or
    only ``batches`` batches of them. See ``plan_in_batches``."""
    report = PlanReport()
    for planned, so_far in enumerate(plan_in_batches(runtime, now=now, keep_picks=keep_picks, after_record=after_record,
                                                     stopped=stopped, batch=batch), start=1):
        report = so_far
        if planned == batches:
            break
    return report


def plan_in_batches(runtime: Runtime, *, now: dt.datetime, keep_picks: bool = False,
                    after_record: AfterRecord | None = None, stopped: Callable[[], bool] = lambda: False,
                    batch: int | None = None) -> Iterator[PlanReport]:
    """Plan every digest due at ``now`` (aware), ``batch`` subscribers at a time; yields the report so far
    after each batch is committed (its deliveries can be claimed from then on).

    ``after_record(session, recorded)`` runs in each batch's transaction with the (subscriber id, issue
    date) pairs it recorded: the job queue enqueues their send batches there, so rows and jobs commit together.
    ``stopped()`` (Ctrl-C, SIGTERM) is asked between batches: what is planned is committed, the rest stays due.

    On SQLite a batch is three transactions, so that the database's one write lock is never held while
    it scores (a sender beside it commits each message, and waited on it for the whole batch): a short
    write takes the batch (older unsent digests give way); the scoring reads; a short write records
    the picks of those whose next send moment is still the one read (another planner that got there
    first has moved it: theirs). On PostgreSQL a batch is one transaction: its rows are locked as they
    are read (``FOR UPDATE SKIP LOCKED``), and nothing else waits on them.
    """
    report = PlanReport()
    indexes: dict[Window, tuple[list[Paper], PaperIndex]] = {}  # one per window for the whole pass, not per batch
    schedule_unscheduled(runtime, now=now)
    optimistic = runtime.engine.dialect.name == "sqlite"
    while not stopped():
        with runtime.sessions() as session:
            ledger.begin_write(session)
            subscribers = repo.due_readers(session, now=naive(now), limit=batch or PLAN_BATCH)
            if not subscribers:
                session.commit()
                return
            walked = _walk_batch(session, subscribers, now=now)
            if optimistic:
                session.commit()
            # On SQLite, new sentence vectors stored on the way are committed at once: an insert takes the write lock
            # until the commit, and the rest of the scoring must not hold it.
            scored = _score_batch(runtime, session, walked, indexes=indexes, after_store=session.commit if optimistic else None)
            if optimistic:
                session.commit()
                ledger.begin_write(session)
                scored = scored.still_due(session)
            recorded = _record_batch(runtime, session, scored, report=report, keep_picks=keep_picks)
            if after_record is not None:
                after_record(session, recorded)
            session.commit()
        yield report


def schedule_unscheduled(runtime: Runtime, *, now: dt.datetime) -> int:
    """Give active subscribers without a next send moment one (rows from before schedules existed, or
    written by hand): their next send after ``now``."""
    with runtime.sessions() as session:
        ledger.begin_write(session)
        rows = list(session.scalars(select(Subscriber).where(Subscriber.status == SubscriberStatus.ACTIVE,
                                                              Subscriber.next_send_at.is_(None))).unique())
        scheduled = 0
        for subscriber in rows:
            try:
                subscriber.next_send_at = repo.first_send_at(repo.schedule_of(subscriber), now=naive(now))
                scheduled += 1
            except NewsletterError as exc:
                logger.warning("subscriber %s has an invalid schedule (%s); skipped until it is fixed", subscriber.email, exc)
        session.commit()
    return scheduled


@dataclass
class _Batch:
    """A batch of due subscribers walked up to now: what to record for each, once scored."""

    read_at: dict[int, dt.datetime]  # subscriber id → the next send moment the batch was read with
    moves: list[tuple[int, dt.datetime | None]]  # (subscriber id, their next send moment; None: a schedule to fix)
    missed: list[PlannedDelivery]
    due: list[tuple[repo.Reader, schedule.Schedule, schedule.DueIssue]]
    picks: list[list[RankedPaper]] = field(default_factory=list)  # of ``due``, in its order, once scored
    candidates: int = 0  # papers in the largest window scored

    def still_due(self, session: Session) -> _Batch:
        """The batch without the subscribers whose next send moment is no longer the one it was read with
        (another planner recorded their digest meanwhile), or who are no longer active."""
        current = repo.next_send_moments(session, subscriber_ids=list(self.read_at))
        kept = {i for i, when in self.read_at.items() if i in current and current[i] == when}
        if len(kept) == len(self.read_at):
            return self
        logger.info("%s of %s subscribers were planned by another run meanwhile", len(self.read_at) - len(kept), len(self.read_at))
        due = [(entry, picks) for entry, picks in zip(self.due, self.picks, strict=True) if entry[0].id in kept]
        return replace(self, read_at={i: w for i, w in self.read_at.items() if i in kept},
                       moves=[m for m in self.moves if m[0] in kept], missed=[m for m in self.missed if m.subscriber_id in kept],
                       due=[entry for entry, _ in due], picks=[picks for _, picks in due])


def _walk_batch(session: Session, subscribers: list[tuple[repo.Reader, dt.datetime]], *, now: dt.datetime) -> _Batch:
    """Walk each subscriber's schedule up to now, and let their older unsent digests give way to the one due now."""
    batch = _Batch({s.id: at for s, at in subscribers}, [], [], [])
    walks: dict[tuple[schedule.Schedule, dt.datetime], _Walk] = {}  # subscribers share a few schedules and moments
    for subscriber, next_send_at in subscribers:
        try:
            plan = repo.schedule_of(subscriber)
        except NewsletterError as exc:  # a schedule written by hand that makes no sense: skip them, not everyone
            logger.warning("subscriber %s has an invalid schedule (%s); skipped until it is fixed", subscriber.email, exc)
            batch.moves.append((subscriber.id, None))
            continue
        send_at = aware(next_send_at)
        if (walk := walks.get((plan, send_at))) is None:
            walk = walks[(plan, send_at)] = _walk(plan, send_at, now=now)
        batch.missed.extend(PlannedDelivery(subscriber.id, issue.issue_date, (), DeliveryStatus.MISSED, naive(issue.send_at))
                            for issue in walk.missed)
        if walk.due is not None:
            batch.due.append((subscriber, plan, walk.due))
        batch.moves.append((subscriber.id, naive(walk.next_send_at)))
    ledger.supersede_unsent(session, issues=[(s.id, issue.issue_date) for s, _, issue in batch.due], now=utcnow())
    return batch


def _score_batch(runtime: Runtime, session: Session, batch: _Batch, *,
                 indexes: dict[Window, tuple[list[Paper], PaperIndex]], after_store: Callable[[], None] | None) -> _Batch:
    """The picks of each subscriber due, among the papers of their window (back to their last digest planned)."""
    settings = runtime.settings
    last = ledger.last_planned_send(session, subscriber_ids=[s.id for s, _, _ in batch.due])
    windows = []
    known: dict[tuple[schedule.Schedule, dt.date, dt.datetime | None], Window] = {}
    for subscriber, plan, issue in batch.due:
        previous = last.get(subscriber.id)
        if (window := known.get((plan, issue.issue_date, previous))) is None:
            window = known[(plan, issue.issue_date, previous)] = naive_window(schedule.candidate_window(
                plan, issue.issue_date, daily_days=settings.candidate_window_days, last_sent=aware(previous) if previous else None))
        windows.append(window)
    batch.candidates, batch.picks = score_subscribers(runtime, session, subscribers=[s for s, _, _ in batch.due],
                                                      windows=windows, indexes=indexes, after_store=after_store)
    return batch


def _record_batch(runtime: Runtime, session: Session, batch: _Batch, *, report: PlanReport,
                  keep_picks: bool) -> set[tuple[int, dt.date]]:
    settings = runtime.settings
    report.candidates = max(report.candidates, batch.candidates)
    repo.move_next_send_at(session, moves=batch.moves)
    planned = list(batch.missed)
    for (subscriber, _, issue), picks in zip(batch.due, batch.picks, strict=True):
        status = DeliveryStatus.PENDING if picks or settings.send_empty_digest else DeliveryStatus.EMPTY  # quiet: no email
        planned.append(PlannedDelivery(subscriber.id, issue.issue_date, picks, status, naive(issue.send_at)))
    recorded = ledger.record_deliveries(session, planned=planned, message_domain=settings.from_domain, now=utcnow())
    emails = {subscriber.id: subscriber.email for subscriber, _, _ in batch.due}
    for entry in planned:  # only what this pass recorded: another run (or --only) may have planned some first
        if (entry.subscriber_id, entry.issue_date) not in recorded:
            continue
        if entry.status == DeliveryStatus.MISSED:
            report.missed += 1
            continue
        report.due += 1
        report.empty += entry.status == DeliveryStatus.EMPTY
        report.served += bool(entry.picks)
        if keep_picks:
            report.picks.append(Pick(emails[entry.subscriber_id], list(entry.picks), entry.issue_date))
    return recorded


@dataclass(frozen=True, slots=True)
class _Walk:
    """A schedule walked from a stored next send moment up to now: the issues missed on the way (at most
    MAX_MISSED_RECORDED), the one due now if any, and the next send moment to store."""

    missed: tuple[schedule.DueIssue, ...]
    due: schedule.DueIssue | None
    next_send_at: dt.datetime


def _walk(plan: schedule.Schedule, send_at: dt.datetime, *, now: dt.datetime) -> _Walk:
    missed: list[schedule.DueIssue] = []
    for walked in range(MAX_MISSED_RECORDED + 2):
        issue = schedule.issue_for(plan, send_at)
        if now < issue.missed_at:
            if issue.send_at <= now:
                return _Walk(tuple(missed), issue, schedule.next_send_at(plan, after=issue.send_at))
            return _Walk(tuple(missed), None, send_at)
        if walked < MAX_MISSED_RECORDED:
            missed.append(issue)
        send_at = schedule.next_send_at(plan, after=issue.send_at if walked < MAX_MISSED_RECORDED else now - dt.timedelta(days=1))
    return _Walk(tuple(missed), None, send_at)


def naive_window(window: tuple[dt.datetime, dt.datetime]) -> Window:
    return naive(window[0]), naive(window[1])


def window_now(subscriber: repo.Reader, *, now: dt.datetime, daily_days: int, last_sent: dt.datetime | None) -> Window:
    """Candidates of a digest made now, off schedule (``--only``, a dry run): the usual days back, or back to the last digest."""
    days = max(daily_days, 7) if subscriber.frequency == schedule.Frequency.WEEKLY else daily_days
    start = naive(now) - dt.timedelta(days=days)
    if last_sent is not None:
        start = max(min(start, last_sent), naive(now) - dt.timedelta(days=schedule.MAX_ROLLOVER_DAYS))
    return start, naive(now)


def plan_now(runtime: Runtime, *, email: str, now: dt.datetime, after_record: AfterRecord | None = None) -> PlanReport:
    """Plan ``email``'s digest of their local date at ``now``, whatever their hour (at most one per local date)."""
    report = PlanReport()
    with runtime.sessions() as session:
        ledger.begin_write(session)
        subscriber = repo.get_subscriber(session, email=email)
        if subscriber.status != SubscriberStatus.ACTIVE:
            raise NewsletterError(f"{subscriber.email} is {subscriber.status}, not active: nothing to send")
        issue_date = schedule.local_date(subscriber.timezone, now)
        exists = session.scalar(select(Delivery.id).where(Delivery.subscriber_id == subscriber.id, Delivery.issue_date == issue_date))
        if exists is None:
            last = ledger.last_planned_send(session, subscriber_ids=[subscriber.id]).get(subscriber.id)
            reader = repo.reader_of(subscriber)
            window = window_now(reader, now=now, daily_days=runtime.settings.candidate_window_days, last_sent=last)
            report.candidates, [picks] = score_subscribers(runtime, session, subscribers=[reader], windows=[window])
            status = DeliveryStatus.PENDING if picks or runtime.settings.send_empty_digest else DeliveryStatus.EMPTY
            recorded = ledger.record_deliveries(session, message_domain=runtime.settings.from_domain, now=utcnow(),
                                                planned=[PlannedDelivery(subscriber.id, issue_date, picks, status, naive(now))])
            if recorded:
                report.due, report.empty, report.served = 1, int(status == DeliveryStatus.EMPTY), int(bool(picks))
                report.picks.append(Pick(subscriber.email, picks, issue_date))
                if after_record is not None:
                    after_record(session, recorded)
        session.commit()
    return report


def preview_next(runtime: Runtime, *, now: dt.datetime, email: str | None = None) -> PlanReport:
    """Every active subscriber's next digest (or ``email``'s), scored now, whatever their hour; nothing recorded
    but the sentence vectors it had to embed."""
    report = PlanReport()
    with runtime.sessions() as session:
        subscribers = [repo.reader_of(repo.get_subscriber(session, email=email))] if email else repo.active_readers(session)
        last = ledger.last_planned_send(session, subscriber_ids=[s.id for s in subscribers])
        windows = [window_now(s, now=now, daily_days=runtime.settings.candidate_window_days, last_sent=last.get(s.id))
                   for s in subscribers]
        report.candidates, ranked = score_subscribers(runtime, session, subscribers=subscribers, windows=windows)
        # Subscribers share a few schedules and send moments: each issue date is worked out once (a Schedule
        # checks its fields as it is made, and walking one to its next send costs ~20 µs).
        issue_dates: dict[tuple[object, ...], dt.date] = {}
        for subscriber, picks in zip(subscribers, ranked, strict=True):
            planned = last.get(subscriber.id)
            key = (subscriber.timezone, subscriber.send_hour, subscriber.send_minute, subscriber.frequency,
                   subscriber.send_weekday, planned)
            if key not in issue_dates:
                issue_dates[key] = next_issue_date(repo.schedule_of(subscriber), now=now,
                                                   planned=planned.replace(tzinfo=dt.UTC) if planned else None)
            report.picks.append(Pick(subscriber.email, picks, issue_dates[key]))
        # Nothing is recorded but the sentence vectors embedded on the way: a cache, kept so that the next
        # dry run and the real plan find them (a dry run of 100,000 new subscribers' sentences embeds for
        # minutes; without this, every dry run would again).
        session.commit()
    report.due, report.served = len(report.picks), sum(1 for pick in report.picks if pick.papers)
    return report


def next_issue_date(plan: schedule.Schedule, *, now: dt.datetime, planned: dt.datetime | None = None) -> dt.date:
    """The local date of a schedule's next digest: today's if it is due now, else the next send day's. ``planned``
    (aware): the latest digest recorded; once that local day has its digest (sent at its hour, or earlier with
    --only), the next is the first one after that day."""
    due = schedule.due_issue(plan, now)
    issue = due.issue_date if due is not None else schedule.issue_for(plan, schedule.next_send_at(plan, after=now)).issue_date
    if planned is not None and (planned_date := schedule.local_date(plan.timezone, planned)) >= issue:
        after = max(now, schedule.end_of_local_day(plan.timezone, planned_date))
        issue = schedule.local_date(plan.timezone, schedule.next_send_at(plan, after=after))
    return issue


def score_subscribers(
    runtime: Runtime, session: Session, *, subscribers: Sequence[repo.Reader], windows: Sequence[Window],
    indexes: dict[Window, tuple[list[Paper], PaperIndex]] | None = None, after_store: Callable[[], None] | None = None,
) -> tuple[int, list[list[RankedPaper]]]:
    """Rank the papers first seen in each subscriber's window (subscribers sharing a window are scored together).

    ``indexes`` keeps each window's papers and index for the caller's next batches (same papers, same index).
    ``after_store``: called after sentence vectors embedded on the way are stored (planning on SQLite commits
    there, so that it holds the write lock for the insert only).
    """
    indexes = {} if indexes is None else indexes
    settings = runtime.settings
    picks: list[list[RankedPaper]] = [[] for _ in subscribers]
    if not subscribers:
        return 0, picks
    sent = repo.sent_paper_keys(session, subscriber_ids=[s.id for s in subscribers])
    examples = load_examples(session, subscribers=subscribers)
    by_window: dict[Window, list[int]] = {}
    for position, window in enumerate(windows):
        by_window.setdefault(window, []).append(position)
    _index_windows(settings, session, [w for w in by_window if w not in indexes], indexes)
    candidates = 0
    for (start, end), positions in by_window.items():
        papers, index = indexes[(start, end)]
        candidates = max(candidates, len(papers))
        profiles = [
            Profile(
                subscriber_id=subscribers[p].id,
                email=subscribers[p].email,
                preferences=subscribers[p].preferences,
                max_papers=subscribers[p].max_papers,
                already_sent=frozenset(sent.get(subscribers[p].id, ())),
                examples=examples.get(subscribers[p].id, ()),
            )
            for p in positions
        ]
        ranked = rank_window(runtime, papers, index, profiles, session=session, after_store=after_store)
        for position, subscriber_picks in zip(positions, ranked, strict=True):
            picks[position] = subscriber_picks
    return candidates, picks


def _index_windows(settings: Settings, session: Session, windows: Sequence[Window],
                   indexes: dict[Window, tuple[list[Paper], PaperIndex]]) -> None:
    """Add each window's papers and index to ``indexes``: the papers from one query for them all, and
    one text index per distinct set of papers. Windows end at each subscriber's send moment, so send
    minutes spread over the hour made as many windows as minutes, mostly with the same papers: one
    index each took ~80 s and 3 GB for 4,000 subscribers."""
    if not windows:
        return
    pool = repo.papers_first_seen_between(session, start=min(s for s, _ in windows), end=max(e for _, e in windows))
    built = {tuple(p.key for p in papers): index for papers, index in indexes.values()}
    for start, end in windows:
        papers = [p for p in pool if p.first_seen_at is not None and start <= p.first_seen_at < end]
        key = tuple(p.key for p in papers)
        if (same := built.get(key)) is not None:
            index = same.as_of(end, trending_weight=settings.trending_weight,
                               recency_penalty_per_day=settings.recency_penalty_per_day)
        else:
            index = built[key] = window_index(settings, papers, end=end)
        indexes[(start, end)] = papers, index


def window_index(settings: Settings, papers: Sequence[Paper], *, end: dt.datetime) -> PaperIndex:
    """The index of a window's candidates, with its trending boost and age penalty as of ``end`` (naive UTC)."""
    return PaperIndex.build(papers, now=end, trending_weight=settings.trending_weight,
                            recency_penalty_per_day=settings.recency_penalty_per_day)


def rank_window(runtime: Runtime, papers: Sequence[Paper], index: PaperIndex, profiles: Sequence[Profile], *,
                session: Session | None, after_store: Callable[[], None] | None = None) -> list[list[RankedPaper]]:
    """The profiles' picks among one window's papers, as a digest ranks them: lexical, fused with meaning
    when the model is on, re-ordered by a reader's own model (``score.learn``). Without a ``session``
    (a preview) new embeddings are not stored."""
    settings = runtime.settings
    embedded = (embed_for_ranking(runtime, papers, profiles, session=session, after_store=after_store)
                if settings.semantic and papers else None)
    if embedded is None:
        return rank_papers(index, profiles, min_score=settings.min_score, semantic=None)
    return rank_learned(index, profiles, similarity=embedded.similarity, vectors=embedded.vectors, min_score=settings.min_score)


def embed_new_papers(runtime: Runtime, *, now: dt.datetime) -> int:
    """Store the sentence vectors of the papers the next digests can pick (first seen in the last
    EMBED_AHEAD_DAYS), so that planning finds them stored. Run after each ingest: otherwise the
    morning's first plan embeds the whole new listing while the subscribers due wait (the int8 model
    takes ~0.1 s of CPU a paper; 211 papers made a 5,000-subscriber run 2.5x longer). Returns how many
    papers were embedded now: 0 with the semantic ranker off or its model not installed."""
    if not runtime.settings.semantic:
        return 0
    model = runtime.semantic_model()
    if model is None:
        return 0
    with runtime.sessions() as session:
        papers = repo.papers_first_seen_between(session, start=naive(now) - dt.timedelta(days=EMBED_AHEAD_DAYS),
                                                end=naive(now) + dt.timedelta(days=1))
        stored = embeddings.paper_vectors(session, model=model.name,
                                          papers={p.id: embeddings.paper_text(p) for p in papers if p.id is not None})
        missing = [p for p in papers if p.id is not None and p.id not in stored]
        if missing:
            embeddings.embed_papers(session, model=model, papers=missing)
            session.commit()
    return len(missing)


@dataclass(frozen=True)
class Embedded:
    """The vectors of a window's candidates, of the profiles' example papers and of their interests."""

    papers: Sequence[Paper]  # the candidates, in the index's order
    vectors: dict[str, np.ndarray]  # paper key → vector, candidates and example papers
    interests: dict[str, np.ndarray]  # interest text → vector

    def similarity(self, profiles: Sequence[Profile]) -> np.ndarray:
        """profiles × candidates cosine similarity (``score.semantic``): interests, examples, a feedback round."""
        profile_vectors = semantic.profile_vectors(
            [p.preferences for p in profiles], self.interests,
            [[(self.vectors[e.paper.key], e.weight) for e in p.examples] for p in profiles])
        return semantic.similarity(profile_vectors, np.stack([self.vectors[p.key] for p in self.papers]))


def embed_for_ranking(runtime: Runtime, papers: Sequence[Paper], profiles: Sequence[Profile], *,
                      session: Session | None = None, after_store: Callable[[], None] | None = None) -> Embedded | None:
    """The vectors the semantic similarity and ``score.learn`` work from; None without the model.
    ``after_store()`` runs after each of the two lookups (papers, interests) that may store new vectors."""
    model = runtime.semantic_model()
    if model is None:
        return None
    examples = {e.paper.key: e.paper for p in profiles for e in p.examples}
    candidates = {p.key for p in papers}
    everything = [*papers, *(paper for key, paper in examples.items() if key not in candidates)]
    texts = sorted({t for p in profiles for t in semantic.interest_texts(p.preferences)})
    if session is None:
        vectors = model.embed_papers(everything)
        interests = dict(zip(texts, model.embed(texts), strict=True))
    else:
        vectors = embeddings.embed_papers(session, model=model, papers=everything)
        if after_store is not None:
            after_store()
        interests = embeddings.embed_interests(session, model=model, texts=texts)
        if after_store is not None:
            after_store()
    return Embedded(papers, {paper.key: vector for paper, vector in zip(everything, vectors, strict=True)}, interests)


def rank_learned(index: PaperIndex, profiles: Sequence[Profile], *, similarity: Callable[[Sequence[Profile]], np.ndarray],
                 vectors: Mapping[str, np.ndarray], min_score: float) -> list[list[RankedPaper]]:
    """``rank_papers`` with the semantic ranker (``similarity(profiles)``), where each subscriber who has
    rated enough papers both ways gets their picks re-ordered by their own model (``score.learn``).
    Everyone else's picks are exactly ``rank_papers``'.

    The model re-orders a wider pool of the ranker's picks rather than entering the similarity
    matrix: that matrix also makes a paper eligible ("close in meaning", cosine ≥ 0.45) and is what
    the reasons quote, and a blended number there would be neither a cosine nor a reason.
    """
    models, asked = learn.prepare(profiles, vectors)
    ranked = rank_papers(index, asked, min_score=min_score, semantic=similarity(asked))
    if not models:
        return ranked
    keys = [paper.key for paper in index.papers]
    return learn.apply(ranked, profiles, models, keys=keys, candidates=np.stack([vectors[key] for key in keys]),
                       boost=index.boost)


# "Less like this" in Rocchio (lexical terms and the embedding), until the reader's own model takes the
# dislikes over (score.learn, from 10 ratings): a disliked paper shares topic words with what the reader
# likes, so taking it away at full weight pulled good papers down with it. bench/learning.py, tuning
# split, nDCG@10 after 10 / 20 / 50 clicks: weight 1.0 .896 / .843 / .799; 0.25 .914 / .912 / .871.
DISLIKE_WEIGHT = 0.25


def load_examples(session: Session, *, subscribers: Sequence[repo.Reader]) -> dict[int, tuple[Example, ...]]:
    """Each subscriber's seed papers (+1) and feedback ("more like this" +1, "less like this" -1)."""
    feedback = repo.feedback_for(session, subscriber_ids=[s.id for s in subscribers])
    seed_ids = {i for s in subscribers for i in s.preferences.seed_papers}
    seeds = repo.papers_by_arxiv_ids(session, ids=seed_ids)
    rated = repo.papers_by_id(session, ids={paper_id for rows in feedback.values() for paper_id, _ in rows})
    found: dict[int, tuple[Example, ...]] = {}
    for subscriber in subscribers:
        chosen = [Example(seeds[i], 1.0, "seed") for i in subscriber.preferences.seed_papers if i in seeds]
        chosen += [Example(rated[paper_id], 1.0 if value > 0 else -DISLIKE_WEIGHT, "liked" if value > 0 else "disliked")
                   for paper_id, value in feedback.get(subscriber.id, ()) if paper_id in rated]
        if chosen:
            found[subscriber.id] = tuple(chosen)
    return found


__all__ = ["Pick", "PlanReport", "embed_new_papers", "load_examples", "plan_due", "plan_now", "preview_next", "rank_learned",
           "score_subscribers", "window_index", "rank_window"]
