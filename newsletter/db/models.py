"""SQLAlchemy 2.0 typed models. These rows never leave ``newsletter.db``; the pipeline sees records."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, list[dict[str, Any]]: JSON, list[int]: JSON}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


# Datetimes are stored naive in UTC: SQLite has no time zones, and one convention beats two. The
# scheduling code works in aware UTC; these two cross the line.
def naive(moment: dt.datetime) -> dt.datetime:
    """An aware instant as stored: naive UTC."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def aware(moment: dt.datetime) -> dt.datetime:
    """A stored (naive UTC) datetime as an aware instant."""
    return moment.replace(tzinfo=dt.UTC)


class Source(Base):
    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # arxiv-rss, arxiv-api, hf-daily, feed
    name: Mapped[str | None] = mapped_column(String(200))
    etag: Mapped[str | None] = mapped_column(String(512))
    last_modified: Mapped[str | None] = mapped_column(String(64))
    added_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_fetched_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # SHA-256 of the last body stored: identical bytes from a server without ETag support are not re-parsed.
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    # Health, for `newsletter status`: failures in a row (0 after a success), and the last run's new papers.
    consecutive_failures: Mapped[int] = mapped_column(default=0, server_default="0")
    last_success_at: Mapped[dt.datetime | None]
    last_new: Mapped[int | None]
    last_note: Mapped[str | None] = mapped_column(String(200))  # "no new papers (weekend or holiday listing)"


class Paper(Base):
    __tablename__ = "papers"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The arXiv id without version ("2409.01234", "hep-th/9901001"); for other feeds the link or guid.
    key: Mapped[str] = mapped_column(String(512), unique=True)
    arxiv_id: Mapped[str | None] = mapped_column(String(64), index=True)
    version: Mapped[int | None]
    title: Mapped[str] = mapped_column(Text)
    abstract: Mapped[str] = mapped_column(Text)
    authors: Mapped[list[str]] = mapped_column(default=list)
    categories: Mapped[list[str]] = mapped_column(default=list)
    links: Mapped[dict[str, Any]] = mapped_column(default=dict)  # abs, pdf, code, project
    announce_type: Mapped[str | None] = mapped_column(String(32))
    published_at: Mapped[dt.datetime | None]
    first_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    upvotes: Mapped[int | None]
    tldr: Mapped[str | None] = mapped_column(Text)
    keywords: Mapped[list[str]] = mapped_column(default=list)
    # What the latest new version changed ("title", "abstract", "authors"), for an "updated" note.
    updated_fields: Mapped[list[str]] = mapped_column(default=list)
    version_updated_at: Mapped[dt.datetime | None]
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id", ondelete="SET NULL"))


class UpvoteSnapshot(Base):
    """Upvotes as seen at each ingest where they changed, so "trending" can mean growth, not only a total."""

    __tablename__ = "paper_upvotes"
    __table_args__ = (Index("ix_paper_upvotes_paper_observed", "paper_id", "observed_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    paper_id: Mapped[int] = mapped_column(ForeignKey("papers.id", ondelete="CASCADE"))
    observed_at: Mapped[dt.datetime]
    upvotes: Mapped[int]


class Subscriber(Base):
    __tablename__ = "subscribers"
    # Ids are never handed out twice, also on SQLite: links in old emails name a subscriber by id,
    # and must die with them rather than act for whoever gets the id next.
    __table_args__ = (
        Index("ix_subscribers_status_next_send_at", "status", "next_send_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Stored lower-cased, so uniqueness is case-insensitive on every database.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    send_hour: Mapped[int] = mapped_column(default=7)
    send_minute: Mapped[int] = mapped_column(default=0, server_default="0")
    frequency: Mapped[str] = mapped_column(String(16), default="daily")  # daily | weekdays | weekly
    send_weekday: Mapped[int] = mapped_column(default=0, server_default="0")  # for weekly: 0 = Monday
    # The next send moment (naive UTC) per newsletter.schedule; the daemon's tick finds due subscribers
    # by this index instead of loading everyone. Recomputed when the schedule changes and after each issue.
    next_send_at: Mapped[dt.datetime | None]
    max_papers: Mapped[int] = mapped_column(default=10)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[dt.datetime | None]
    unsubscribed_at: Mapped[dt.datetime | None]
    bounce_count: Mapped[int] = mapped_column(default=0)  # permanent failures; suppressed past a limit
    # Part of every confirmation token; replaced when one is used or a new one is sent, so a
    # confirmation link works once, and only the latest one works.
    token_nonce: Mapped[str | None] = mapped_column(String(32))
    # A change asked for by someone who has not proved they hold the address yet (a subscribe form
    # for an address we know, a "topics:" email): applied when its confirmation link is used.
    pending_change: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    preferences: Mapped[Preferences] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan", uselist=False, lazy="joined"
    )


class SubscriberStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for their confirmation
    ACTIVE = "active"
    PAUSED = "paused"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"  # suppressed after permanent failures


SUBSCRIBER_STATUSES = tuple(SubscriberStatus)


class Preferences(Base):
    __tablename__ = "preferences"

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    topics: Mapped[list[dict[str, Any]]] = mapped_column(default=list)  # [{"phrase": ..., "weight": 1.0}]
    exclude: Mapped[list[str]] = mapped_column(default=list)
    categories: Mapped[list[str]] = mapped_column(default=list)
    authors: Mapped[list[str]] = mapped_column(default=list)
    describe: Mapped[str] = mapped_column(Text, default="")
    seed_papers: Mapped[list[str]] = mapped_column(default=list)  # arXiv ids: "more like these"
    min_score: Mapped[float | None]  # overrides NEWSLETTER_MIN_SCORE for this subscriber

    subscriber: Mapped[Subscriber] = relationship(back_populates="preferences")


class Feedback(Base):
    """"More / less like this" from a subscriber on a paper; the latest word counts."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("subscriber_id", "paper_id", name="uq_feedback_subscriber_paper"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    paper_id: Mapped[int] = mapped_column(ForeignKey("papers.id", ondelete="CASCADE"))
    value: Mapped[int]  # +1 more like this, -1 less like this
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DeliveryStatus(enum.StrEnum):
    """What happened to a delivery; the ledger's one vocabulary (see newsletter.db.ledger)."""

    PENDING = "pending"  # recorded, not yet handed to the relay
    SENDING = "sending"  # being handed over now (by the holder of the lease)
    SENT = "sent"
    RETRY = "retry"  # a temporary failure; tried again from next_attempt_at
    FAILED = "failed"  # a permanent failure; never retried
    EXPIRED = "expired"  # still not sent when the retry window closed
    UNKNOWN = "unknown"  # the relay may or may not have it; retried once with the same Message-ID
    EMPTY = "empty"  # a quiet day: nothing above the subscriber's threshold, no email
    MISSED = "missed"  # not planned before the end of the subscriber's local day (daemon down); papers roll over
    CANCELLED = "cancelled"  # the subscriber unsubscribed, paused or bounced before it was handed over: never sent


class SubscriptionEvent(Base):
    """What happened to a subscription, when and through what: for ``newsletter stats`` and the
    per-address limit on confirmation emails. Keeps a keyed hash of the address, never the address,
    so it outlives ``subscribers forget``."""

    __tablename__ = "subscription_events"
    __table_args__ = (Index("ix_subscription_events_address_kind_at", "address_hash", "kind", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"), index=True)
    address_hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))  # a SubscriptionEventKind
    via: Mapped[str] = mapped_column(String(16))  # web | email | cli | one-click | import
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class SubscriptionEventKind(enum.StrEnum):
    REQUESTED = "requested"  # a subscribe form or email for this address
    CONFIRMATION_SENT = "confirmation-sent"
    ALREADY_SUBSCRIBED_SENT = "already-subscribed-sent"
    CONFIRMED = "confirmed"
    CHANGED = "changed"  # preferences or schedule
    UNSUBSCRIBED = "unsubscribed"
    PAUSED = "paused"
    RESUMED = "resumed"
    FORGOTTEN = "forgotten"


class ForgottenAddress(Base):
    """An address whose personal data was deleted (``subscribers forget``): only a keyed hash is kept,
    so an import or an admin's ``add`` cannot silently bring it back; only its owner can, by
    confirming a new subscription."""

    __tablename__ = "forgotten_addresses"

    address_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    forgotten_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Delivery(Base):
    """The delivery ledger: one row per subscriber per issue date (their local date), whatever happens to it.

    A sender claims due rows with a lease (``leased_by``, ``lease_until``) before sending them; a row
    whose lease ran out is taken over by the next sender, one whose lease is alive is never touched.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "issue_date", name="uq_deliveries_subscriber_date"),
        Index("ix_deliveries_issue_date_status", "issue_date", "status"),
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        # A reply to a digest names it by Message-ID (email commands: "unsubscribe").
        Index("ix_deliveries_message_id", "message_id"),
        # Every send (a worker's every batch) renews and releases its leases and expires stale deliveries
        # (newsletter.db.ledger); without these each read the whole ledger: 43 ms a batch at 100,000 rows, 233 ms
        # at 1 M, growing with the table. Partial, so they hold only the rows a sender holds and the unsent ones.
        Index("ix_deliveries_leased_by", "leased_by",
              postgresql_where=text("leased_by IS NOT NULL"), sqlite_where=text("leased_by IS NOT NULL")),
        # The predicate is ledger.expire_stale's status filter, letter for letter (SQLite uses a partial
        # index only for a query that repeats its WHERE terms; the ledger renders that IN list literally).
        Index("ix_deliveries_unsent_created_at", "created_at",
              postgresql_where=text("status IN ('pending', 'retry', 'unknown')"),
              sqlite_where=text("status IN ('pending', 'retry', 'unknown')")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    issue_date: Mapped[dt.date]
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    message_id: Mapped[str] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(index=True)  # also feeds the rate limit after a restart
    next_attempt_at: Mapped[dt.datetime | None]  # for status retry: not before this
    send_at: Mapped[dt.datetime | None]  # the send moment it was planned for: its candidates were first seen before it
    leased_by: Mapped[str | None] = mapped_column(String(100))  # "host:pid:random" of the sender holding it
    lease_until: Mapped[dt.datetime | None]  # the holder's claim lapses then, unless it renews it
    # The "trending today" papers (ids, in order) of the message as it was built for sending, so the
    # archive ("view in browser") shows the email that was sent, not today's trending.
    trending_ids: Mapped[list[int] | None] = mapped_column(JSON)

    items: Mapped[list[DeliveryItem]] = relationship(
        cascade="all, delete-orphan", order_by="DeliveryItem.rank"
    )


DELIVERY_STATUSES = tuple(DeliveryStatus)


class DeliveryItem(Base):
    """A paper picked for a delivery, with its rank, score and reasons, frozen at pick time."""

    __tablename__ = "delivery_items"

    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True)
    paper_id: Mapped[int] = mapped_column(ForeignKey("papers.id", ondelete="CASCADE"), primary_key=True, index=True)
    rank: Mapped[int]
    score: Mapped[float]
    reasons: Mapped[list[str]] = mapped_column(default=list)


class DaemonHeartbeat(Base):
    """One row per daemon process, written at every tick: ``newsletter status`` tells a silent one."""

    __tablename__ = "daemon_heartbeats"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)  # host:pid
    started_at: Mapped[dt.datetime]
    beat_at: Mapped[dt.datetime]
    stopped_at: Mapped[dt.datetime | None]  # a clean shutdown; a crash leaves it empty and the beat old
    # Per job: {"next_run_at", "last_run_at", "last_seconds", "last_result", "last_error"} (ISO strings, UTC).
    jobs: Mapped[dict[str, Any]] = mapped_column(default=dict)


# The embedding tables live with the code that reads them; their models join Base's metadata here, so
# every reader of the schema (Alembic, the migrations test) sees them.
from newsletter.db import embeddings as _embeddings  # noqa: E402,F401
