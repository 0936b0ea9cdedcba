"""``newsletter stats``: the list in numbers, read from the database in one read-only pass.

- **Subscribers** by status, now.
- Over the last 7 and 30 days (``WINDOWS_DAYS``), from the delivery ledger: digests **sent** (by
  ``sent_at``) and **bounces** (deliveries that failed permanently, by when they failed); from the
  subscription events: **unsubscribes**, **confirmations** (double opt-in links used) and subscribers
  **added** by the admin (``subscribers add`` and ``import``), kept apart as nobody confirmed those.
  Events are recorded when NEWSLETTER_SECRET_KEY is set (they keep a keyed hash of the address).
- The most common **topics** of active subscribers: case-insensitive, each subscriber counted once
  per topic, shown in their most common spelling.

All datetimes are naive UTC, as stored; ``now`` is an argument.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from newsletter.db.models import (
    SUBSCRIBER_STATUSES,
    Delivery,
    DeliveryStatus,
    Preferences,
    Subscriber,
    SubscriberStatus,
    SubscriptionEvent,
    SubscriptionEventKind,
)

WINDOWS_DAYS = (7, 30)  # a week shows this week's trouble; a month, the trend
TOP_TOPICS = 10
ADMIN_VIAS = ("cli", "import")  # subscriptions.Via values of the admin's own additions: no one confirmed them
TOPICS_BATCH = 2_000  # preference rows fetched at a time: 100,000 subscribers never sit in memory at once


@dataclass(frozen=True, slots=True)
class Window:
    """What happened in the ``days`` before ``now``."""

    days: int
    sent: int  # deliveries sent
    bounces: int  # deliveries that failed permanently
    unsubscribes: int
    confirmations: int  # confirmation links used
    added: int  # subscribers the admin added or imported

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "bounces": self.bounces, "unsubscribes": self.unsubscribes,
                "confirmations": self.confirmations, "added": self.added}


@dataclass(frozen=True, slots=True)
class TopicCount:
    topic: str
    subscribers: int


@dataclass(frozen=True, slots=True)
class Stats:
    now: dt.datetime
    by_status: dict[str, int]  # every status, zeros included
    windows: tuple[Window, ...]
    top_topics: tuple[TopicCount, ...]

    @property
    def subscribers(self) -> int:
        return sum(self.by_status.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.now.isoformat(timespec="seconds") + "Z",
            "subscribers": {"total": self.subscribers, "by_status": dict(self.by_status)},
            **{f"last_{w.days}_days": w.as_dict() for w in self.windows},
            "top_topics": [{"topic": t.topic, "subscribers": t.subscribers} for t in self.top_topics],
        }


def read_stats(session: Session, *, now: dt.datetime, top: int = TOP_TOPICS) -> Stats:
    """The numbers at ``now`` (naive UTC)."""
    counted = dict(session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status)).all())
    by_status = {str(status): counted.pop(status, 0) for status in SUBSCRIBER_STATUSES} | counted
    return Stats(now, by_status, tuple(_window(session, now=now, days=days) for days in WINDOWS_DAYS),
                 top_topics(session, top=top))


def _window(session: Session, *, now: dt.datetime, days: int) -> Window:
    since = now - dt.timedelta(days=days)

    def deliveries(status: DeliveryStatus, when: Any) -> int:
        query = select(func.count()).select_from(Delivery).where(Delivery.status == status, when > since, when <= now)
        return session.scalar(query) or 0

    events = select(SubscriptionEvent.kind, SubscriptionEvent.via, func.count()).where(
        SubscriptionEvent.at > since, SubscriptionEvent.at <= now,
        SubscriptionEvent.kind.in_((SubscriptionEventKind.UNSUBSCRIBED, SubscriptionEventKind.CONFIRMED)),
    ).group_by(SubscriptionEvent.kind, SubscriptionEvent.via)
    by_kind: dict[tuple[str, bool], int] = defaultdict(int)
    for kind, via, count in session.execute(events):
        by_kind[kind, via in ADMIN_VIAS] += count
    return Window(
        days=days,
        sent=deliveries(DeliveryStatus.SENT, Delivery.sent_at),
        bounces=deliveries(DeliveryStatus.FAILED, Delivery.updated_at),  # a failed delivery is never touched again
        unsubscribes=by_kind[SubscriptionEventKind.UNSUBSCRIBED, False] + by_kind[SubscriptionEventKind.UNSUBSCRIBED, True],
        confirmations=by_kind[SubscriptionEventKind.CONFIRMED, False],
        added=by_kind[SubscriptionEventKind.CONFIRMED, True],
    )


def top_topics(session: Session, *, top: int = TOP_TOPICS) -> tuple[TopicCount, ...]:
    """The ``top`` topics most active subscribers follow, case-insensitively, most followed first."""
    followers: Counter[str] = Counter()
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    query = (select(Preferences.topics).join(Subscriber, Subscriber.id == Preferences.subscriber_id)
             .where(Subscriber.status == SubscriberStatus.ACTIVE).execution_options(yield_per=TOPICS_BATCH))
    for topics in session.scalars(query):
        phrases = {" ".join(str(t["phrase"]).split()) for t in topics or () if str(t.get("phrase", "")).strip()}
        by_key = {phrase.casefold(): phrase for phrase in sorted(phrases)}  # one vote per subscriber and topic
        followers.update(by_key.keys())
        for key, phrase in by_key.items():
            spellings[key][phrase] += 1
    ranked = sorted(followers.items(), key=lambda item: (-item[1], item[0]))[:top]
    return tuple(TopicCount(min(spellings[key].items(), key=lambda s: (-s[1], s[0]))[0], count) for key, count in ranked)
