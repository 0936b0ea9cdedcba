"""Links name subscribers by id, so an id is never handed out twice: a removed subscriber's links die with them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from starlette.testclient import TestClient

from newsletter.db import migrate
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.web.app import create_app
from tests.web.conftest import Site, make_site


@pytest.fixture
def any_site(database_url: str) -> Iterator[Site]:
    """The site on SQLite and on PostgreSQL."""
    engine = make_engine(database_url)
    yield make_site(database_url, make_sessionmaker(engine))
    engine.dispose()


def test_a_removed_subscribers_id_is_not_reused_and_their_links_are_dead(any_site: Site) -> None:
    site = any_site
    paper = site.paper_ids[0]
    old_link = site.link(paper, "down")  # in an email Ada got
    site.remove_subscriber("ada@example.org")
    newcomer = site.add_subscriber("bob@example.org")
    assert newcomer != site.subscriber_id, "a new subscriber got the removed one's id"

    with TestClient(create_app(settings=site.settings, sessions=site.sessions)) as client:
        for answer in (client.get(old_link), client.post(old_link)):
            assert answer.status_code == 410 and "subscription that no longer exists" in answer.text
        assert site.feedback() == [], "Ada's old link did nothing, least of all for Bob"
        assert client.post(site.link(paper, subscriber_id=newcomer)).status_code == 200
    assert site.feedback() == [(newcomer, paper, 1)]


def test_the_migration_keeps_every_row_when_it_rebuilds_the_sqlite_table(tmp_path) -> None:
    """0005 rebuilds ``subscribers``; with foreign keys on, dropping the old table would cascade."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate.upgrade(engine, "0004")
    with engine.begin() as connection:
        for n in (1, 2, 3):
            connection.execute(text(
                "INSERT INTO subscribers (id, email, status, timezone, send_hour, frequency, max_papers, created_at, "
                f"bounce_count) VALUES ({n}, 's{n}@example.org', 'active', 'UTC', 7, 'daily', 10, '2026-11-01', 0)"))
            connection.execute(text(
                "INSERT INTO preferences (subscriber_id, topics, exclude, categories, authors, describe, seed_papers) "
                f"VALUES ({n}, '[]', '[]', '[]', '[]', '', '[]')"))
            connection.execute(text(
                "INSERT INTO deliveries (subscriber_id, issue_date, status, message_id, attempts, created_at, updated_at) "
                f"VALUES ({n}, '2026-11-23', 'sent', '<m{n}@example.org>', 1, '2026-11-23', '2026-11-23')"))
        connection.execute(text("INSERT INTO papers (id, key, title, abstract, authors, categories, links, first_seen_at, "
                                "updated_at, keywords, updated_fields) VALUES (1, 'k', 't', 'a', '[]', '[]', '{}', "
                                "'2026-11-23', '2026-11-23', '[]', '[]')"))
        connection.execute(text("INSERT INTO feedback (subscriber_id, paper_id, value, created_at) VALUES (3, 1, -1, '2026-11-23')"))
    counts = text("SELECT (SELECT count(*) FROM subscribers), (SELECT count(*) FROM preferences), "
                  "(SELECT count(*) FROM deliveries), (SELECT count(*) FROM feedback)")

    migrate.upgrade(engine)
    with engine.begin() as connection:
        assert connection.execute(counts).one() == (3, 3, 3, 1)
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1, "foreign keys are back on"
        connection.execute(text("DELETE FROM subscribers WHERE id = 3"))
        assert connection.execute(counts).one() == (2, 2, 2, 0), "and still cascade"
        connection.execute(text("INSERT INTO subscribers (email, status, timezone, send_hour, frequency, max_papers, "
                                "created_at, bounce_count) VALUES ('new@example.org', 'active', 'UTC', 7, 'daily', 10, "
                                "'2026-11-30', 0)"))
        assert connection.execute(text("SELECT id FROM subscribers WHERE email = 'new@example.org'")).scalar() == 4

    migrate.downgrade(engine, "0004")
    with engine.connect() as connection:
        assert connection.execute(counts).one() == (3, 2, 2, 0)
    engine.dispose()
