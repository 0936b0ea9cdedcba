"""Ingest a list of sources: fetch, parse and store each one in its own transaction.

A source that fails is reported by name with the reason and leaves nothing half-written; the
others are still ingested.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import httpx
from sqlalchemy.orm import Session, sessionmaker

from newsletter.db import repo
from newsletter.errors import NewsletterError
from newsletter.ingest.feeds import parse_feed
from newsletter.ingest.fetch import fetch
from newsletter.ingest.sources import SourceSpec


@dataclass
class SourceReport:
    source: str
    fetched: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    error: str | None = None
    seconds: float = 0.0
    note: str | None = None  # "no new papers (weekend or holiday listing)", "not modified"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def ingest_sources(
    specs: Sequence[SourceSpec],
    *,
    sessions: sessionmaker[Session],
    client: httpx.Client,
    max_bytes: int,
    now: dt.datetime,
    on_source: Callable[[SourceSpec, int], None] | None = None,
) -> list[SourceReport]:
    """Ingest each source in turn; ``on_source(spec, done)`` is told before each one starts."""
    reports = []
    for done, spec in enumerate(specs):
        if on_source:
            on_source(spec, done)
        reports.append(ingest_one(spec, sessions=sessions, client=client, max_bytes=max_bytes, now=now))
    return reports


def ingest_one(
    spec: SourceSpec, *, sessions: sessionmaker[Session], client: httpx.Client, max_bytes: int, now: dt.datetime
) -> SourceReport:
    report = SourceReport(spec.url)
    started = time.perf_counter()
    with sessions() as session:
        source = repo.get_source(session, url=spec.url)
        try:
            fetched = fetch(spec.url, client=client, max_bytes=max_bytes,
                            etag=source.etag if source else None,
                            last_modified=source.last_modified if source else None)
            if fetched.not_modified:
                report.note = "not modified since the last fetch"
            else:
                feed = parse_feed(fetched.body, source=spec.url)
                report.fetched = len(feed.papers)
                counts = repo.upsert_papers(session, papers=feed.papers, source_id=source.id if source else None, now=now)
                report.new, report.updated, report.unchanged = counts.new, counts.updated, counts.unchanged
                if not feed.papers:
                    report.note = "no new papers (normal on weekends and holidays)"
                if source:
                    source.etag, source.last_modified = fetched.etag, fetched.last_modified
            if source:
                source.last_fetched_at, source.last_error = now, None
            session.commit()
        except NewsletterError as exc:
            session.rollback()
            report.error = str(exc)
            if source:
                source.last_error = str(exc)
                session.commit()
    report.seconds = round(time.perf_counter() - started, 3)
    return report
