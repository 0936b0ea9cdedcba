"""The delivery ledger's writes during sending: batched Core statements, one commit per batch.

pending → sending (just before the message is handed to the relay) → sent | retry | failed |
expired | unknown, or back to pending when a run stopped before the message could be handed over. A
delivery left ``sending`` by a crash becomes ``unknown`` at the next start and is retried once, with
the same Message-ID. All times are naive UTC.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import TextClause, and_, bindparam, or_, select, text, update
from sqlalchemy.orm import Session

from newsletter.db.models import Delivery, Subscriber

UNKNOWN_MAX_ATTEMPTS = 2  # the first try plus one retry after an unknown outcome

# The two writes of every message, as plain statements compiled once (the ORM's per-call cost was a
# third of the sending time).
MARK_SENDING = text("UPDATE deliveries SET status = 'sending', attempts = attempts + 1, updated_at = :now WHERE id = :id")
MARK_SENT = text("UPDATE deliveries SET status = 'sent', sent_at = :now, last_error = NULL, updated_at = :now WHERE id = :id")


@dataclass(frozen=True, slots=True)
class Outcome:
    delivery_id: int
    subscriber_id: int
    status: str  # sent | retry | failed | unknown | pending (the run stopped before the message left)
    error: str | None = None
    hard_bounce: bool = False  # "no such user": suppress the address at once
    bounce: bool = True  # a failure the relay gave for the address; not one of ours (a render bug, no SMTPUTF8)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 300.0  # first retry after ~5 minutes, then 10, 20 ... (with ±25% jitter)
    max_delay_s: float = 3600.0
    window_s: float = 86_400.0  # after 24 h of trying, a delivery expires
    bounce_limit: int = 3  # permanent failures before an address is suppressed

    def next_attempt(self, *, attempts: int, created_at: dt.datetime, now: dt.datetime) -> dt.datetime | None:
        """When to try again, or None when the retry window is over (expired)."""
        delay = min(self.base_s * 2 ** max(attempts - 1, 0), self.max_delay_s) * random.uniform(0.75, 1.25)
        when = now + dt.timedelta(seconds=delay)
        return when if when - created_at <= dt.timedelta(seconds=self.window_s) else None


class Ledger:
    """Writes of one sending run; the caller batches calls (see send.dispatch.GroupCommitter)."""

    def __init__(self, session: Session, *, policy: RetryPolicy) -> None:
        self.session, self.policy = session, policy
        self.expired = 0  # retries that fell outside the window and were recorded as expired

    def started(self, delivery_ids: Sequence[int], *, now: dt.datetime) -> None:
        self._run(MARK_SENDING, [{"id": i, "now": now} for i in delivery_ids])

    def _run(self, statement: TextClause, rows: list[dict[str, object]]) -> None:
        if rows:
            self.session.execute(statement, rows)  # executemany of one cached statement

    def finished(self, outcomes: Sequence[Outcome], *, now: dt.datetime) -> None:
        by_status: dict[str, list[Outcome]] = {}
        for outcome in outcomes:
            by_status.setdefault(outcome.status, []).append(outcome)
        self._run(MARK_SENT, [{"id": o.delivery_id, "now": now} for o in by_status.get("sent", ())])
        for status in ("failed", "unknown", "pending"):
            if rows := by_status.get(status):
                self._set(rows, status=status, now=now)
        if retry := by_status.get("retry"):
            self._schedule_retries(retry, now=now)
        if bounced := [o for o in by_status.get("failed", ()) if o.bounce]:
            self._count_bounces(bounced)

    def _set(self, outcomes: Sequence[Outcome], *, status: str, now: dt.datetime) -> None:
        statement = (update(Delivery).where(Delivery.id == bindparam("delivery"))
                     .values(status=status, last_error=bindparam("error"), updated_at=now))
        self.session.connection().execute(statement, [{"delivery": o.delivery_id, "error": o.error} for o in outcomes])

    def _schedule_retries(self, outcomes: Sequence[Outcome], *, now: dt.datetime) -> None:
        tried = {row.id: row for row in self.session.execute(
            select(Delivery.id, Delivery.attempts, Delivery.created_at).where(Delivery.id.in_([o.delivery_id for o in outcomes]))
        )}
        due: list[tuple[Outcome, dt.datetime | None]] = []
        expired: list[tuple[Outcome, dt.datetime | None]] = []
        for outcome in outcomes:
            row = tried[outcome.delivery_id]
            when = self.policy.next_attempt(attempts=row.attempts, created_at=row.created_at, now=now)
            (due if when else expired).append((outcome, when))
        if due:
            statement = (update(Delivery).where(Delivery.id == bindparam("delivery"))
                         .values(status="retry", last_error=bindparam("error"), next_attempt_at=bindparam("when"), updated_at=now))
            self.session.connection().execute(statement, [{"delivery": o.delivery_id, "error": o.error, "when": w} for o, w in due])
        if expired:
            self._set([o for o, _ in expired], status="expired", now=now)
            self.expired += len(expired)

    def _count_bounces(self, outcomes: Sequence[Outcome]) -> None:
        ids = [o.subscriber_id for o in outcomes]
        hard = [o.subscriber_id for o in outcomes if o.hard_bounce]
        self.session.execute(update(Subscriber).where(Subscriber.id.in_(ids)).values(bounce_count=Subscriber.bounce_count + 1))
        self.session.execute(
            update(Subscriber)
            .where(Subscriber.id.in_(ids), or_(Subscriber.bounce_count >= self.policy.bounce_limit, Subscriber.id.in_(hard)))
            .values(status="bounced")
        )


def recover_interrupted(session: Session, *, now: dt.datetime) -> int:
    """Deliveries left ``sending`` by a crash: the relay may or may not have the message."""
    result = session.execute(
        update(Delivery).where(Delivery.status == "sending")
        .values(status="unknown", updated_at=now,
                last_error="the sending process stopped before the relay's answer was recorded")
    )
    return getattr(result, "rowcount", 0) or 0


def due_filter(*, now: dt.datetime):
    """Deliveries to send now: pending, retries whose time has come, unknown outcomes not yet retried."""
    return or_(
        Delivery.status == "pending",
        and_(Delivery.status == "retry", or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now)),
        and_(Delivery.status == "unknown", Delivery.attempts < UNKNOWN_MAX_ATTEMPTS),
    )


def recent_send_times(session: Session, *, since: dt.datetime, limit: int) -> list[dt.datetime]:
    """When the latest messages left (newest last): seeds the rate limit after a restart."""
    rows = session.scalars(
        select(Delivery.sent_at).where(Delivery.sent_at >= since).order_by(Delivery.sent_at.desc()).limit(limit)
    ).all()
    return sorted(row for row in rows if row is not None)


__all__ = ["Ledger", "Outcome", "RetryPolicy", "due_filter", "recent_send_times", "recover_interrupted"]
