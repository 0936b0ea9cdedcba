"""Ingest a list of sources: fetch, parse and store each one in its own transaction.

A source that fails is reported by name with the reason and leaves nothing half-written; the
others are still ingested. The kind decides how a source is read:

- ``arxiv-rss`` and ``feed``: one conditional GET, parsed as RSS/Atom (or as trending-papers JSON
  when the body is JSON);
- ``arxiv-api``: pages of ``max_results`` until the results run out (at most ``ARXIV_API_MAX_RESULTS``),
  at least ``ARXIV_API_INTERVAL_S`` apart as the API's terms demand;
- ``hf-daily``: the trending-papers JSON for the date in the URL, or for today (UTC) if none; a local
  file is read as it is.

What the papers may change is the source's ``Trust`` (``sources.source_trust``): only arXiv's own
hosts and local files create and revise arXiv papers.

Each run also records a configured source's health for ``newsletter status``: failures in a row (0
after a success, a warning in the log from the second), when it last succeeded, and that success's
new papers and note. An arXiv listing that comes back empty on a weekday is logged as a warning.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from zoneinfo import ZoneInfo

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from newsletter.db import repo
from newsletter.db.models import Source
from newsletter.errors import NewsletterError, database_error, redact
from newsletter.ingest.feeds import ParsedFeed, parse_feed
from newsletter.ingest.fetch import Fetched, Fetcher
from newsletter.ingest.sources import ARXIV_API_PAGE, SourceSpec, query_param, resolve, source_trust, with_query
from newsletter.ingest.trending import looks_like_json, parse_trending
from newsletter.records import Paper
from newsletter.settings import Settings

ARXIV_API_INTERVAL_S = 3.0  # arXiv API terms of use: no more than one request every three seconds
ARXIV_API_MAX_RESULTS = 2000  # per ingest run; a daily query returns far fewer
# arXiv announces Sunday to Thursday evenings in New York; its RSS listings dated Monday to Friday there
# carry the papers, the weekend's are empty. Its holidays are not in the feed, so they look like weekdays.
ARXIV_TIMEZONE = ZoneInfo("America/New_York")
EMPTY_LISTING = "no new papers (normal on weekends and holidays)"
FAILURES_TO_WARN = 2  # failures in a row before a warning: a single one is often a blip upstream

log = logging.getLogger(__name__)


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
    fetcher: Fetcher,
    now: dt.datetime,
    on_start: Callable[[int, SourceSpec], None] | None = None,
    on_done: Callable[[int, SourceReport], None] | None = None,
) -> list[SourceReport]:
    """Ingest each source in turn; the callbacks drive a progress display."""
    reports = []
    for index, spec in enumerate(specs):
        if on_start:
            on_start(index, spec)
        reports.append(ingest_one(spec, sessions=sessions, fetcher=fetcher, now=now))
        if on_done:
            on_done(index, reports[-1])
    return reports


def ingest_one(spec: SourceSpec, *, sessions: sessionmaker[Session], fetcher: Fetcher, now: dt.datetime) -> SourceReport:
    report = SourceReport(spec.url)
    started = time.perf_counter()
    with sessions() as session:
        source = repo.get_source(session, url=spec.url)
        try:
            read = read_source(spec, fetcher=fetcher, now=now, etag=source.etag if source else None,
                               last_modified=source.last_modified if source else None,
                               known_sha256=source.content_sha256 if source else None)
            if read.feed is None:
                report.note = read.status
            else:
                report.fetched = len(read.feed.papers)
                counts = repo.upsert_papers(session, papers=read.feed.papers, source_id=source.id if source else None, now=now,
                                            trust=source_trust(spec, arxiv_hosts=fetcher.arxiv_hosts))
                report.new, report.updated, report.unchanged = counts.new, counts.updated, counts.unchanged
                if not read.feed.papers:
                    report.note = EMPTY_LISTING
                    if spec.kind == "arxiv-rss" and is_arxiv_weekday(now):
                        log.warning("%s: the arXiv listing is empty on a weekday (a holiday, or a fault at arXiv)", spec.url)
            if source is not None:
                if read.fetched is not None and read.feed is not None:
                    source.etag, source.last_modified = read.fetched.etag, read.fetched.last_modified
                    source.content_sha256 = read.sha256
                _record_success(source, report, now=now)
            session.commit()
        except Exception as exc:  # one source's fault, ours or its, never stops the others
            session.rollback()
            if isinstance(exc, NewsletterError):
                report.error = str(exc)
            elif isinstance(exc, OperationalError):  # the database's fault, not the source's: read-only, full, locked
                report.error = (f"{spec.url}: the database could not store its papers ({exc.orig}); check that the "
                                "database (and, for SQLite, its folder) is writable and its disk has room")
                return _finished(report, started)  # recording the failure on the source would fail the same way
            else:  # a case nothing above foresaw: named, with the traceback in the log
                log.exception("%s: unexpected error while ingesting", redact(spec.url))
                report.error = f"{spec.url}: unexpected error ({database_error(exc)}); the log has the details"
            if source is not None:
                _record_failure(source, report, now=now)
                session.commit()
    return _finished(report, started)


def _finished(report: SourceReport, started: float) -> SourceReport:
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def is_arxiv_weekday(moment: dt.datetime) -> bool:
    """Whether ``moment`` (naive UTC) falls Monday to Friday in New York, when arXiv's listings carry papers."""
    return moment.replace(tzinfo=dt.UTC).astimezone(ARXIV_TIMEZONE).weekday() < 5


def _record_success(source: Source, report: SourceReport, *, now: dt.datetime) -> None:
    if source.consecutive_failures:
        log.info("%s: fetched again after %d failed attempts", report.source, source.consecutive_failures)
    source.last_fetched_at, source.last_success_at, source.last_error = now, now, None
    source.consecutive_failures, source.last_new, source.last_note = 0, report.new, report.note


def _record_failure(source: Source, report: SourceReport, *, now: dt.datetime) -> None:
    """A failed attempt; ``last_new`` and ``last_note`` keep describing the last success."""
    failures = (source.consecutive_failures or 0) + 1
    source.last_fetched_at, source.last_error, source.consecutive_failures = now, report.error, failures
    why = (report.error or "").removeprefix(f"{report.source}: ")  # the error names the source too: once is enough
    if failures >= FAILURES_TO_WARN:
        log.warning("%s: failed %d times in a row: %s", report.source, failures, why)
    else:
        log.info("%s: failed: %s", report.source, why)


@dataclass(frozen=True, slots=True)
class SourceRead:
    feed: ParsedFeed | None  # None: nothing to store (see status)
    fetched: Fetched | None = None  # None for arXiv API paging
    sha256: str | None = None
    status: str = "parsed"  # or "not modified since the last fetch", "same content as the last fetch"


def read_source(
    spec: SourceSpec, *, fetcher: Fetcher, now: dt.datetime, etag: str | None = None, last_modified: str | None = None,
    known_sha256: str | None = None,
) -> SourceRead:
    """Fetch and parse one source; bytes identical to the last stored ones (``known_sha256``) are not parsed."""
    if spec.kind == "arxiv-api":
        return SourceRead(_read_arxiv_api(spec.url, fetcher))
    url = spec.url
    if spec.kind == "hf-daily" and not spec.is_file:
        etag = last_modified = None  # the URL changes with the date; upvotes change without a new ETag
        if not query_param(url, "date"):
            url = with_query(url, date=now.date().isoformat())
    fetched = fetcher.get(url, etag=etag, last_modified=last_modified)
    if fetched.not_modified:
        return SourceRead(None, fetched, status="not modified since the last fetch")
    sha256 = hashlib.sha256(fetched.body).hexdigest()
    if sha256 == known_sha256:
        return SourceRead(None, fetched, sha256, status="same content as the last fetch")
    return SourceRead(_parse(fetched, spec), fetched, sha256)


def _parse(fetched: Fetched, spec: SourceSpec) -> ParsedFeed:
    if spec.kind == "hf-daily" or (spec.kind == "feed" and looks_like_json(fetched.body)):
        return parse_trending(fetched.body, source=spec.url, content_type=fetched.content_type)
    return parse_feed(fetched.body, source=spec.url)


def _read_arxiv_api(url: str, fetcher: Fetcher) -> ParsedFeed:
    """Every page of an arXiv API query, politely spaced; all pages or nothing."""
    page_size = int(query_param(url, "max_results") or ARXIV_API_PAGE)
    start = int(query_param(url, "start") or 0)
    papers: list[Paper] = []
    title = url
    while len(papers) < ARXIV_API_MAX_RESULTS:
        page_url = with_query(url, start=start, max_results=page_size)
        page = parse_feed(fetcher.get(page_url, min_interval_s=ARXIV_API_INTERVAL_S).body, source=page_url)
        title = page.title
        papers += page.papers
        if len(page.papers) < page_size:
            break
        start += page_size
    return ParsedFeed(title=title, papers=tuple(papers))


def configured_sources(
    settings: Settings, sessions: sessionmaker[Session], *, trending: bool | None = None,
) -> list[tuple[SourceSpec, dt.datetime | None]]:
    """The database's sources and NEWSLETTER_SOURCES (each once), with each one's last successful fetch:
    the hf-daily ones (``trending=True``), the others (``False``) or all of them (``None``)."""
    with sessions() as session:
        found = {s.url: (SourceSpec(s.url, s.kind), s.last_success_at) for s in repo.list_sources(session)}
    for text in settings.sources:
        spec = resolve(text, hf_daily_url=settings.hf_daily_url)
        found.setdefault(spec.url, (spec, None))  # not in the database: when it was fetched is not known
    return [(spec, fetched) for spec, fetched in found.values() if trending is None or (spec.kind == "hf-daily") == trending]
