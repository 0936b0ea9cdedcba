"""The preferences page's preview: which papers the next digest would carry with the settings on the form.

The same steps as planning a digest (``plan``): the papers first seen in the next issue's candidate
window, never sent to this subscriber, ranked for a profile built from the form instead of the stored
preferences, with the subscriber's seeds and "more / less like this" feedback. Nothing is recorded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.orm import Session

from newsletter import schedule
from newsletter.db import ledger, repo
from newsletter.db.models import Subscriber, aware, naive
from newsletter.plan import load_examples, rank_window, window_index
from newsletter.records import NewSubscriber, Profile, RankedPaper
from newsletter.runtime import Runtime


@dataclass(frozen=True, slots=True)
class Preview:
    issue_date: dt.date  # the subscriber's local date of the next digest
    send_at: dt.datetime  # its send moment, aware
    candidates: int  # papers in its window so far
    papers: tuple[RankedPaper, ...]


def next_send(row: Subscriber, wanted: NewSubscriber, *, now: dt.datetime) -> dt.datetime:
    """The next digest's send moment with the wanted schedule (aware): the stored one if the schedule stays."""
    plan = repo.schedule_of(wanted)
    if row.next_send_at is not None and plan == repo.schedule_of(row):
        return aware(row.next_send_at)
    return schedule.next_send_at(plan, after=now)


def preview(runtime: Runtime, session: Session, *, row: Subscriber, wanted: NewSubscriber, now: dt.datetime) -> Preview:
    """The next digest ``row`` would get with the settings ``wanted`` (``now`` aware)."""
    settings = runtime.settings
    plan = repo.schedule_of(wanted)
    issue = schedule.issue_for(plan, next_send(row, wanted, now=now))
    last = ledger.last_planned_send(session, subscriber_ids=[row.id]).get(row.id)
    start, end = schedule.candidate_window(plan, issue.issue_date, daily_days=settings.candidate_window_days,
                                           last_sent=aware(last) if last else None)
    papers = repo.papers_first_seen_between(session, start=naive(start), end=naive(end))
    if not papers:
        return Preview(issue.issue_date, issue.send_at, 0, ())
    sent = repo.sent_paper_keys(session, subscriber_ids=[row.id]).get(row.id, set())
    profile = Profile(subscriber_id=row.id, email=row.email, preferences=wanted.preferences, max_papers=wanted.max_papers,
                      already_sent=frozenset(sent), examples=load_examples(session, subscribers=[repo.reader_of(row)]).get(row.id, ()))
    # Ranked as the digest ranks (the reader's own model included); a preview stores no embeddings.
    [picks] = rank_window(runtime, papers, window_index(settings, papers, end=naive(end)), [profile], session=None)
    return Preview(issue.issue_date, issue.send_at, len(papers), tuple(picks))
