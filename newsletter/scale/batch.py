"""One send batch, as a worker runs it: ``deliver.send_due`` on the batch's deliveries, then what is left.

A batch job owns its deliveries until each is final (sent, failed, expired, bounced, unsubscribed):
whatever ``send_due`` could not finish now is handed to a follow-up job scheduled for when it can be
(``BatchResult.retry_at``):

- the relay could not be reached, or went away mid-batch: nothing more was claimed, what was
  claimed is released (``send_due`` does that), and the follow-up waits a backoff that doubles with
  each failure in a row, so an unreachable relay costs one cheap job every few minutes, not the job's retries;
- a delivery another sender still holds (the worker that died holding it, before its lease lapses):
  when that lease ends; it is then taken over (``ledger.recover_interrupted``: resent once, same Message-ID);
- a 4xx answer: at the delivery's own next attempt (``ledger.RetryPolicy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import and_, or_, select

from newsletter.db.ledger import UNKNOWN_MAX_ATTEMPTS
from newsletter.db.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus, aware, naive
from newsletter.deliver import send_due, wall_clock
from newsletter.errors import DeliveryError
from newsletter.runtime import Runtime, new_holder
from newsletter.send.dispatch import Limiter
from newsletter.send.mailer import Mailer

RELAY_BACKOFF_FIRST_S = 5.0  # a relay that refused one connection is often back within seconds (a restart)
RELAY_BACKOFF_MAX_S = 300.0  # and one that stays down is asked every 5 minutes, like the daemon's retry drain
SETTLE_S = 1.0  # due, free and still not claimed (a concurrent transaction held the row): look again shortly


@dataclass(frozen=True, slots=True)
class BatchResult:
    outcomes: dict[str, int] = field(default_factory=dict)  # delivery status → count, this run
    remaining: tuple[int, ...] = ()  # deliveries of the batch not final yet: the follow-up job's
    retry_at: dt.datetime | None = None  # when the follow-up should run (aware UTC); None: nothing remains
    relay_failures: int = 0  # runs in a row that could not reach the relay or lost it
    error: str | None = None


def relay_backoff_s(failures: int) -> float:
    return min(RELAY_BACKOFF_FIRST_S * 2 ** max(failures - 1, 0), RELAY_BACKOFF_MAX_S)


async def deliver_batch(
    runtime: Runtime, delivery_ids: Sequence[int], *, limiter: Limiter | None = None, relay_failures: int = 0,
    clock: Callable[[], dt.datetime] = wall_clock,
) -> BatchResult:
    """Send what is due of ``delivery_ids`` over this runtime's mailers, under ``limiter`` when given (shared by the workers)."""
    # A worker runs several batches at once on one runtime: each claims under a name of its own, or the first
    # to finish would release (``ledger.release_leases``) what the others are still sending.
    runtime = dataclasses.replace(runtime, holder=new_holder())
    outcomes: dict[str, int] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            # Reach the relay before claiming anything: an unreachable relay leaves every delivery free.
            mailers: list[Mailer] = [await stack.enter_async_context(m) for m in runtime.mailers()]
            report = await send_due(runtime, mailers=mailers, delivery_ids=delivery_ids, clock=clock, limiter=limiter)
        outcomes, error = dict(report.outcomes), report.error
    except DeliveryError as exc:
        error = str(exc)
    failures = relay_failures + 1 if error else 0
    remaining, retry_at = await asyncio.to_thread(_left_over, runtime, delivery_ids, now=clock(),
                                                  free_in_s=relay_backoff_s(failures) if error else SETTLE_S)
    return BatchResult(outcomes, remaining, retry_at, failures, error)


def _left_over(runtime: Runtime, delivery_ids: Sequence[int], *, now: dt.datetime,
               free_in_s: float) -> tuple[tuple[int, ...], dt.datetime | None]:
    """The batch's deliveries that are not final, and the earliest moment one of them can be sent."""
    at = naive(now)
    with runtime.sessions() as session:
        # Two lookups by primary key, not one join: joined, the planner may start from every active subscriber
        # (it did, 0.5 s a batch at 100,000, when the subscribers had not been analyzed since a bulk import).
        rows = session.execute(
            select(Delivery.id, Delivery.subscriber_id, Delivery.status, Delivery.lease_until, Delivery.next_attempt_at)
            .where(Delivery.id.in_(list(delivery_ids)),
                   or_(Delivery.status.in_((DeliveryStatus.PENDING, DeliveryStatus.RETRY, DeliveryStatus.SENDING)),
                       and_(Delivery.status == DeliveryStatus.UNKNOWN, Delivery.attempts < UNKNOWN_MAX_ATTEMPTS)))
        ).all()
        active = set(session.scalars(select(Subscriber.id).where(
            Subscriber.id.in_({row.subscriber_id for row in rows}), Subscriber.status == SubscriberStatus.ACTIVE))) if rows else set()
    rows = [row for row in rows if row.subscriber_id in active]
    moments = []
    for row in rows:
        if row.lease_until is not None and row.lease_until > at:  # another sender holds it: when its lease ends
            moments.append(row.lease_until + dt.timedelta(seconds=SETTLE_S))
        elif row.status == DeliveryStatus.RETRY and row.next_attempt_at is not None and row.next_attempt_at > at:
            moments.append(row.next_attempt_at)
        else:  # due and free now: the relay failed us (backoff), or a row was busy (settle)
            moments.append(at + dt.timedelta(seconds=free_in_s))
    if not rows:
        return (), None
    return tuple(sorted(row.id for row in rows)), aware(min(moments))


__all__ = ["BatchResult", "deliver_batch", "relay_backoff_s"]
