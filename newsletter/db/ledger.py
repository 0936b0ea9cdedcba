"""The delivery ledger: what was planned for whom, who is sending it, and what became of it.

pending → sending (just before the message is handed to the relay) → sent | retry | failed |
expired | unknown, or back to pending when a run stopped before the message could be handed over;
``empty`` for a quiet day, ``missed`` for an issue nobody planned before its local day ended.

Any number of processes share the ledger. A sender first *claims* a batch of due deliveries with a
lease (``claim_due``: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, a ``BEGIN IMMEDIATE`` write
transaction on SQLite), renews it while it sends, and releases what it did not send. A delivery left
``sending`` becomes ``unknown`` only once its sender's lease has lapsed (``recover_interrupted``), and
is then retried once with the same Message-ID. Nothing here is tied to one issue date: a retry from
yesterday is retried or expired today (``expire_stale``, by query). All times are naive UTC.
"""

from __future__ import annotations

import datetime as dt
import random
import secrets
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, DateTime, Dialect, String, Table, and_, bindparam, case, func, or_, select, text, type_coerce, update
from sqlalchemy.orm import Session

from newsletter import records
from newsletter.db.models import Delivery, DeliveryItem, DeliveryStatus, Subscriber, SubscriberStatus
from newsletter.db.repo import IN_CHUNK

UNKNOWN_MAX_ATTEMPTS = 2  # the first try plus one retry after an unknown outcome

# The two writes of every message, as the driver's own statements ({} is the driver's parameter marker).
# Both only touch a row this sender still holds: one whose lease lapsed and was taken over by another
# sender is that sender's now.
MARK_SENDING = (
    "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, updated_at = {m} "
    "WHERE id IN ({ids}) AND leased_by = {m} AND status IN ('pending', 'retry', 'unknown') "
    # unsubscribed (or suppressed) since the claim: not sent
    "AND EXISTS (SELECT 1 FROM subscribers WHERE subscribers.id = deliveries.subscriber_id AND subscribers.status = 'active') "
    "RETURNING id")
MARK_SENT = "UPDATE deliveries SET status = 'sent', sent_at = {m}, last_error = NULL, updated_at = {m} WHERE id = {m} AND leased_by = {m}"
SENDABLE = (DeliveryStatus.PENDING, DeliveryStatus.RETRY, DeliveryStatus.UNKNOWN)


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
    """Writes of one sending run; the caller batches calls (see send.dispatch.GroupCommitter) and commits.

    On a Core ``Connection``, not a ``Session``, and the two writes of every message (its start, its
    ``sent``) through the driver's cursor, in the connection's transaction: they run about once per
    message, and what SQLAlchemy does around a statement cost more than the statement. A start and a
    sent on SQLite, with the commit: ~0.8 ms with a session, ~0.3 ms with Core statements, ~0.05 ms
    with the driver's (medians of 2,000; the sending process is what a big run waits on).
    """

    def __init__(self, connection: Connection, *, policy: RetryPolicy, holder: str, count_bounces: bool = True) -> None:
        self.connection, self.policy, self.holder = connection, policy, holder
        # False while every message goes to one test address (NEWSLETTER_REDIRECT_ALL_TO): its refusal says
        # nothing about the subscriber's address, and counting it suppressed real subscribers.
        self.count_bounces = count_bounces
        self.expired = 0  # retries that fell outside the window and were recorded as expired
        dialect = connection.dialect
        self._marker = _driver_marker(dialect)
        # A moment as the DateTime columns store it (SQLite: SQLAlchemy's text form; PostgreSQL: as it is).
        self._moment = DateTime().dialect_impl(dialect).bind_processor(dialect) or (lambda moment: moment)
        self._mark_sent = MARK_SENT.format(m=self._marker)

    def _cursor(self) -> Any:
        """The driver's cursor, inside the connection's transaction (so its commit and rollback cover it)."""
        if not self.connection.in_transaction():
            self.connection.begin()
        return self.connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]  # open: in a transaction

    def started(self, delivery_ids: Sequence[int], *, now: dt.datetime) -> set[int]:
        """Mark ``sending`` what this sender is about to hand over; returns the ids it still holds (send only those)."""
        if not delivery_ids:
            return set()
        cursor = self._cursor()
        try:
            cursor.execute(MARK_SENDING.format(m=self._marker, ids=", ".join([self._marker] * len(delivery_ids))),
                           (self._moment(now), *delivery_ids, self.holder))
            return {row[0] for row in cursor.fetchall()}
        finally:
            cursor.close()

    def _sent(self, outcomes: Sequence[Outcome], *, now: dt.datetime) -> None:
        moment = self._moment(now)
        cursor = self._cursor()
        try:
            cursor.executemany(self._mark_sent, [(moment, moment, o.delivery_id, self.holder) for o in outcomes])
        finally:
            cursor.close()

    def finished(self, outcomes: Sequence[Outcome], *, now: dt.datetime) -> None:
        by_status: dict[str, list[Outcome]] = {}
        for outcome in outcomes:
            by_status.setdefault(outcome.status, []).append(outcome)
        if sent := by_status.get(DeliveryStatus.SENT):
            self._sent(sent, now=now)
        for status in (DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN, DeliveryStatus.PENDING):
            if rows := by_status.get(status):
                self._set(rows, status=status, now=now)
        if retry := by_status.get(DeliveryStatus.RETRY):
            self._schedule_retries(retry, now=now)
        if self.count_bounces and (bounced := [o for o in by_status.get(DeliveryStatus.FAILED, ()) if o.bounce]):
            self._count_bounces(bounced, now=now)

    def _set(self, outcomes: Sequence[Outcome], *, status: str, now: dt.datetime) -> None:
        statement = (update(Delivery).where(Delivery.id == bindparam("delivery"), Delivery.leased_by == self.holder)
                     .values(status=status, last_error=bindparam("error"), updated_at=now))
        self.connection.execute(statement, [{"delivery": o.delivery_id, "error": o.error} for o in outcomes])

    def _schedule_retries(self, outcomes: Sequence[Outcome], *, now: dt.datetime) -> None:
        tried = {row.id: row for row in self.connection.execute(
            select(Delivery.id, Delivery.attempts, Delivery.created_at).where(Delivery.id.in_([o.delivery_id for o in outcomes]))
        )}
        due: list[tuple[Outcome, dt.datetime | None]] = []
        expired: list[tuple[Outcome, dt.datetime | None]] = []
        for outcome in outcomes:
            row = tried[outcome.delivery_id]
            when = self.policy.next_attempt(attempts=row.attempts, created_at=row.created_at, now=now)
            (due if when else expired).append((outcome, when))
        if due:
            statement = (update(Delivery).where(Delivery.id == bindparam("delivery"), Delivery.leased_by == self.holder)
                         .values(status=DeliveryStatus.RETRY, last_error=bindparam("error"), next_attempt_at=bindparam("when"),
                                 updated_at=now))
            self.connection.execute(statement, [{"delivery": o.delivery_id, "error": o.error, "when": w} for o, w in due])
        if expired:
            self._set([o for o, _ in expired], status=DeliveryStatus.EXPIRED, now=now)
            self.expired += len(expired)

    def _count_bounces(self, outcomes: Sequence[Outcome], *, now: dt.datetime) -> None:
        ids = [o.subscriber_id for o in outcomes]
        hard = [o.subscriber_id for o in outcomes if o.hard_bounce]
        self.connection.execute(update(Subscriber).where(Subscriber.id.in_(ids)).values(bounce_count=Subscriber.bounce_count + 1))
        self.connection.execute(
            update(Subscriber)
            .where(Subscriber.id.in_(ids), or_(Subscriber.bounce_count >= self.policy.bounce_limit, Subscriber.id.in_(hard)))
            .values(status="bounced")
        )
        cancel_unsent(self.connection, subscriber_ids=ids, now=now)  # a later digest of theirs already planned


def lease_free(*, now: dt.datetime):
    """Rows nobody holds: never claimed, released, or whose holder let the lease lapse (it died)."""
    return or_(Delivery.lease_until.is_(None), Delivery.lease_until < now)


def live_leases(session: Session, *, now: dt.datetime) -> dict[str, tuple[int, dt.datetime]]:
    """Unsent deliveries under a lease alive at ``now``, per holder: how many, and when the last of those leases ends."""
    rows = session.execute(select(Delivery.leased_by, func.count(), func.max(Delivery.lease_until))  # the partial index serves this
                           .where(Delivery.leased_by.is_not(None), Delivery.lease_until >= now,
                                  Delivery.status.in_([*SENDABLE, DeliveryStatus.SENDING]))
                           .group_by(Delivery.leased_by))
    return {holder: (count, until) for holder, count, until in rows if holder is not None and until is not None}


def end_dead_leases(session: Session, *, now: dt.datetime, is_dead: Callable[[str], bool]) -> dict[str, int]:
    """End now, not when they lapse, the leases of holders ``is_dead`` knows to be dead; returns their unsent
    rows per holder. A run started right after a crash (SIGKILL, out of memory, a power cut of the process)
    then sends what the dead one held at once, instead of leaving it for a run after ``lease_s``; its
    ``sending`` rows become ``unknown`` by ``recover_interrupted``, as any interrupted sender's do.
    """
    dead = {holder: count for holder, (count, _) in live_leases(session, now=now).items() if is_dead(holder)}
    if dead:
        # Rows it was handing over keep their holder until recover_interrupted records them; the rest (its
        # sent rows too) are let go.
        session.execute(update(Delivery).where(Delivery.leased_by.in_(list(dead)))
                        .values(lease_until=None, leased_by=case((Delivery.status == DeliveryStatus.SENDING, Delivery.leased_by))))
    return dead


def held_elsewhere(session: Session, *, now: dt.datetime, holder: str,
                   is_dead: Callable[[str], bool] = lambda _holder: False) -> tuple[int, dt.datetime | None, int]:
    """Unsent deliveries other senders than ``holder`` hold under a live lease: how many, when the last of those
    leases ends, and how many of them a sender holds that ``is_dead`` (a process of this host that is gone)."""
    others = [(other, held, is_dead(other)) for other, held in live_leases(session, now=now).items() if other != holder]
    # The lease time said is a live sender's: nothing renews a dead one's, and a run now takes those over.
    return (sum(count for _, (count, _), _ in others), max((until for _, (_, until), dead in others if not dead), default=None),
            sum(count for _, (count, _), dead in others if dead))


def recover_interrupted(session: Session, *, now: dt.datetime) -> int:
    """Deliveries left ``sending`` by a sender that died (its lease lapsed): the relay may or may not have them.

    A ``sending`` row whose lease is alive belongs to a live sender and is left alone.
    """
    result = session.execute(
        update(Delivery).where(Delivery.status == DeliveryStatus.SENDING, lease_free(now=now))
        .values(status=DeliveryStatus.UNKNOWN, updated_at=now, leased_by=None, lease_until=None,
                last_error="the sending process stopped before the relay's answer was recorded")
    )
    return getattr(result, "rowcount", 0) or 0


def expire_stale(session: Session, *, now: dt.datetime, window: dt.timedelta) -> int:
    """Deliveries still not sent ``window`` after they were planned become ``expired`` (found by query,
    not only when another attempt fails), so a relay that was down all day never sends yesterday's news late."""
    # The statuses as literals, not parameters, so that the partial index ix_deliveries_unsent_created_at (its
    # predicate is this IN list) serves it: SQLite matches a partial index only to literal terms, and PostgreSQL
    # cannot match parameters in the generic plan of a prepared statement (psycopg prepares after 5 runs).
    unsent = bindparam("unsent", [status.value for status in SENDABLE], type_=String, expanding=True, literal_execute=True)
    result = session.execute(
        update(Delivery)
        .where(Delivery.status.in_(unsent), Delivery.created_at < now - window, lease_free(now=now))
        .values(status=DeliveryStatus.EXPIRED, updated_at=now, leased_by=None, lease_until=None,
                last_error=func.coalesce(Delivery.last_error, "not sent within the retry window"))
    )
    return getattr(result, "rowcount", 0) or 0


def due_filter(*, now: dt.datetime):
    """Deliveries to send now: pending, retries whose time has come, unknown outcomes not yet retried."""
    return or_(
        Delivery.status == DeliveryStatus.PENDING,
        and_(Delivery.status == DeliveryStatus.RETRY, or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now)),
        and_(Delivery.status == DeliveryStatus.UNKNOWN, Delivery.attempts < UNKNOWN_MAX_ATTEMPTS),
    )


def due_count(session: Session, *, now: dt.datetime, at_least: int) -> int:
    """How many deliveries are due at ``now`` (held or not: a dead sender's are about to be free), up to ``at_least``."""
    due = select(Delivery.id).where(Delivery.status.in_(SENDABLE), due_filter(now=now)).limit(at_least).subquery()
    return session.scalar(select(func.count()).select_from(due)) or 0


def anything_to_send(session: Session, *, now: dt.datetime, is_dead: Callable[[str], bool] = lambda _holder: False) -> bool:
    """Is a delivery due and free to claim, left ``sending`` by a sender whose claim lapsed (``recover_interrupted``),
    or held by a sender ``is_dead`` says is gone (``end_dead_leases`` frees those at once)?

    Without the last, a daemon restarted after a SIGKILL waited out the dead run's leases (5 minutes) before
    sending what it had held."""
    query = (select(Delivery.id).join(Subscriber, Subscriber.id == Delivery.subscriber_id)
             .where(lease_free(now=now),
                    or_(and_(due_filter(now=now), Subscriber.status == SubscriberStatus.ACTIVE),
                        Delivery.status == DeliveryStatus.SENDING))
             .limit(1))
    return session.scalar(query) is not None or any(map(is_dead, live_leases(session, now=now)))


def begin_write(session: Session) -> None:
    """Start the session's transaction as a writer, so that what it reads next nobody else changes.

    SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock now, not at the first write (another
    writer waits for the busy timeout). Must be the transaction's first statement. PostgreSQL: nothing;
    rows are locked by ``FOR UPDATE SKIP LOCKED`` where they are read.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("BEGIN IMMEDIATE"))


def _skip_locked(session: Session, query, *, of):  # noqa: ANN001, ANN202 - a Select
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True, of=of)
    return query


@dataclass(frozen=True, slots=True)
class DueDelivery:
    id: int
    subscriber_id: int
    email: str
    message_id: str
    issue_date: dt.date


def claim_due(
    session: Session, *, now: dt.datetime, holder: str, lease: dt.timedelta, limit: int, subscriber_id: int | None = None,
    delivery_ids: Sequence[int] | None = None, not_due_at: dt.datetime | None = None,
) -> list[DueDelivery]:
    """Claim up to ``limit`` due deliveries of active subscribers for ``holder``, and commit the claim.

    ``not_due_at`` (naive UTC; planning at that moment is still going on beside the sending): only deliveries of
    subscribers who are not due then, i.e. already planned. A subscriber's older unsent digest gives way to their
    new one when they are planned; claimed before that, it went out beside the new one.

    Two senders never get the same row: on PostgreSQL the rows are locked as they are read and rows
    another transaction holds are skipped; on SQLite the whole claim is one write transaction.
    """
    begin_write(session)
    query = (
        select(Delivery.id)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.status.in_(SENDABLE), due_filter(now=now), lease_free(now=now),  # the IN lets an index on status help
               Subscriber.status == SubscriberStatus.ACTIVE)
        .order_by(Delivery.id)
        .limit(limit)
    )
    if subscriber_id is not None:
        query = query.where(Delivery.subscriber_id == subscriber_id)
    if delivery_ids is not None:  # a batch handed to a worker: only those, if still due and free
        query = query.where(Delivery.id.in_(list(delivery_ids)))
    if not_due_at is not None:
        query = query.where(or_(Subscriber.next_send_at.is_(None), Subscriber.next_send_at > not_due_at))
    ids = list(session.scalars(_skip_locked(session, query, of=Delivery)))
    if not ids:
        session.commit()
        return []
    session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(leased_by=holder, lease_until=now + lease))
    rows = session.execute(
        select(Delivery.id, Delivery.subscriber_id, Subscriber.email, Delivery.message_id, Delivery.issue_date)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id).where(Delivery.id.in_(ids)).order_by(Delivery.id)
    ).all()
    session.commit()
    return [DueDelivery(*row) for row in rows]


def renew_leases(session: Session | Connection, *, holder: str, until: dt.datetime) -> None:
    """Keep what ``holder`` still has to send (the caller commits)."""
    session.execute(update(Delivery).where(Delivery.leased_by == holder, Delivery.lease_until.is_not(None))
                    .values(lease_until=until))


def release_leases(session: Session | Connection, *, holder: str) -> None:
    """Give back every delivery ``holder`` claimed: what it sent is recorded, the rest is free for the next sender."""
    session.execute(update(Delivery).where(Delivery.leased_by == holder).values(leased_by=None, lease_until=None))


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    subscriber_id: int
    issue_date: dt.date  # the subscriber's local date
    picks: Sequence[records.RankedPaper]
    status: str  # pending, empty (a quiet day) or missed
    send_at: dt.datetime | None = None  # the send moment planned for (naive UTC)


def record_deliveries(
    session: Session, *, planned: Sequence[PlannedDelivery], message_domain: str, now: dt.datetime,
) -> set[tuple[int, dt.date]]:
    """Record what each subscriber will get, in bulk; the Message-ID is fixed here so a resend reuses it.

    A subscriber whose delivery of that date another run recorded meanwhile is skipped (ON CONFLICT DO
    NOTHING on the one-per-subscriber-per-date key), so two runs racing never fail or double up.
    Returns the (subscriber id, issue date) pairs this call recorded.
    """
    recorded: set[tuple[int, dt.date]] = set()
    for start in range(0, len(planned), 5000):
        batch = {(p.subscriber_id, p.issue_date): p for p in planned[start : start + 5000]}
        # Core's INSERT on the table, not the ORM's on the class: the ORM's bulk path looked at every row again
        # (~0.1 s of a 5,000-subscriber plan).
        table: Table = Delivery.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
        statement = _insert_for(session, table).on_conflict_do_nothing(index_elements=["subscriber_id", "issue_date"])
        ids = session.connection().execute(
            statement.returning(table.c.id, table.c.subscriber_id, table.c.issue_date),
            [{"subscriber_id": p.subscriber_id, "issue_date": p.issue_date, "status": p.status, "attempts": 0,
              "message_id": f"<digest.{p.issue_date:%Y%m%d}.{p.subscriber_id}.{secrets.token_hex(8)}@{message_domain}>",
              "send_at": p.send_at, "created_at": now, "updated_at": now} for p in batch.values()],
        ).all()
        recorded.update((subscriber_id, issue_date) for _, subscriber_id, issue_date in ids)
        items = [(delivery_id, pick.paper.id, rank, round(pick.score, 4), _json_list(pick.reasons))
                 for delivery_id, subscriber_id, issue_date in ids
                 for rank, pick in enumerate(batch[(subscriber_id, issue_date)].picks, start=1)]
        if items:
            _insert_items(session, items)
    return recorded


def _json_list(values: Sequence[str]) -> str:
    return orjson.dumps(list(values)).decode()


def _insert_items(session: Session, rows: list[tuple[int, int | None, int, float, str]]) -> None:
    """The driver's own executemany: SQLAlchemy's per-row parameter processing (even Core's) was half
    the cost of recording 40,000 picks (~0.5 s of a 5,000-subscriber digest run)."""
    connection = session.connection()
    marker = _driver_marker(connection.dialect)
    connection.exec_driver_sql(
        f"INSERT INTO {DeliveryItem.__tablename__} (delivery_id, paper_id, rank, score, reasons) VALUES ({', '.join([marker] * 5)})",
        rows)


def _driver_marker(dialect: Dialect) -> str:
    """The driver's own parameter marker: sqlite3's ``?``, psycopg's ``%s``."""
    return "?" if dialect.paramstyle == "qmark" else "%s"


def _insert_for(session: Session, table: Table) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (SQLite and PostgreSQL both)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


@dataclass(frozen=True, slots=True)
class SentDelivery:
    """A digest that went out, as the archive needs it."""

    delivery: DueDelivery
    trending_ids: list[int] | None  # its "trending today" section as built (None: sent before that was recorded)
    sent_at: dt.datetime | None


def sent_delivery(session: Session, *, subscriber_id: int, issue_date: dt.date) -> SentDelivery | None:
    """The subscriber's digest of ``issue_date`` if it was sent."""
    found = session.execute(
        select(Delivery.id, Delivery.message_id, Delivery.trending_ids, Delivery.sent_at, Subscriber.email)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.issue_date == issue_date,
               Delivery.status == DeliveryStatus.SENT)).first()
    if found is None:
        return None
    return SentDelivery(DueDelivery(found.id, subscriber_id, found.email, found.message_id, issue_date),
                        found.trending_ids, found.sent_at)


def subscriber_of_message(session: Session, *, message_ids: Sequence[str], email: str) -> int | None:
    """The subscriber with address ``email`` to whom one of ``message_ids`` (a reply's In-Reply-To and
    References) was sent as a digest, if any: proof that a reply comes from that digest's reader."""
    return session.scalar(select(Delivery.subscriber_id).join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                          .where(Delivery.message_id.in_(list(message_ids)), Subscriber.email == email).limit(1))


def record_trending(session: Session, *, holder: str, trending: dict[int, list[int]]) -> None:
    """Each held delivery's "trending today" paper ids, as its message was built (for the archive)."""
    by_list: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for delivery_id, paper_ids in trending.items():
        by_list[tuple(paper_ids)].append(delivery_id)
    for ids, delivery_ids in by_list.items():  # one UPDATE per distinct list: usually one per issue date
        for start in range(0, len(delivery_ids), IN_CHUNK):
            session.execute(update(Delivery).where(Delivery.id.in_(delivery_ids[start : start + IN_CHUNK]),
                                                   Delivery.leased_by == holder)
                            .values(trending_ids=list(ids)).execution_options(synchronize_session=False))


def delivery_items(session: Session, *, delivery_ids: Sequence[int]) -> dict[int, list[tuple[int, float, list[str]]]]:
    """Each delivery's (paper id, score, reasons) in rank order."""
    found: dict[int, list[tuple[int, float, list[str]]]] = defaultdict(list)
    # Core rows, the reasons' JSON read here from its text (SQLite): through the ORM's result machinery and
    # SQLAlchemy's per-value JSON decoding, the ~4,000 items of a send batch were a tenth of rendering it.
    query = (
        select(DeliveryItem.delivery_id, DeliveryItem.paper_id, DeliveryItem.score, type_coerce(DeliveryItem.reasons, String))
        .where(DeliveryItem.delivery_id.in_(delivery_ids))
        .order_by(DeliveryItem.delivery_id, DeliveryItem.rank)
    )
    for delivery_id, paper_id, score, reasons in session.connection().execute(query):
        found[delivery_id].append((paper_id, score, orjson.loads(reasons) if isinstance(reasons, str) else reasons))
    return found


def last_planned_send(session: Session, *, subscriber_ids: Sequence[int]) -> dict[int, dt.datetime]:
    """Each subscriber's latest send moment whose digest was not missed, failed or expired: where a new
    digest's candidates start at the latest (so the papers of those roll over into it)."""
    found: dict[int, dt.datetime] = {}
    for start in range(0, len(subscriber_ids), IN_CHUNK):
        rows = session.execute(
            select(Delivery.subscriber_id, func.max(Delivery.send_at))
            .where(Delivery.subscriber_id.in_(subscriber_ids[start : start + IN_CHUNK]),
                   Delivery.status.not_in((DeliveryStatus.MISSED, DeliveryStatus.EXPIRED, DeliveryStatus.FAILED)),
                   Delivery.send_at.is_not(None))
            .group_by(Delivery.subscriber_id)
        )
        found.update({subscriber_id: when for subscriber_id, when in rows if when is not None})
    return found


def supersede_unsent(session: Session, *, issues: Sequence[tuple[int, dt.date]], now: dt.datetime) -> None:
    """A subscriber's older digests still unsent when their next one is planned give way to it: ``expired``,
    so that their papers (never sent) roll into the new digest instead of arriving twice, a day late."""
    if issues:
        session.connection().execute(
            update(Delivery)
            .where(Delivery.subscriber_id == bindparam("subscriber"), Delivery.issue_date < bindparam("issue"),
                   or_(*(Delivery.status == status for status in SENDABLE)),  # executemany: no expanding IN
                   lease_free(now=now))
            .values(status=DeliveryStatus.EXPIRED, updated_at=now,  # a relay's reason, when there was one, is kept
                    last_error=func.coalesce(Delivery.last_error, "superseded by a newer digest")),
            [{"subscriber": subscriber_id, "issue": issue_date} for subscriber_id, issue_date in issues],
        )


def cancel_unsent(session: Session | Connection, *, subscriber_ids: Sequence[int] | None = None, now: dt.datetime) -> int:
    """Digests not handed over yet of subscribers who are not active (they unsubscribed, paused or bounced):
    ``cancelled``, for good. Left ``pending``, they waited a day to expire (and woke the operator), or went
    out, planned on old preferences, to someone who signed up again meanwhile. ``subscriber_ids``: only
    theirs (the one who just left); None: everyone's (a sender's sweep, for changes made by hand)."""
    inactive = select(Subscriber.id).where(Subscriber.status != SubscriberStatus.ACTIVE)
    if subscriber_ids is not None:
        inactive = inactive.where(Subscriber.id.in_(subscriber_ids))
    result = session.execute(
        update(Delivery)
        .where(Delivery.status.in_(SENDABLE), Delivery.subscriber_id.in_(inactive))
        .values(status=DeliveryStatus.CANCELLED, updated_at=now,
                last_error="the subscriber unsubscribed, paused or bounced before it was sent")
        .execution_options(synchronize_session=False))
    return result.rowcount or 0  # type: ignore[attr-defined]


def recent_send_times(session: Session, *, since: dt.datetime, limit: int) -> list[dt.datetime]:
    """When the latest messages left (newest last): seeds the rate limit after a restart."""
    rows = session.scalars(
        select(Delivery.sent_at).where(Delivery.sent_at >= since).order_by(Delivery.sent_at.desc()).limit(limit)
    ).all()
    return sorted(row for row in rows if row is not None)


__all__ = ["anything_to_send", "begin_write", "cancel_unsent", "claim_due", "delivery_items", "due_count",
           "due_filter", "DueDelivery", "end_dead_leases", "expire_stale", "held_elsewhere", "last_planned_send",
           "Ledger", "live_leases", "Outcome", "PlannedDelivery", "recent_send_times", "record_deliveries",
           "recover_interrupted", "release_leases", "renew_leases", "RetryPolicy", "supersede_unsent"]
