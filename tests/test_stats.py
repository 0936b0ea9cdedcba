"""`newsletter stats`: the list in numbers, counted from subscribers, the delivery ledger and subscription events."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, Preferences, Subscriber, SubscriptionEvent, utcnow
from newsletter.stats import read_stats, top_topics

NOW = dt.datetime(2026, 12, 2, 12, 0)
DAY = dt.timedelta(days=1)


@pytest.fixture
def db(env, database_url: str) -> Iterator[sessionmaker[Session]]:
    env(database_url=database_url)
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def person(email: str, status: str = "active", *topics: str) -> Subscriber:
    row = Subscriber(email=email, status=status)
    row.preferences = Preferences(topics=[{"phrase": t, "weight": 1.0} for t in topics])
    return row


def delivery(who: Subscriber, day: int, status: str, *, sent_at: dt.datetime | None = None,
             updated_at: dt.datetime | None = None) -> Delivery:
    return Delivery(subscriber_id=who.id, issue_date=dt.date(2026, 10, 1) + dt.timedelta(days=day), status=status,
                    message_id=f"<{who.id}.{day}@example.org>", sent_at=sent_at, updated_at=updated_at or sent_at or NOW)


def event(kind: str, at: dt.datetime, via: str = "web") -> SubscriptionEvent:
    return SubscriptionEvent(address_hash="0" * 64, kind=kind, via=via, at=at)


def fill(sessions: sessionmaker[Session], now: dt.datetime) -> None:
    """A list whose every count differs between the last 7 and the last 30 days."""
    with sessions() as session:
        ada, bob = person("ada@example.org", "active", "graphs"), person("bob@example.org", "bounced")
        session.add_all([ada, bob, person("cy@example.org", "paused"), person("dee@example.org", "unsubscribed"),
                         person("eve@example.org", "pending"), person("fay@example.org")])
        session.flush()
        session.add_all([
            delivery(ada, 1, "sent", sent_at=now - 1 * DAY), delivery(ada, 2, "sent", sent_at=now - 10 * DAY),
            delivery(ada, 3, "sent", sent_at=now - 40 * DAY), delivery(ada, 4, "pending", updated_at=now - DAY),
            delivery(bob, 1, "failed", updated_at=now - 2 * DAY), delivery(bob, 2, "failed", updated_at=now - 20 * DAY),
            delivery(bob, 3, "failed", updated_at=now - 31 * DAY), delivery(bob, 4, "retry", updated_at=now - DAY),
            event("unsubscribed", now - 3 * DAY, "one-click"), event("unsubscribed", now - 15 * DAY, "email"),
            event("unsubscribed", now - 31 * DAY), event("unsubscribed", now + dt.timedelta(hours=1)),
            event("confirmed", now - DAY), event("confirmed", now - 25 * DAY), event("confirmed", now - 5 * DAY, "cli"),
            event("confirmed", now - 8 * DAY, "import"), event("requested", now - DAY), event("paused", now - DAY, "cli"),
        ])
        session.commit()


def test_counts_over_the_last_7_and_30_days(db) -> None:
    fill(db, NOW)
    with db() as session:
        report = read_stats(session, now=NOW)
    assert report.by_status == {"pending": 1, "active": 2, "paused": 1, "unsubscribed": 1, "bounced": 1}
    assert report.subscribers == 6
    week, month = report.windows
    assert (week.days, week.sent, week.bounces, week.unsubscribes, week.confirmations, week.added) == (7, 1, 1, 1, 1, 1)
    assert (month.days, month.sent, month.bounces, month.unsubscribes, month.confirmations, month.added) == (30, 2, 2, 2, 2, 2)


def test_the_top_topics_are_the_active_subscribers_counted_case_insensitively(db) -> None:
    with db() as session:
        session.add_all([
            person("a@example.org", "active", "Diffusion Models", "diffusion  models", "graphs"),  # one vote each
            person("b@example.org", "active", "diffusion models", "Graphs"),
            person("c@example.org", "active", "diffusion models", "robots"),
            person("d@example.org", "paused", "robots", "robots again"),
            person("e@example.org", "unsubscribed", "robots"),
            person("f@example.org", "active", *(f"topic {n:02}" for n in range(12))),
        ])
        session.commit()
        top = top_topics(session)
    assert [(t.topic, t.subscribers) for t in top] == [
        ("diffusion models", 3), ("Graphs", 2), ("robots", 1), *((f"topic {n:02}", 1) for n in range(7))]


def test_the_command_prints_a_table_for_people_and_json_for_programs(cli, db) -> None:
    fill(db, utcnow())
    result = cli("stats")
    assert result.code == 0, result.err
    assert result.out.startswith("6 subscribers: pending 1, active 2, paused 1, unsubscribed 1, bounced 1\n")
    rows = {line.split("  ")[0]: line.split()[-2:] for line in result.out.splitlines() if "  " in line}
    assert rows["digests sent"] == ["1", "2"] and rows["bounces"] == ["1", "2"] and rows["added by the admin"] == ["1", "2"]
    assert "graphs" in result.out and len(result.out.splitlines()) < 20

    data: dict[str, Any] = json.loads(cli("stats", "--json").out)
    assert set(data) == {"at", "subscribers", "last_7_days", "last_30_days", "top_topics"}
    assert data["subscribers"] == {"total": 6, "by_status": {"pending": 1, "active": 2, "paused": 1, "unsubscribed": 1,
                                                             "bounced": 1}}
    assert data["last_7_days"] == {"sent": 1, "bounces": 1, "unsubscribes": 1, "confirmations": 1, "added": 1}
    assert data["last_30_days"] == {"sent": 2, "bounces": 2, "unsubscribes": 2, "confirmations": 2, "added": 2}
    assert data["top_topics"] == [{"topic": "graphs", "subscribers": 1}]
    assert dt.datetime.fromisoformat(data["at"].replace("Z", "+00:00")) <= dt.datetime.now(dt.UTC)


def test_an_empty_list_has_zeros_and_says_there_are_no_topics(cli, db) -> None:
    result = cli("stats")
    assert result.code == 0 and "0 subscribers: pending 0, active 0" in result.out
    assert "top topics: none" in result.out
    assert json.loads(cli("stats", "--json").out)["top_topics"] == []
