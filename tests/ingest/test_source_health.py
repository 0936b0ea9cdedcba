"""Each ingest records a configured source's health (for `newsletter status`) and logs upstream faults."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy.orm import Session, sessionmaker
from werkzeug import Response

from newsletter.db import repo
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Source, utcnow
from newsletter.ingest.fetch import Fetcher, make_client
from newsletter.ingest.run import EMPTY_LISTING, ingest_sources
from newsletter.ingest.sources import SourceSpec
from tests.conftest import FIXTURES

FEED = (FIXTURES / "arxiv_cs_lg.rss").read_bytes()
WEEKEND = (FIXTURES / "arxiv_weekend.rss").read_bytes()
WEDNESDAY = dt.datetime(2026, 12, 2, 15, 0)  # 10:00 in New York
SATURDAY = dt.datetime(2026, 12, 5, 15, 0)
MONDAY_EARLY_UTC = dt.datetime(2026, 11, 30, 3, 0)  # still Sunday 22:00 in New York: the weekend's listing


@pytest.fixture
def db(cli, configured) -> Iterator[sessionmaker[Session]]:
    assert cli("init").code == 0
    engine = make_engine(configured)
    yield make_sessionmaker(engine)
    engine.dispose()


def answers(httpserver: HTTPServer, path: str, *responses: Response) -> None:
    """Serve ``path`` with these responses in turn."""
    queue = list(responses)
    httpserver.expect_request(path).respond_with_handler(lambda _request: queue.pop(0))


def health(sessions: sessionmaker[Session], url: str) -> Source:
    with sessions() as session:
        source = repo.get_source(session, url=url)
        assert source is not None
        return source


def test_failures_in_a_row_are_counted_and_a_success_resets_them(cli, db, env, httpserver: HTTPServer, caplog) -> None:
    env(fetch_retries=0)  # one 500 is one failed fetch, at once
    answers(httpserver, "/rss", Response(FEED, content_type="application/rss+xml"), Response("down", status=500),
            Response("still down", status=500), Response(FEED, content_type="application/rss+xml"))
    url = httpserver.url_for("/rss")
    assert cli("sources", "add", url, "--no-check").code == 0
    caplog.set_level(logging.INFO, logger="newsletter.ingest.run")

    before = utcnow()
    assert cli("ingest").code == 0
    first = health(db, url)
    assert (first.consecutive_failures, first.last_new, first.last_note, first.last_error) == (0, 60, None, None)
    assert first.last_success_at is not None and first.last_success_at >= before

    assert cli("ingest").code == 1
    once = health(db, url)
    assert (once.consecutive_failures, once.last_success_at, once.last_new) == (1, first.last_success_at, 60)
    assert "HTTP 500" in once.last_error and once.last_fetched_at > first.last_fetched_at
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "one failure is not worth a warning"

    assert cli("ingest").code == 1
    assert health(db, url).consecutive_failures == 2
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(f"{url}: failed 2 times in a row: ") and "HTTP 500" in warning.getMessage()
    assert warning.getMessage().count(url) == 1, warning.getMessage()  # the source named once

    [report] = json.loads(cli("ingest", "--json").out)
    again = health(db, url)
    assert (again.consecutive_failures, again.last_error) == (0, None)
    assert again.last_success_at > first.last_success_at
    # The same bytes as the last success: nothing new, and the note says why.
    assert (again.last_new, again.last_note) == (0, "same content as the last fetch") == (report["new"], report["note"])


def ingest_at(sessions: sessionmaker[Session], url: str, *, now: dt.datetime) -> None:
    with make_client(timeout_s=5) as client:
        fetcher = Fetcher(client=client, max_bytes=10_000_000, host_interval_s=0, allow_private=True,
                          arxiv_hosts=frozenset({"localhost", "127.0.0.1"}))  # the test server speaks for arXiv
        [report] = ingest_sources([SourceSpec(url, "arxiv-rss")], sessions=sessions, fetcher=fetcher, now=now)
    assert report.error is None


@pytest.mark.parametrize(("now", "warned"), [(WEDNESDAY, True), (SATURDAY, False), (MONDAY_EARLY_UTC, False)])
def test_an_empty_arxiv_listing_on_a_weekday_is_logged_as_a_warning(db, httpserver: HTTPServer, caplog,
                                                                     now: dt.datetime, warned: bool) -> None:
    httpserver.expect_request("/rss/cs.LG").respond_with_data(WEEKEND, content_type="application/rss+xml")
    url = httpserver.url_for("/rss/cs.LG")
    with db() as session:
        repo.add_source(session, url=url, kind="arxiv-rss")
        session.commit()
    with caplog.at_level(logging.INFO, logger="newsletter.ingest.run"):
        ingest_at(db, url, now=now)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ([f"{url}: the arXiv listing is empty on a weekday (a holiday, or a fault at arXiv)"] if warned else [])
    source = health(db, url)
    assert (source.last_new, source.last_note, source.last_success_at, source.consecutive_failures) == (0, EMPTY_LISTING, now, 0)
