"""The spine: ingest → score → render → send, for whatever is due now.

``run_digest`` reads top to bottom: open the connections to the relay (an unreachable relay stops
the run before anything is written); plan every digest due at ``now`` — score the papers of each
subscriber's window and record the picks in the delivery ledger, committed before anything is sent
(``newsletter.plan``); then claim, render and send every delivery that is due, the ledger written
around each message (``newsletter.deliver``). A big run plans its first few digests and starts
sending them while its rendering process plans the rest (``newsletter.render_ahead``); each
digest's picks are still committed before it can be claimed. Running it again, or beside other runs and daemons,
sends nothing twice: one delivery per subscriber per local date, and a sender only sends what it
has claimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from newsletter import render_ahead
from newsletter.db import ledger, repo
from newsletter.db.models import DeliveryStatus, naive
from newsletter.deliver import DeliveryReport, send_due
from newsletter.plan import Pick, PlanReport, plan_due, plan_now, preview_next
from newsletter.runtime import Runtime, holder_is_dead
from newsletter.send.mailer import Mailer

Progress = Callable[[int], None]  # messages done so far
FIRST_PLAN_BATCH = 200  # a big run plans these here, and its rendering process plans the rest


# repr=False: asyncio.run() reprs the finished main task, result included (CPython 3.11), and the default
# repr of 100,000 subscribers' picks took longer than scoring them. A summary is what a log wants anyway.
@dataclass(repr=False)
class DigestRun:
    now: dt.datetime
    candidates: int = 0
    picks: list[Pick] = field(default_factory=list)  # planned (or, dry, scored) in this run, unless not kept
    due: int = 0  # digests planned (or, dry, scored) in this run
    served: int = 0  # of those, with papers
    missed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # delivery status → count, after sending
    errors: list[str] = field(default_factory=list)
    enqueued: int | None = None  # NEWSLETTER_DISPATCH=procrastinate: send batches queued for `newsletter worker`
    taken_over: int = 0  # deliveries a sender of this host held when it died, sent by this run
    held_elsewhere: int = 0  # due deliveries another live sender held when this run ended
    held_until: dt.datetime | None = None  # when the last of those leases ends, unless its sender renews it
    held_by_dead: int = 0  # of those, held by a sender of this host that died during the run

    def __repr__(self) -> str:
        return (f"DigestRun(now={self.now.isoformat()}, candidates={self.candidates}, due={self.due}, "
                f"missed={self.missed}, outcomes={dict(self.outcomes)}, errors={len(self.errors)})")


async def run_digest(
    runtime: Runtime,
    *,
    now: dt.datetime,
    only: str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    keep_picks: bool = True,
) -> DigestRun:
    """Plan and send every digest due at ``now`` (aware UTC), or ``only`` one subscriber's, now.

    ``dry_run``: every active subscriber's next digest (or ``only``'s) scored now; nothing recorded or sent.
    ``keep_picks=False``: ``DigestRun.picks`` may stay empty (its counts are kept): a big run then plans in its
    rendering process, beside the sending.
    """
    run = DigestRun(now)
    if dry_run:
        plan = await asyncio.to_thread(preview_next, runtime, now=now, email=only)
        run.candidates, run.picks, run.due, run.served = plan.candidates, plan.picks, plan.due, plan.served
        return run
    runtime.settings.require("secret_key", "from_address", purpose="sending digests")
    if runtime.settings.dispatch == "procrastinate":
        return await _plan_and_enqueue(runtime, run, only=only, stop=stop)
    due = None if only else await asyncio.to_thread(_due_count, runtime, now)
    if due == 0 and not await asyncio.to_thread(_other_work, runtime):
        # Nobody due, nothing to send or take over: the relay is not contacted, as the daemon's tick does not
        # contact it. A `digest` from cron every few minutes said "cannot reach SMTP relay" (exit 1) on every
        # idle run while the relay was down; it now says when the next digest is due, and the error comes
        # with the first run that has something to send.
        return run
    async with contextlib.AsyncExitStack() as stack:
        # Reach the relay before anything is written: an unreachable relay leaves the database as it was.
        mailers = [await stack.enter_async_context(m) for m in runtime.mailers()]
        if due is not None and render_ahead.worthwhile(runtime, due=due):
            # A big run: a second process starts now, and claims and renders on the other core, ahead of the
            # sending; the planning goes on beside it.
            ahead = stack.enter_context(render_ahead.RenderAhead(runtime, plan_at=None if keep_picks else now))
            delivered, plan = await _plan_ahead_and_send(runtime, ahead, mailers=mailers, now=now, stop=stop,
                                                         progress=progress)
        else:
            if only:
                plan = await asyncio.to_thread(plan_now, runtime, email=only, now=now)
            else:
                plan = await asyncio.to_thread(plan_due, runtime, now=now, keep_picks=True, stopped=_stopped(stop))
            delivered = await send_due(runtime, mailers=mailers, subscriber_id=_subscriber_id(runtime, only),
                                       stop=stop, progress=progress)
        run.candidates, run.picks, run.missed, run.due, run.served = plan.candidates, plan.picks, plan.missed, plan.due, plan.served
    run.outcomes.update(delivered.outcomes)
    run.taken_over, run.held_elsewhere, run.held_until = delivered.taken_over, delivered.held_elsewhere, delivered.held_until
    run.held_by_dead = delivered.held_by_dead
    if delivered.expired:
        run.outcomes[DeliveryStatus.EXPIRED] += delivered.expired
    if delivered.error:
        run.errors.append(f"{delivered.error}; the remaining digests stay pending for the next run")
    return run


async def _plan_ahead_and_send(runtime: Runtime, ahead: render_ahead.RenderAhead, *, mailers: Sequence[Mailer],
                              now: dt.datetime, stop: asyncio.Event | None,
                              progress: Progress | None) -> tuple[DeliveryReport, PlanReport]:
    """A big run. Its first digests are planned here and the sending starts; the rendering process plans
    the rest, a batch whenever nothing planned is left to claim, and renders them (planning 5,000
    subscribers here kept this process, the one the sending waits on, busy for ~1.5 s before the
    first message). Without ``ahead.plan_at`` (the picks are printed) everything is planned here first.

    Each planning batch commits before its deliveries can be claimed, and on SQLite none holds the
    write lock while it scores (``plan.plan_in_batches``), so the sending's commits do not wait on it.
    The sending ends once nothing planned is left and nothing is left to plan; the rendering process
    stops planning when the sending stops early (the relay went away, SIGTERM): what it did not plan
    stays due for the next run."""
    if ahead.plan_at is None:
        plan = await asyncio.to_thread(plan_due, runtime, now=now, keep_picks=True, stopped=_stopped(stop))
    else:
        plan = await asyncio.to_thread(plan_due, runtime, now=now, stopped=_stopped(stop), batch=FIRST_PLAN_BATCH, batches=1)
    if stop is not None and stop.is_set():
        ahead.plan_at = None  # told to stop while planning: the child only sends what is planned (and due)
    delivered = await send_due(runtime, mailers=mailers, stop=stop, progress=progress, ahead=ahead)
    if (rest := ahead.planned) is not None:
        plan.due, plan.served, plan.empty = plan.due + rest.due, plan.served + rest.served, plan.empty + rest.empty
        plan.missed, plan.candidates = plan.missed + rest.missed, max(plan.candidates, rest.candidates)
    return delivered, plan


async def _plan_and_enqueue(runtime: Runtime, run: DigestRun, *, only: str | None, stop: asyncio.Event | None) -> DigestRun:
    """Plan, and enqueue the send batches in the same transactions; workers send them (``newsletter.scale``)."""
    from newsletter.scale.app import relay_queue
    from newsletter.scale.enqueue import PlannedBatches

    enqueue = PlannedBatches(relay_queue(runtime.settings))
    if only:
        plan = await asyncio.to_thread(plan_now, runtime, email=only, now=run.now, after_record=enqueue)
    else:
        plan = await asyncio.to_thread(plan_due, runtime, now=run.now, keep_picks=True, after_record=enqueue,
                                       stopped=_stopped(stop))
    run.candidates, run.picks, run.missed, run.enqueued = plan.candidates, plan.picks, plan.missed, enqueue.jobs
    run.due, run.served = plan.due, plan.served
    return run


def _stopped(stop: asyncio.Event | None) -> Callable[[], bool]:
    """Whether the run was told to stop, asked from the planning thread between batches."""
    return stop.is_set if stop is not None else (lambda: False)


def _due_count(runtime: Runtime, now: dt.datetime) -> int:
    """Digests this run will send, counted up to the render-ahead threshold (and at least to one: 0 means none):
    the subscribers due at ``now`` and the deliveries already due on the real clock the sending runs on (a
    crashed run's rest, retries, and those whose subscriber left by a change made by hand, which the sender's
    sweep cancels)."""
    at_least = max(runtime.settings.render_ahead_from, 1)
    with runtime.sessions() as session:
        subscribers = repo.due_count(session, now=now, at_least=at_least)
        if subscribers >= at_least:
            return subscribers
        return subscribers + ledger.due_count(session, now=naive(dt.datetime.now(dt.UTC)), at_least=at_least - subscribers)


def _other_work(runtime: Runtime) -> bool:
    """With no digest due: a subscriber not scheduled yet, a delivery left ``sending`` by a sender whose claim
    lapsed or held by a dead one, or any live claim (the run reports what another sender holds)."""
    with runtime.sessions() as session:
        real_now = naive(dt.datetime.now(dt.UTC))
        return (repo.any_unscheduled(session) or ledger.anything_to_send(session, now=real_now, is_dead=holder_is_dead)
                or bool(ledger.live_leases(session, now=real_now)))


def _subscriber_id(runtime: Runtime, email: str | None) -> int | None:
    if email is None:
        return None
    with runtime.sessions() as session:
        return repo.get_subscriber(session, email=email).id


__all__ = ["DigestRun", "Pick", "run_digest"]
