"""Delivering: claim the due deliveries, render them from their recorded picks, send them, record each outcome.

Any number of these may run at once on one database (``digest`` runs, daemons, workers): each
claims batches of due deliveries with a lease (``ledger.claim_due``), renews the lease while it
sends, and gives back what it did not send. What is due does not depend on an issue date: pending
digests of any date, retries whose time has come, unknown outcomes not yet retried once.

Claiming and rendering a batch (SQL, Jinja, CSS) run in a worker thread, so the event loop only
moves bytes to the relay and commits the ledger (``send.dispatch``); in a big ``digest`` run, in a
second process instead, so that rendering and sending use two cores (``newsletter.render_ahead``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from newsletter.db import ledger, repo
from newsletter.db.ledger import DueDelivery, Ledger, Outcome, RetryPolicy
from newsletter.db.models import DeliveryStatus, naive
from newsletter.errors import NewsletterError
from newsletter.issue import day_renderer, message_for
from newsletter.records import Paper
from newsletter.render.digest import DigestRenderer
from newsletter.runtime import Runtime, holder_is_dead
from newsletter.send.dispatch import GroupCommitter, Limiter, OutboundMessage, RateLimiter, dispatch
from newsletter.send.mailer import Mailer

if TYPE_CHECKING:
    from newsletter.render_ahead import RenderAhead

logger = logging.getLogger(__name__)
Progress = Callable[[int], None]  # messages done so far
CLAIM_BATCH = 500  # deliveries claimed, rendered and queued at a time
BUILD_FAILURES_TO_STOP = 10  # digests failing to build before any succeeds: a bug for everyone, not one's data


@dataclass
class DeliveryReport:
    outcomes: Counter[str] = field(default_factory=Counter)  # delivery status → count
    recovered: int = 0  # left "sending" by a dead sender, now unknown
    taken_over: int = 0  # held by a sender of this host that died (its leases ended at once)
    held_elsewhere: int = 0  # due, and held by another live sender when this run ended
    held_until: dt.datetime | None = None  # when the last of those leases ends, unless renewed (naive UTC)
    held_by_dead: int = 0  # of those, held by a sender of this host that died during the run: the next run sends them
    expired: int = 0
    error: str | None = None  # why sending stopped early; the rest stays pending


def wall_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def send_due(
    runtime: Runtime,
    *,
    mailers: Sequence[Mailer],
    subscriber_id: int | None = None,
    delivery_ids: Sequence[int] | None = None,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
    clock: Callable[[], dt.datetime] = wall_clock,
    ahead: RenderAhead | None = None,
    limiter: Limiter | None = None,
) -> DeliveryReport:
    """Send every delivery due now, or only ``subscriber_id``'s, or only those of ``delivery_ids`` (a
    worker's batch, at most CLAIM_BATCH), until done or ``stop`` is set.

    Sending runs on the real clock whatever moment planning was told it is (``digest --at``): leases,
    retry times and the retry window are about time that really passes. ``stop`` (SIGTERM in the
    daemon): no further message is taken; those in flight finish and are recorded; what was claimed
    and not sent is released for the next sender. ``ahead``: the messages are claimed and rendered in
    that second process (``newsletter.render_ahead``: a big run, on the real clock), not in a thread.
    ``limiter``: the relay's rate limit shared by the workers (``scale.ratelimit``) instead of this process's own.
    """
    if ahead is not None and (subscriber_id is not None or delivery_ids is not None):
        raise ValueError("rendering ahead claims everything due: not for one subscriber's or a worker's batch")
    settings, report = runtime.settings, DeliveryReport()
    now = clock()
    at = naive(now)
    with runtime.sessions() as session:
        ledger.begin_write(session)
        dead = ledger.end_dead_leases(session, now=at, is_dead=holder_is_dead)
        for holder, count in dead.items():
            logger.info("taking over %s deliveries held by %s, a sender of this host that died", count, holder)
        report.taken_over = sum(dead.values())
        report.recovered = ledger.recover_interrupted(session, now=at)
        report.expired = ledger.expire_stale(session, now=at, window=dt.timedelta(hours=settings.retry_window_h))
        # Subscribers who left by a way that does not cancel (a status changed by hand). Not per worker batch:
        # leaving cancels at the source, and the send re-checks the status anyway.
        if delivery_ids is None and (cancelled := ledger.cancel_unsent(session, now=at)):
            logger.info("cancelled %s digests of subscribers no longer active", cancelled)
        session.commit()
        if limiter is None:  # this process's own limit, seeded with the latest sends so it holds right after a restart
            recent = ledger.recent_send_times(session, since=at - dt.timedelta(seconds=2), limit=max(int(settings.smtp_rate_per_s), 1))
            limiter = RateLimiter(settings.smtp_rate_per_s, recent=[t.replace(tzinfo=dt.UTC).timestamp() for t in recent])
    lease = dt.timedelta(seconds=settings.lease_s)
    with runtime.engine.connect() as writes, runtime.sessions() as reads:
        ledger_writes = Ledger(writes, policy=RetryPolicy(base_s=settings.retry_base_s, window_s=settings.retry_window_h * 3600,
                                                          bounce_limit=settings.bounce_limit), holder=runtime.holder,
                               count_bounces=settings.redirect_all_to is None)

        # The ledger's connection is used by the group commit (in a worker thread, or inline on the event loop) and
        # by lease renewal (in a worker thread): one at a time.
        writing = threading.Lock()

        def write(started: list[int], finished: list[Outcome]) -> set[int]:
            moment = naive(dt.datetime.now(dt.UTC))
            with writing:
                return _write(started, finished, moment)

        def _write(started: list[int], finished: list[Outcome], moment: dt.datetime) -> set[int]:
            try:
                ours = ledger_writes.started(started, now=moment)
                if finished:
                    ledger_writes.finished(finished, now=moment)
                writes.commit()
            except Exception:
                writes.rollback()  # the run stops; what was not written is recovered when the lease lapses
                raise
            return ours

        def renew() -> None:
            with writing:
                try:
                    ledger.renew_leases(writes, holder=runtime.holder, until=naive(dt.datetime.now(dt.UTC)) + lease)
                    writes.commit()
                except Exception:
                    writes.rollback()
                    raise

        done = 0

        def counted(_outcome: Outcome) -> None:
            nonlocal done
            done += 1
            if progress:
                progress(done)

        if ahead is not None:
            batches = _here_until_ahead_starts(runtime, reads, ahead, clock=clock, stop=stop)
        else:
            batches = _batches_in_thread(runtime, reads, clock=clock, subscriber_id=subscriber_id,
                                         delivery_ids=delivery_ids, stop=stop)
        messages = _messages(batches, stop=stop)
        keeper = asyncio.create_task(_keep_leases(renew, every_s=settings.lease_s / 3))
        try:
            # Inline on a local SQLite file, in a big `digest` run only: its loop has nothing else to do while a
            # commit waits. The daemon's loop also runs its scheduler, heartbeat and SIGTERM, and other processes'
            # writes (a planning batch recording its picks, a web request) may hold SQLite's write lock meanwhile: a
            # commit waiting there must not freeze it.
            inline = ahead is not None and runtime.engine.dialect.name == "sqlite"
            committer = GroupCommitter(write, in_thread=not inline)
            result = await dispatch(messages, mailers=mailers, committer=committer, limiter=limiter, on_outcome=counted)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with writing:  # a renewal thread the cancel left running finishes first
                ledger.release_leases(writes, holder=runtime.holder)
                writes.commit()
    with runtime.sessions() as session:  # what another sender holds: this run could not send it, and says so
        report.held_elsewhere, report.held_until, report.held_by_dead = ledger.held_elsewhere(
            session, now=naive(clock()), holder=runtime.holder, is_dead=holder_is_dead)
    report.outcomes.update(result.outcomes)
    if ledger_writes.expired:  # the outcome was "try again later", but the retry window is over
        report.outcomes[DeliveryStatus.RETRY] -= ledger_writes.expired
        report.outcomes[DeliveryStatus.EXPIRED] += ledger_writes.expired
        report.outcomes = +report.outcomes  # drop zero counts
    report.error = result.error
    return report


async def _keep_leases(renew: Callable[[], None], *, every_s: float) -> None:
    """Renew this sender's leases on a timer, so a slow relay answer or a long rate-limit wait never lets
    them lapse while it is alive (a lapsed lease is taken over by another sender)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(renew)  # a busy database must not stall the sending
        except Exception:  # a busy database: the next renewal, well before the lease lapses, tries again
            logger.warning("could not renew the delivery leases of %s; trying again in %.0f s", "this sender", every_s,
                           exc_info=True)


async def _batches_in_thread(
    runtime: Runtime, session, *, clock: Callable[[], dt.datetime], subscriber_id: int | None,  # noqa: ANN001
    delivery_ids: Sequence[int] | None, stop: asyncio.Event | None,
) -> AsyncGenerator[list[OutboundMessage], None]:
    """Claimed deliveries, a batch at a time, claimed and rendered in a thread while the previous batch is sent."""
    builder = BatchBuilder(runtime)

    def claim() -> asyncio.Future[list[OutboundMessage]]:
        return asyncio.ensure_future(asyncio.to_thread(builder.claim_and_build, session, now=clock(),
                                                       subscriber_id=subscriber_id, delivery_ids=delivery_ids))

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    # A worker's batch fits one claim: a second could only find a delivery whose time came (or whose sender's
    # lease lapsed) meanwhile, and the batch's follow-up job sends those (scale.batch); looking cost a claim a batch.
    claim_once = delivery_ids is not None and len(delivery_ids) <= CLAIM_BATCH
    upcoming = None if stopped() else claim()
    try:
        while upcoming is not None:
            batch = await upcoming
            # A full batch: the next one is claimed and rendered while this one is sent, so the connections
            # never stand idle waiting for a render. After a shorter one, only once it is sent (as a
            # last look for deliveries planned meanwhile).
            upcoming = claim() if len(batch) == CLAIM_BATCH and not claim_once and not stopped() else None
            yield batch
            if upcoming is None and batch and not claim_once and not stopped():
                upcoming = claim()
    finally:
        if upcoming is not None:  # its thread uses ``session``: let it finish before the caller closes that
            await asyncio.wait([upcoming])
            if not upcoming.cancelled():
                upcoming.exception()  # retrieved: what it claimed is released with the rest of the leases


async def _here_until_ahead_starts(
    runtime: Runtime, session, ahead: RenderAhead, *, clock: Callable[[], dt.datetime],  # noqa: ANN001
    stop: asyncio.Event | None,
) -> AsyncGenerator[list[OutboundMessage], None]:
    """The first batches claimed and rendered here, small, while the rendering process starts (its imports take
    ~1 s, which the sending waited for); then the rendering process's batches. Told to go only now, after the
    sweep above (a delivery past its retry window is expired, not claimed). Whatever ends the sending stops it
    before the sender releases its leases."""
    from newsletter.render_ahead import FIRST_BATCH

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    builder = BatchBuilder(runtime)
    ahead.go()
    try:
        while not ahead.ready() and not stopped():
            batch = await asyncio.to_thread(builder.claim_and_build, session, now=clock(), subscriber_id=None,
                                            delivery_ids=None, limit=FIRST_BATCH, not_due_at=ahead.plan_at)
            if not batch:
                break
            yield batch
        async with contextlib.aclosing(ahead.batches(stopped=stopped)) as batches:
            async for batch in batches:
                yield batch
    finally:
        await asyncio.to_thread(ahead.close)


async def _messages(batches: AsyncGenerator[list[OutboundMessage], None], *,
                    stop: asyncio.Event | None) -> AsyncIterator[OutboundMessage]:
    """The messages of the claimed batches, in order, until done or ``stop`` is set.

    A digest that cannot be built (its data, a render bug only its papers hit) becomes a message
    that fails alone, with the reason. Until one digest has been built those failures are held back:
    if the first BUILD_FAILURES_TO_STOP all fail (or every one of a smaller run, when more than one),
    it is a bug that hits everyone, and the run stops with all of them still pending.
    """
    held: list[OutboundMessage] = []  # failures before the first digest that could be built
    built = False
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for message in batch:
                if stop is not None and stop.is_set():
                    return
                if message.failure is not None and not built:
                    held.append(message)
                    if len(held) >= BUILD_FAILURES_TO_STOP:
                        raise _no_digest_builds(held)
                    continue
                built = True
                for failed in held:
                    yield failed
                held = []
                yield message
    if len(held) > 1:
        raise _no_digest_builds(held)
    for failed in held:
        yield failed


class BatchBuilder:
    """Claims a batch of due deliveries for ``runtime.holder`` and builds their messages.

    Keeps what every batch of a run shares: each issue date's renderer and "trending today", the papers.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.renderers: dict[dt.date, DigestRenderer] = {}
        self.papers: dict[int, Paper] = {}

    def claim_and_build(self, session, *, now: dt.datetime, subscriber_id: int | None,  # noqa: ANN001
                        delivery_ids: Sequence[int] | None, limit: int = CLAIM_BATCH,
                        not_due_at: dt.datetime | None = None) -> list[OutboundMessage]:
        """Claim (``ledger.claim_due``, ``not_due_at`` aware) and build a batch of due deliveries."""
        runtime, settings = self.runtime, self.runtime.settings
        claimed: list[DueDelivery] = ledger.claim_due(session, now=naive(now), holder=runtime.holder,
                                                      lease=dt.timedelta(seconds=settings.lease_s), limit=limit,
                                                      subscriber_id=subscriber_id, delivery_ids=delivery_ids,
                                                      not_due_at=naive(not_due_at) if not_due_at else None)
        if not claimed:
            return []
        items = ledger.delivery_items(session, delivery_ids=[d.id for d in claimed])
        missing = {paper_id for rows in items.values() for paper_id, _, _ in rows} - self.papers.keys()
        self.papers.update(repo.papers_by_id(session, ids=missing))
        for issue_date in {d.issue_date for d in claimed} - self.renderers.keys():
            self.renderers[issue_date] = day_renderer(session, settings=settings, templates=runtime.templates,
                                                      issue_date=issue_date)
        exclusions = repo.exclusions_of(session, subscriber_ids=[d.subscriber_id for d in claimed])
        session.commit()  # end the read transaction
        # The archive shows the email as built here: record its trending section on the rows we hold (without
        # the papers the reader excluded), in a write transaction of its own (on SQLite a read transaction cannot
        # safely turn into a write one).
        ledger.begin_write(session)
        ledger.record_trending(session, holder=runtime.holder, trending={
            d.id: [p.id for p in self.renderers[d.issue_date].trending_for(exclusions.get(d.subscriber_id, ())) if p.id is not None]
            for d in claimed})
        session.commit()
        return [message_for(d, settings=settings, renderer=self.renderers[d.issue_date], picks=items[d.id],
                            papers=self.papers, dkim=runtime.dkim, exclude=exclusions.get(d.subscriber_id, ()))
                for d in claimed]


def _no_digest_builds(held: Sequence[OutboundMessage]) -> NewsletterError:
    return NewsletterError(f"none of the first {len(held)} digests could be built, so it is not one subscriber's data: "
                           f"{held[0].failure}")


__all__ = ["DeliveryReport", "send_due"]
