"""Storing papers idempotently: one row per arXiv id, versions and cross-lists merged."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from sqlalchemy import select

from newsletter.db import repo
from newsletter.db.models import Paper
from newsletter.ingest.feeds import parse_feed
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
