"""Storing papers idempotently: one row per arXiv id, versions and cross-lists merged."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from sqlalchemy import select

from newsletter.db import repo
from newsletter.db.models import Paper
from newsletter.errors import NewsletterError
from newsletter.ingest.feeds import parse_feed
from newsletter.ingest.sources import Trust
from newsletter.records import NewSubscriber
from tests.conftest import FIXTURES

NOW = dt.datetime(2026, 11, 23, 6, 0)


def test_ingesting_the_same_feed_twice_changes_nothing(sessions) -> None:
    papers = parse_feed((FIXTURES / "arxiv_cs_lg.rss").read_bytes(), source="t").papers
    with sessions() as session:
        first = repo.upsert_papers(session, papers=papers, source_id=None, now=NOW)
        session.commit()
        second = repo.upsert_papers(session, papers=papers, source_id=None, now=NOW + dt.timedelta(days=1))
        session.commit()
        assert (first.new, first.updated, first.unchanged) == (60, 0, 0)
        assert (second.new, second.updated, second.unchanged) == (0, 0, 60)
        assert {r.first_seen_at for r in session.scalars(select(Paper))} == {NOW}


def test_a_new_version_updates_the_paper_and_a_cross_list_adds_categories(sessions) -> None:
    [paper] = parse_feed((FIXTURES / "arxiv_cs_lg.rss").read_bytes(), source="t").papers[:1]
    replaced = replace(paper, version=2, title="A better title", announce_type="replace")
    cross = replace(paper, categories=("stat.ML",), announce_type="cross")
    with sessions() as session:
        repo.upsert_papers(session, papers=[paper], source_id=None, now=NOW)
        counts = repo.upsert_papers(session, papers=[replaced, cross], source_id=None, now=NOW)
        session.commit()
        [row] = session.scalars(select(Paper)).all()
    assert counts.updated == 1 and counts.new == 0
    assert (row.key, row.version, row.title, row.announce_type) == (paper.key, 2, "A better title", "replace")
    assert row.categories == [*paper.categories, "stat.ML"]
    assert row.first_seen_at == NOW


def test_only_arxiv_trust_revises_an_arxiv_paper_and_any_source_attaches(sessions) -> None:
    [paper] = parse_feed((FIXTURES / "arxiv_cs_lg.rss").read_bytes(), source="t").papers[:1]
    claim = replace(paper, version=9, title="Pwned", abstract="Pwned.", authors=("Mallory",), categories=("cs.CR",),
                    pdf_url="https://evil.example/x.pdf", upvotes=42, tldr="In short.", keywords=("sampling",),
                    code_url="https://github.com/example/code", project_url="https://example.org/project")
    with sessions() as session:
        repo.upsert_papers(session, papers=[paper], source_id=None, now=NOW, trust=Trust.ARXIV)
        attached = repo.upsert_papers(session, papers=[claim], source_id=None, now=NOW, trust=Trust.FEED)
        again = repo.upsert_papers(session, papers=[claim], source_id=None, now=NOW, trust=Trust.TRENDING)
        assert (attached.updated, again.unchanged) == (1, 1)
        [row] = session.scalars(select(Paper)).all()
        assert (row.title, row.abstract, row.authors, row.version) == (paper.title, paper.abstract, list(paper.authors), 1)
        assert row.categories == list(paper.categories) and row.links["pdf"] == paper.pdf_url
        assert (row.upvotes, row.tldr, row.keywords) == (42, "In short.", ["sampling"])
        assert (row.links["code"], row.links["project"]) == ("https://github.com/example/code", "https://example.org/project")
        repo.upsert_papers(session, papers=[claim], source_id=None, now=NOW, trust=Trust.ARXIV)
        assert (row.title, row.version, row.links["pdf"]) == ("Pwned", 9, "https://evil.example/x.pdf")


def test_a_feed_entry_for_an_unknown_arxiv_paper_is_the_feeds_own_paper_every_time(sessions) -> None:
    papers = parse_feed((FIXTURES / "arxiv_cs_lg.rss").read_bytes(), source="t").papers[:3]
    with sessions() as session:
        first = repo.upsert_papers(session, papers=papers, source_id=None, now=NOW, trust=Trust.FEED)
        second = repo.upsert_papers(session, papers=papers, source_id=None, now=NOW, trust=Trust.FEED)
        session.commit()
        rows = session.scalars(select(Paper).order_by(Paper.id)).all()
    assert (first.new, second.new, second.unchanged) == (3, 0, 3)
    assert [r.key for r in rows] == [p.link for p in papers] and {r.arxiv_id for r in rows} == {None}


def test_a_feeds_own_paper_keeps_the_feeds_links_not_arxivs_for_the_id_it_claims(sessions) -> None:
    """A blog's entry with guid oai:arXiv.org:… was stored under https://arxiv.org/abs/<id> with arXiv's PDF link:
    the email sent readers to arXiv for text arXiv never published."""
    [listed] = parse_feed((FIXTURES / "arxiv_cs_lg.rss").read_bytes(), source="t").papers[:1]
    claim = replace(listed, link="https://blog.example.com/post", title="A blog post")
    with sessions() as session:
        assert repo.upsert_papers(session, papers=[claim], source_id=None, now=NOW, trust=Trust.FEED).new == 1
        [row] = session.scalars(select(Paper)).all()
    assert (row.key, row.arxiv_id, row.title) == ("https://blog.example.com/post", None, "A blog post")
    assert row.links == {"abs": "https://blog.example.com/post"}, "no arxiv.org link for the blog's text"


def test_the_trending_api_creates_papers_arxiv_has_not_listed_and_arxiv_revises_them(sessions) -> None:
    [listed] = parse_feed((FIXTURES / "arxiv_cs_lg.rss").read_bytes(), source="t").papers[:1]
    early = replace(listed, version=None, title="The trending API's title", upvotes=5)
    with sessions() as session:
        assert repo.upsert_papers(session, papers=[early], source_id=None, now=NOW, trust=Trust.TRENDING).new == 1
        repo.upsert_papers(session, papers=[listed], source_id=None, now=NOW, trust=Trust.ARXIV)
        [row] = session.scalars(select(Paper)).all()
    assert (row.key, row.title, row.version, row.upvotes) == (listed.key, listed.title, 1, 5)


def test_the_data_layers_errors_say_what_is_wrong_and_name_no_command(sessions) -> None:
    """The web front and the email commands show these too; the CLI adds its own commands to try."""
    with sessions() as session:
        repo.add_subscriber(session, new=NewSubscriber(email="ada@example.org"))
        repo.add_source(session, url="https://example.org/feed.xml", kind="feed")
        failing = {
            "ada@example.org is already a subscriber": lambda: repo.add_subscriber(session, new=NewSubscriber(email="ada@example.org")),
            "no subscriber 'ghost@example.org'": lambda: repo.get_subscriber(session, email="ghost@example.org"),
            "source https://example.org/feed.xml is already configured":
                lambda: repo.add_source(session, url="https://example.org/feed.xml", kind="feed"),
            "no source '42'": lambda: repo.remove_source(session, ref="42"),
            "no paper '2611.99999' has been ingested": lambda: repo.get_paper(session, ref="2611.99999"),
        }
        for message, call in failing.items():
            with pytest.raises(NewsletterError) as caught:
                call()
            assert str(caught.value) == message


def test_active_readers_read_preferences_as_the_orm_does_on_both_databases(database_url: str) -> None:
    from newsletter.db.engine import make_engine, make_sessionmaker
    from newsletter.db.models import Subscriber
    from newsletter.records import Preferences

    full = Preferences.from_lists(topics=["diffusion models^2", "Übersetzung"], exclude=["medical"], categories=["cs.LG"],
                                  authors=["Yann LeCun"], describe="I work on making LLM inference cheaper.",
                                  seed_papers=["2611.10001"], min_score=0.4)
    people = [NewSubscriber(email="full@example.org", preferences=full, max_papers=7, timezone="Asia/Tokyo", send_hour=9),
              NewSubscriber(email="bare@example.org", preferences=Preferences()),
              NewSubscriber(email="paused@example.org", preferences=full, status="paused")]
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            repo.import_subscribers(session, subscribers=people)
            session.commit()
            readers = repo.active_readers(session)
            expected = [repo.reader_of(row) for row in session.scalars(select(Subscriber).order_by(Subscriber.email)).unique()
                        if row.status == "active"]
    finally:
        engine.dispose()
    assert [r.email for r in readers] == ["bare@example.org", "full@example.org"], "active only, by address"
    assert readers == expected
    assert readers[1].preferences == full and readers[1].max_papers == 7 and readers[1].timezone == "Asia/Tokyo"
    assert readers[0].preferences == Preferences()
