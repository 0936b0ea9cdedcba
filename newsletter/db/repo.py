"""All SQL lives here. Keyword-only functions that take the session; callers own the transaction.

Errors say what is wrong and name no command: the CLI, the web front and the email commands all show
them, and each adds what to do in its own terms.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy import Select, String, bindparam, func, insert, select, text, type_coerce, update
from sqlalchemy.orm import Session

from newsletter import records, schedule
from newsletter.db.models import (
    Delivery,
    DeliveryItem,
    DeliveryStatus,
    Feedback,
    Paper,
    Preferences,
    Source,
    Subscriber,
    SubscriberStatus,
    UpvoteSnapshot,
    aware,
    naive,
    utcnow,
)
from newsletter.errors import InvalidInput, NotFound
from newsletter.ingest.arxiv import ARXIV_HOSTS
from newsletter.ingest.sources import Trust
from newsletter.wording import plain_text

IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's 32,766 bound parameters


# --- subscribers -------------------------------------------------------------------------------


def preferences_row(prefs: records.Preferences) -> dict[str, Any]:
    """The stored form; every way in (CLI, CSV, JSON, web, email) passes here, so what is stored is inert text:
    a topic typed as "\x1b]0;…\x07" or with a bidi override reached the export file as typed."""
    def texts(values: Sequence[str]) -> list[str]:
        return [text for text in map(plain_text, values) if text]

    return {
        "topics": [{"phrase": phrase, "weight": t.weight} for t in prefs.topics if (phrase := plain_text(t.phrase))],
        "exclude": texts(prefs.exclude),
        "categories": texts(prefs.categories),
        "authors": texts(prefs.authors),
        "describe": "\n".join(map(plain_text, prefs.describe.splitlines())).strip(),  # their line breaks kept
        "seed_papers": texts(prefs.seed_papers),
        "min_score": prefs.min_score,
    }


def preferences_record(row: Preferences | None) -> records.Preferences:
    if row is None:
        return records.Preferences()
    return _preferences(row.topics, row.exclude, row.categories, row.authors, row.describe, row.seed_papers, row.min_score)


@functools.lru_cache(maxsize=1 << 16)  # readers share topics; one immutable Topic each, not one per reader
def _topic(phrase: str, weight: float) -> records.Topic:
    return records.Topic(phrase, weight)


def _preferences(topics: list[dict[str, Any]] | None, exclude: list[str] | None, categories: list[str] | None,
                 authors: list[str] | None, describe: str | None, seed_papers: list[str] | None,
                 min_score: float | None) -> records.Preferences:
    return records.Preferences(
        topics=tuple(_topic(t["phrase"], float(t.get("weight", 1.0))) for t in topics or ()),
        exclude=tuple(exclude or ()),
        categories=tuple(categories or ()),
        authors=tuple(authors or ()),
        describe=describe or "",
        seed_papers=tuple(seed_papers or ()),
        min_score=min_score,
    )


def exclusions_of(session: Session, *, subscriber_ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
    """The excluded phrases of these subscribers, of those who have any."""
    found: dict[int, tuple[str, ...]] = {}
    for start in range(0, len(subscriber_ids), IN_CHUNK):
        rows = session.execute(select(Preferences.subscriber_id, Preferences.exclude)
                               .where(Preferences.subscriber_id.in_(subscriber_ids[start : start + IN_CHUNK])))
        found.update((subscriber_id, tuple(exclude)) for subscriber_id, exclude in rows if exclude)
    return found


@dataclass(frozen=True, slots=True)
class Reader:
    """A subscriber as scoring reads them: schedule, limit and preferences, without the ORM's state.

    Loading 100,000 subscribers as ORM rows with their preferences was half of a dry run's time; as
    plain rows it is a tenth of that."""

    id: int
    email: str
    timezone: str
    send_hour: int
    send_minute: int
    frequency: str
    send_weekday: int
    max_papers: int
    preferences: records.Preferences


def reader_of(row: Subscriber) -> Reader:
    return Reader(row.id, row.email, row.timezone, row.send_hour, row.send_minute, row.frequency, row.send_weekday,
                  row.max_papers, preferences_record(row.preferences))


def active_readers(session: Session) -> list[Reader]:
    """Every active subscriber, by address.

    Core rows, and the preferences' JSON read here from its text: most lists are empty, and SQLAlchemy's
    per-value JSON decoding was a third of the load."""
    rows = session.connection().execute(_readers().where(Subscriber.status == SubscriberStatus.ACTIVE).order_by(Subscriber.email))
    return [_reader(row) for row in rows]


def due_readers(session: Session, *, now: dt.datetime, limit: int) -> list[tuple[Reader, dt.datetime]]:
    """Up to ``limit`` active subscribers due at ``now`` (naive UTC), the earliest first, with their next send
    moment, as plain rows (``active_readers``). On PostgreSQL the rows are locked as they are read, and those
    another transaction holds are skipped: concurrent planners split them (FOR NO KEY UPDATE: inserting a
    delivery, whose foreign key takes a key-share lock on the subscriber, never waits on it)."""
    query = (_readers(Subscriber.next_send_at)
             .where(Subscriber.status == SubscriberStatus.ACTIVE, Subscriber.next_send_at <= now)
             .order_by(Subscriber.next_send_at, Subscriber.id).limit(limit))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Subscriber, key_share=True)
    return [(_reader(row[:-1]), row[-1]) for row in session.connection().execute(query)]


def _readers(*extra: Any) -> Select[*tuple[Any, ...]]:
    lists = [type_coerce(column, String) for column in (Preferences.topics, Preferences.exclude, Preferences.categories,
                                                         Preferences.authors, Preferences.seed_papers)]
    return (select(Subscriber.id, Subscriber.email, Subscriber.timezone, Subscriber.send_hour, Subscriber.send_minute,
                   Subscriber.frequency, Subscriber.send_weekday, Subscriber.max_papers, *lists,
                   Preferences.describe, Preferences.min_score, *extra)
            .outerjoin(Preferences, Preferences.subscriber_id == Subscriber.id))


def _reader(row: Sequence[Any]) -> Reader:
    (id_, email, timezone, hour, minute, frequency, weekday, max_papers, topics, exclude, categories, authors,
     seeds, describe, min_score) = row
    return Reader(id_, email, timezone, hour, minute, frequency, weekday, max_papers,
                  _preferences(_json(topics), _json(exclude), _json(categories), _json(authors), describe, _json(seeds),
                               min_score))


def _json(value: Any) -> Any:
    """A JSON column's value from its text (SQLite), or as the driver already decoded it (psycopg)."""
    if isinstance(value, str):
        return None if value == "[]" else orjson.loads(value)
    return value


def _subscriber_row(new: records.NewSubscriber, now: dt.datetime) -> dict[str, Any]:
    return {
        "email": new.email,
        "status": new.status,
        "timezone": new.timezone,
        "send_hour": new.send_hour,
        "send_minute": new.send_minute,
        "frequency": new.frequency,
        "send_weekday": new.send_weekday,
        "next_send_at": first_send_at(schedule_of(new), now=now),
        "max_papers": new.max_papers,
        "created_at": now,
        "confirmed_at": now if new.status == "active" else None,
    }


def schedule_of(subscriber: records.NewSubscriber | Subscriber | Reader) -> schedule.Schedule:
    return schedule.Schedule(subscriber.timezone, subscriber.send_hour, subscriber.send_minute,
                             schedule.Frequency(subscriber.frequency), subscriber.send_weekday)


def move_next_send_at(session: Session, *, moves: Sequence[tuple[int, dt.datetime | None]]) -> None:
    """Set each (subscriber id, next send moment) in one executemany: through the ORM's change tracking,
    the 5,000 of a planning pass were a quarter of its time."""
    if moves:
        session.connection().execute(
            update(Subscriber).where(Subscriber.id == bindparam("subscriber")).values(next_send_at=bindparam("when")),
            [{"subscriber": subscriber_id, "when": when} for subscriber_id, when in moves])


def next_send_moments(session: Session, *, subscriber_ids: Sequence[int]) -> dict[int, dt.datetime | None]:
    """Each active subscriber's next send moment (naive UTC), as stored now; the others are left out."""
    found: dict[int, dt.datetime | None] = {}
    for start in range(0, len(subscriber_ids), IN_CHUNK):
        rows = session.execute(select(Subscriber.id, Subscriber.next_send_at).where(
            Subscriber.id.in_(subscriber_ids[start : start + IN_CHUNK]), Subscriber.status == SubscriberStatus.ACTIVE))
        found.update((subscriber_id, when) for subscriber_id, when in rows)
    return found


def first_send_at(plan: schedule.Schedule, *, now: dt.datetime) -> dt.datetime:
    """A new or changed schedule's first send moment (naive UTC): the next one after ``now`` (naive UTC).

    Not today's if it already passed: a subscriber added at noon for 07:00 gets their first digest
    tomorrow at 07:00, with the papers of the last days, rather than one at once outside their hour.
    """
    return naive(schedule.next_send_at(plan, after=aware(now)))


def next_send_at(session: Session) -> dt.datetime | None:
    """The earliest next send moment of an active subscriber (naive UTC), None without one."""
    return session.scalar(select(func.min(Subscriber.next_send_at)).where(Subscriber.status == SubscriberStatus.ACTIVE))


def due_count(session: Session, *, now: dt.datetime, at_least: int) -> int:
    """How many active subscribers are due at ``now`` (aware), counted only up to ``at_least``."""
    due = (select(Subscriber.id).where(Subscriber.status == SubscriberStatus.ACTIVE, Subscriber.next_send_at <= naive(now))
           .limit(at_least).subquery())
    return session.scalar(select(func.count()).select_from(due)) or 0


def any_unscheduled(session: Session) -> bool:
    """Whether an active subscriber has no next send moment yet (planning gives them one)."""
    return session.scalar(select(Subscriber.id).where(Subscriber.status == SubscriberStatus.ACTIVE,
                                                      Subscriber.next_send_at.is_(None)).limit(1)) is not None


def add_subscriber(session: Session, *, new: records.NewSubscriber) -> Subscriber:
    if session.scalar(select(Subscriber.id).where(Subscriber.email == new.email)) is not None:
        raise InvalidInput(f"{new.email} is already a subscriber")
    row = Subscriber(**_subscriber_row(new, utcnow()))
    row.preferences = Preferences(**preferences_row(new.preferences))
    session.add(row)
    session.flush()
    return row


def existing_emails(session: Session, *, emails: Iterable[str]) -> set[str]:
    found: set[str] = set()
    emails = list(emails)
    for start in range(0, len(emails), IN_CHUNK):
        chunk = emails[start : start + IN_CHUNK]
        found.update(session.scalars(select(Subscriber.email).where(Subscriber.email.in_(chunk))))
    return found


def import_subscribers(session: Session, *, subscribers: Sequence[records.NewSubscriber]) -> int:
    """Bulk insert (one INSERT ... RETURNING per batch): 100,000 rows take seconds, not minutes."""
    now = utcnow()
    ids = session.scalars(
        insert(Subscriber).returning(Subscriber.id, sort_by_parameter_order=True),
        [_subscriber_row(s, now) for s in subscribers],
    ).all()
    session.execute(
        insert(Preferences),
        [{"subscriber_id": i, **preferences_row(s.preferences)} for i, s in zip(ids, subscribers, strict=True)],
    )
    if session.get_bind().dialect.name == "postgresql":
        # The planner's row counts predate the import until autovacuum analyzes (a minute or more); planning
        # and sending right after a big import then misjudge the joins (scale.batch: 0.5 s a batch at 100,000).
        session.execute(text("ANALYZE subscribers, preferences"))
    return len(ids)


def get_subscriber(session: Session, *, email: str) -> Subscriber:
    row = session.scalar(select(Subscriber).where(Subscriber.email == email.strip().lower()))
    if row is None:
        raise NotFound(f"no subscriber {email!r}")
    return row


def list_subscribers(session: Session, *, status: str | None = None) -> list[Subscriber]:
    query = select(Subscriber).order_by(Subscriber.email)
    if status:
        query = query.where(Subscriber.status == status)
    return list(session.scalars(query).unique())


def remove_subscriber(session: Session, *, email: str) -> None:
    """Delete the subscriber, their preferences and their delivery history."""
    session.delete(get_subscriber(session, email=email))


def subscriber_view(row: Subscriber) -> dict[str, Any]:
    prefs = preferences_record(row.preferences)
    return {
        "email": row.email,
        "status": row.status,
        "timezone": row.timezone,
        "send_hour": row.send_hour,
        "send_minute": row.send_minute,
        "frequency": row.frequency,
        "send_weekday": row.send_weekday,
        "next_send_at": row.next_send_at.isoformat(timespec="minutes") + "Z" if row.next_send_at else None,
        "max_papers": row.max_papers,
        "created_at": row.created_at.isoformat(timespec="seconds"),
        "topics": [t.phrase if t.weight == 1 else f"{t.phrase}^{t.weight:g}" for t in prefs.topics],
        "exclude": list(prefs.exclude),
        "categories": list(prefs.categories),
        "authors": list(prefs.authors),
        "describe": prefs.describe,
        "seed_papers": list(prefs.seed_papers),
        "min_score": prefs.min_score,
    }


# --- sources -----------------------------------------------------------------------------------


def add_source(session: Session, *, url: str, kind: str, name: str | None = None) -> Source:
    if session.scalar(select(Source.id).where(Source.url == url)) is not None:
        raise InvalidInput(f"source {url} is already configured")
    row = Source(url=url, kind=kind, name=name)
    session.add(row)
    session.flush()
    return row


def list_sources(session: Session) -> list[Source]:
    return list(session.scalars(select(Source).order_by(Source.id)))


def get_source(session: Session, *, url: str) -> Source | None:
    return session.scalar(select(Source).where(Source.url == url))


def remove_source(session: Session, *, ref: str) -> Source:
    """Remove by id or URL; papers it brought stay."""
    query = select(Source).where(Source.id == int(ref)) if ref.isdigit() else select(Source).where(Source.url == ref)
    row = session.scalar(query)
    if row is None:
        raise NotFound(f"no source {ref!r}")
    session.delete(row)
    return row


# --- papers ------------------------------------------------------------------------------------


@dataclass
class UpsertCounts:
    new: int = 0
    updated: int = 0
    unchanged: int = 0


def _merge_lists(old: Sequence[str], new: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*old, *new]))


ATTACHABLE_LINKS = ("code", "project")  # links any source may attach; abs and pdf are arXiv's


def _apply(row: Paper, paper: records.Paper, now: dt.datetime, *, revise: bool) -> bool:
    """Merge a newer sighting of a paper into its row; True when anything changed.

    Upvotes, summary, keywords and code/project links are always merged; the bibliographic fields
    (categories, a new version's title, abstract and authors, abs/pdf links) only when ``revise``.
    """
    changes: dict[str, Any] = {}
    if revise:
        categories = _merge_lists(row.categories, paper.categories)  # cross-lists add categories
        if categories != row.categories:
            changes["categories"] = categories
    if revise and paper.version is not None and (row.version is None or paper.version > row.version):
        # A new version ("replace") updates the paper but keeps first_seen_at: it is not announced as new again.
        revised = {"title": paper.title, "abstract": paper.abstract, "authors": list(paper.authors) or row.authors}
        changed = [name for name, value in revised.items() if getattr(row, name) != value]
        changes.update(revised, version=paper.version, announce_type=paper.announce_type,
                       updated_fields=changed, version_updated_at=now)
    for name in ("upvotes", "tldr"):
        value = getattr(paper, name)
        if value is not None and value != getattr(row, name):
            changes[name] = value
    if paper.keywords and list(paper.keywords) != row.keywords:
        changes["keywords"] = list(paper.keywords)
    links = {**row.links, **{k: v for k, v in _links(paper).items() if revise or k in ATTACHABLE_LINKS}}
    if links != row.links:
        changes["links"] = links
    for name, value in changes.items():
        setattr(row, name, value)
    return bool(changes)


def _links(paper: records.Paper) -> dict[str, str]:
    pairs = (("abs", paper.abs_url), ("pdf", paper.pdf_url), ("code", paper.code_url), ("project", paper.project_url))
    return {k: v for k, v in pairs if v}


def _own_paper(paper: records.Paper) -> records.Paper | None:
    """An untrusted feed's entry for an arXiv paper we do not have: the feed's own paper, keyed by its own
    link (never by the arXiv id, which only arXiv's sources may claim); None if it has no link.

    Its links are the feed's: the arXiv abs and PDF links made from the id it claims would send readers to
    arXiv for text arXiv never published (or to another paper than the one the feed describes)."""
    from newsletter.ingest.feeds import paper_key  # ingest only: feedparser is loaded already

    link = paper.link or paper.abs_url  # an entry with no link of its own (trending JSON): the abs link of its id
    if not link:
        return None
    pdf = paper.pdf_url if paper.pdf_url and (urlsplit(paper.pdf_url).hostname or "") not in ARXIV_HOSTS else None
    return replace(paper, key=paper_key(link), abs_url=link, pdf_url=pdf if paper.link else paper.pdf_url, arxiv_id=None,
                   version=None, announce_type=None)


def upsert_papers(
    session: Session, *, papers: Sequence[records.Paper], source_id: int | None, now: dt.datetime,
    trust: Trust = Trust.ARXIV,
) -> UpsertCounts:
    """Store papers idempotently: one row per key, later versions and cross-lists merged in.

    ``trust`` is what the source may do (``newsletter.ingest.sources.Trust``). ARXIV creates arXiv
    papers and revises them. TRENDING creates arXiv papers we do not have yet (arXiv's listing revises
    them later: they have no version) and only attaches upvotes, summaries, keywords and code/project
    links to the ones we have. FEED attaches the same to the arXiv papers we have, and stores an entry
    for one we do not have as its own paper, keyed by its link, without the arXiv id. Papers that are
    not arXiv's (keyed by their link or guid) are their sources' own, whatever the trust.

    Upvotes are also kept as a history (one snapshot whenever they change), for growth-based trending.
    """
    rows = {r.key: r for r in _papers_where(session, Paper.key, dict.fromkeys(p.key for p in papers))}
    if trust is Trust.FEED:
        own = {p.key: _own_paper(p) for p in papers if p.arxiv_id is not None and p.key not in rows}
        papers = [p for p in (own.get(p.key, p) if p.arxiv_id is not None else p for p in papers) if p]
        own_keys = dict.fromkeys(p.key for p in own.values() if p)
        rows |= {r.key: r for r in _papers_where(session, Paper.key, own_keys)}
    counts = UpsertCounts()
    outcome: dict[str, str] = {}  # key → new | updated | unchanged (a key seen twice counts once)
    upvoted: dict[str, int] = {}
    for paper in papers:
        row = rows.get(paper.key)
        if row is None:
            rows[paper.key] = row = Paper(
                key=paper.key, arxiv_id=paper.arxiv_id, version=paper.version, title=paper.title,
                abstract=paper.abstract, authors=list(paper.authors), categories=list(paper.categories),
                links=_links(paper), announce_type=paper.announce_type, published_at=paper.published_at,
                first_seen_at=now, updated_at=now, upvotes=paper.upvotes, tldr=paper.tldr,
                keywords=list(paper.keywords), updated_fields=[], source_id=source_id,
            )
            session.add(row)
            outcome[paper.key] = "new"
            if paper.upvotes is not None:
                upvoted[paper.key] = paper.upvotes
            continue
        previous_upvotes = row.upvotes
        if _apply(row, paper, now, revise=trust is Trust.ARXIV or row.arxiv_id is None):
            outcome[paper.key] = "new" if outcome.get(paper.key) == "new" else "updated"
        else:
            outcome.setdefault(paper.key, "unchanged")
        if row.upvotes is not None and row.upvotes != previous_upvotes:
            upvoted[paper.key] = row.upvotes
    session.flush()
    if upvoted:
        session.execute(insert(UpvoteSnapshot), [
            {"paper_id": rows[key].id, "observed_at": now, "upvotes": votes} for key, votes in upvoted.items()
        ])
    for value in outcome.values():
        setattr(counts, value, getattr(counts, value) + 1)
    return counts


def upvotes_as_of(session: Session, *, paper_ids: Iterable[int], moment: dt.datetime) -> dict[int, int]:
    """Each paper's upvotes as last seen at or before ``moment`` (naive UTC); papers with none then are absent."""
    latest = (select(UpvoteSnapshot.paper_id, func.max(UpvoteSnapshot.observed_at).label("at"))
              .where(UpvoteSnapshot.paper_id.in_(list(paper_ids)), UpvoteSnapshot.observed_at <= moment)
              .group_by(UpvoteSnapshot.paper_id).subquery())
    return {paper_id: upvotes for paper_id, upvotes in session.execute(
        select(UpvoteSnapshot.paper_id, UpvoteSnapshot.upvotes)
        .join(latest, (UpvoteSnapshot.paper_id == latest.c.paper_id) & (UpvoteSnapshot.observed_at == latest.c.at)))}


def upvote_history(session: Session, *, key: str) -> list[tuple[dt.datetime, int]]:
    query = (
        select(UpvoteSnapshot.observed_at, UpvoteSnapshot.upvotes)
        .join(Paper, Paper.id == UpvoteSnapshot.paper_id)
        .where(Paper.key == key)
        .order_by(UpvoteSnapshot.observed_at, UpvoteSnapshot.id)
    )
    return [(when, votes) for when, votes in session.execute(query)]


def paper_record(row: Paper) -> records.Paper:
    return records.Paper(
        id=row.id, key=row.key, arxiv_id=row.arxiv_id, version=row.version, title=row.title,
        abstract=row.abstract, authors=tuple(row.authors), categories=tuple(row.categories),
        abs_url=row.links.get("abs"), pdf_url=row.links.get("pdf"), published_at=row.published_at,
        announce_type=row.announce_type, upvotes=row.upvotes, tldr=row.tldr, keywords=tuple(row.keywords),
        code_url=row.links.get("code"), project_url=row.links.get("project"), first_seen_at=row.first_seen_at,
    )


def papers_first_seen_between(session: Session, *, start: dt.datetime, end: dt.datetime) -> list[records.Paper]:
    query = (
        select(Paper)
        .where(Paper.first_seen_at >= start, Paper.first_seen_at < end)
        .order_by(Paper.first_seen_at, Paper.id)
    )
    return [paper_record(r) for r in session.scalars(query)]


# --- deliveries --------------------------------------------------------------------------------


def delivery_status(session: Session, *, subscriber_id: int, issue_date: dt.date) -> str | None:
    """The status of a subscriber's digest of one local date, None when none was planned."""
    return session.scalar(select(Delivery.status).where(Delivery.subscriber_id == subscriber_id, Delivery.issue_date == issue_date))


def deliveries_on(session: Session, *, issue_date: dt.date) -> dict[int, Delivery]:
    rows = session.scalars(select(Delivery).where(Delivery.issue_date == issue_date))
    return {r.subscriber_id: r for r in rows}


def sent_paper_keys(session: Session, *, subscriber_ids: Sequence[int]) -> dict[int, set[str]]:
    """Keys of papers already picked for each subscriber on any earlier digest (sent or on its way)."""
    found: dict[int, set[str]] = defaultdict(set)
    for start in range(0, len(subscriber_ids), IN_CHUNK):
        chunk = subscriber_ids[start : start + IN_CHUNK]
        query = (
            select(Delivery.subscriber_id, Paper.key)
            .join(DeliveryItem, DeliveryItem.delivery_id == Delivery.id)
            .join(Paper, Paper.id == DeliveryItem.paper_id)
            .where(Delivery.subscriber_id.in_(chunk), Delivery.status.not_in((DeliveryStatus.FAILED, DeliveryStatus.EXPIRED)))
        )
        for subscriber_id, key in session.execute(query):
            found[subscriber_id].add(key)
    return found


def _papers_where(session: Session, column: Any, values: Iterable[object]) -> list[Paper]:
    """Paper rows whose ``column`` is among ``values``, asked IN_CHUNK at a time."""
    values = list(values)
    return [row for start in range(0, len(values), IN_CHUNK)
            for row in session.scalars(select(Paper).where(column.in_(values[start : start + IN_CHUNK])))]


def papers_by_id(session: Session, *, ids: Iterable[int]) -> dict[int, records.Paper]:
    return {r.id: paper_record(r) for r in _papers_where(session, Paper.id, ids)}


def trending_papers(session: Session, *, since: dt.datetime, limit: int) -> list[records.Paper]:
    """The most upvoted papers whose upvotes were seen since ``since``: the same for every subscriber."""
    query = (
        select(Paper).where(Paper.upvotes.is_not(None), Paper.upvotes > 0, Paper.updated_at >= since)
        .order_by(Paper.upvotes.desc(), Paper.id).limit(limit)
    )
    return [paper_record(r) for r in session.scalars(query)]


# --- seeds and feedback ------------------------------------------------------------------------


def papers_by_arxiv_ids(session: Session, *, ids: Iterable[str]) -> dict[str, records.Paper]:
    return {r.key: paper_record(r) for r in _papers_where(session, Paper.key, ids)}


def get_paper(session: Session, *, ref: str) -> Paper:
    """A paper by arXiv id (any version) or key."""
    from newsletter.ingest.arxiv import split_id

    found = split_id(ref)
    key = found[0] if found else ref.strip()
    row = session.scalar(select(Paper).where(Paper.key == key))
    if row is None:
        raise NotFound(f"no paper {ref!r} has been ingested")
    return row


def record_feedback(session: Session, *, subscriber_id: int, paper_id: int, value: int) -> None:
    """Store "more like this" (+1) or "less like this" (-1); a later click replaces an earlier one."""
    row = session.scalar(select(Feedback).where(Feedback.subscriber_id == subscriber_id, Feedback.paper_id == paper_id))
    if row is None:
        session.add(Feedback(subscriber_id=subscriber_id, paper_id=paper_id, value=value))
    else:
        row.value, row.created_at = value, utcnow()
    session.flush()


def feedback_for(session: Session, *, subscriber_ids: Sequence[int]) -> dict[int, list[tuple[int, int]]]:
    found: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for start in range(0, len(subscriber_ids), IN_CHUNK):
        chunk = subscriber_ids[start : start + IN_CHUNK]
        query = select(Feedback.subscriber_id, Feedback.paper_id, Feedback.value).where(Feedback.subscriber_id.in_(chunk))
        for subscriber_id, paper_id, value in session.execute(query.order_by(Feedback.id)):
            found[subscriber_id].append((paper_id, value))
    return found
