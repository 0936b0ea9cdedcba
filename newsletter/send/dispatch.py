"""Sending many messages: a pool of connections, a rate limit, and the ledger written around each one.

Each connection takes a message, waits for the rate limit, has the delivery marked ``sending``,
sends, and has the outcome recorded, before it takes the next. The commit of a message's start
overlaps the envelope's round trips to the relay (MAIL, RCPT); the message itself waits for it. The ledger writes of all
connections are grouped into one commit (``GroupCommitter``), and each connection waits for its
own write to be committed: so after a crash at most one message per open connection was handed
to the relay without its ``sent`` being recorded (it becomes ``unknown``, retried once with the
same Message-ID), and a message is never sent before its ``sending`` is on disk.

A message that cannot be built or that the relay refuses fails alone; anything that stops every
message (the relay or the outbox gone, a ledger commit failing, a bug) stops the run at once, never
hangs it: see ``dispatch``.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from newsletter.db.ledger import Outcome
from newsletter.db.models import DeliveryStatus
from newsletter.errors import DeliveryError, NewsletterError
from newsletter.records import Envelope
from newsletter.send.mailer import AnnouncingMailer, Mailer, PermanentFailure, TemporaryFailure, UnknownOutcome

NO_SUCH_USER = re.compile(r"\b5\.1\.1\b|no such user|user unknown|unknown user|does not exist|mailbox unavailable", re.I)


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    delivery_id: int
    subscriber_id: int
    envelope: Envelope
    failure: str | None = None  # why the message could not be built: the delivery fails, nothing is sent


class RateLimiter:
    """At most ``per_second`` messages reach the relay in any one-second window, across connections.

    A send counts from the moment it starts until one window after it completes (the relay may
    count it at any point in between), so the bound holds whatever the network latency. Seeded
    with the completion times of the latest sends from the ledger, so it still holds right after a
    restart. ``per_second`` 0 means no limit; below 1, one message per ``1/per_second`` seconds.
    """

    def __init__(self, per_second: float, *, recent: Sequence[float] = (), clock: Callable[[], float] = time.time) -> None:
        self.capacity = max(int(per_second), 1) if per_second > 0 else 0
        self.window_s = 1.0 if per_second >= 1 else (1.0 / per_second if per_second > 0 else 0.0)
        self.clock = clock
        self.completed: deque[float] = deque(sorted(recent))
        self.in_flight = 0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if not self.capacity:
            return
        async with self._lock:
            while True:
                now = self.clock()
                while self.completed and now - self.completed[0] >= self.window_s:
                    self.completed.popleft()
                if self.in_flight + len(self.completed) < self.capacity:
                    break
                wait = self.window_s - (now - self.completed[0]) if self.completed else 0.005
                await asyncio.sleep(max(wait, 0.001))
            self.in_flight += 1

    def release(self) -> None:
        if self.capacity:
            self.in_flight -= 1
            self.completed.append(self.clock())

    @property
    def limited(self) -> bool:
        """Whether ``acquire`` may wait (a limit is set)."""
        return bool(self.capacity)


class Limiter(Protocol):
    """What ``dispatch`` needs of a rate limit: this process's ``RateLimiter`` or the workers' shared one."""

    @property
    def limited(self) -> bool: ...

    async def acquire(self) -> object: ...

    def release(self) -> None: ...


@dataclass
class GroupCommitter:
    """Collects ledger writes from every connection and commits them together, one commit at a time.

    ``write`` runs one at a time: in a worker thread, or with ``in_thread=False`` on the event loop
    itself. That is for a local SQLite file, whose commit takes well under a millisecond: handing each one
    to a thread and back cost more than the commit (~0.1 ms of the sender's CPU a message, most of the
    commits holding one message's start), and the sender's CPU is what a big run waits on. A database
    across a network (PostgreSQL) is written from a thread, so its round trips never stall the sending.
    """

    # (started ids, finished outcomes) → committed; returns the started ids that are still this sender's
    # to send (a delivery another sender took over after this one's lease lapsed is not).
    write: Callable[[list[int], list[Outcome]], Collection[int]]
    in_thread: bool = True
    _started: list[int] = field(default_factory=list)
    _finished: list[Outcome] = field(default_factory=list)
    _waiters: list[asyncio.Future[Collection[int]]] = field(default_factory=list)
    _flushing: asyncio.Task[None] | None = None

    async def record(self, *, finished: Sequence[Outcome] = (), started: int | None = None) -> bool:
        """Record a connection's latest outcomes and/or the delivery it sends next, and wait for the commit.

        False when ``started`` is no longer ours to send: do not send it.
        """
        self._finished.extend(finished)
        if started is not None:
            self._started.append(started)
        accepted = await self._committed()
        return started is None or started in accepted

    async def _committed(self) -> Collection[int]:
        waiter: asyncio.Future[Collection[int]] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return await waiter

    async def _flush(self) -> None:
        while self._waiters:
            await asyncio.sleep(0)  # let the other connections add theirs to this commit
            started, finished, waiters = self._started, self._finished, self._waiters
            self._started, self._finished, self._waiters = [], [], []
            try:
                # In a thread: while the database commits, the event loop keeps moving other messages to
                # the relay, and the outcomes that arrive meanwhile make the next commit a bigger group.
                # Inline (SQLite): the commit is shorter than the hand-over would be.
                if self.in_thread:
                    accepted = await asyncio.to_thread(self.write, started, finished)
                else:
                    accepted = self.write(started, finished)
            except Exception as exc:  # a failed commit must stop every connection waiting on it
                for waiter in waiters:
                    waiter.set_exception(exc)
                continue
            for waiter in waiters:
                waiter.set_result(accepted)


@dataclass
class DispatchResult:
    outcomes: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # why the run stopped early (relay or outbox gone, ledger write failed, a bug)


async def dispatch(
    jobs: AsyncIterator[OutboundMessage],
    *,
    mailers: Sequence[Mailer],
    committer: GroupCommitter,
    limiter: Limiter,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> DispatchResult:
    """Send every job over the (already open) ``mailers``, one worker per connection.

    Workers take the next job when they are ready for it, so nothing can wait on a full queue.
    Whatever goes wrong outside one message (the relay or the outbox goes away, a ledger commit
    fails, reading the next job fails, a bug) stops the run within one message per connection: the
    error is kept in ``DispatchResult.error``, each worker records the outcome it holds and takes
    no other job, and what was not taken stays pending for the next run.
    """
    result = DispatchResult()
    taking = asyncio.Lock()  # one worker at a time advances ``jobs``
    # Outcomes the relay never confirmed (it took the message, then no answer within the timeout), in a row
    # across connections. A relay that stalls after DATA stalls every message: without a stop, a run marked
    # 4 subscribers a timeout "unknown" until all were (hours), and each is sent again later, maybe a second copy.
    unconfirmed = 0
    stall_limit = max(len(mailers), 2)

    def halt(error: str) -> None:
        result.error = result.error or error

    async def next_job() -> OutboundMessage | None:
        async with taking:
            return None if result.error else await anext(jobs, None)

    def report(outcome: Outcome) -> None:
        nonlocal unconfirmed
        if outcome.status == DeliveryStatus.UNKNOWN:
            unconfirmed += 1
            if unconfirmed >= stall_limit:
                halt(f"the relay took {unconfirmed} messages in a row without confirming them ({outcome.error}); "
                     "it may be stalled: check it (and NEWSLETTER_SMTP_TIMEOUT_S)")
        elif outcome.status == DeliveryStatus.SENT:
            unconfirmed = 0
        if outcome.status != DeliveryStatus.PENDING:
            result.outcomes[outcome.status] = result.outcomes.get(outcome.status, 0) + 1
            if on_outcome:
                on_outcome(outcome)

    async def cleared(commit: asyncio.Future[bool]) -> bool:
        """May the message go: its start committed, still ours, and the run not stopped meanwhile?"""
        await asyncio.wait([commit])  # a failed commit is raised by the worker, not here (nothing was handed over)
        return not commit.cancelled() and commit.exception() is None and commit.result() and result.error is None

    async def work(mailer: Mailer) -> None:
        finished: list[Outcome] = []  # outcomes not committed yet
        try:
            while (job := await next_job()) is not None:
                if job.failure is not None:  # the message could not be built: nothing goes to the relay
                    finished.append(Outcome(job.delivery_id, job.subscriber_id, DeliveryStatus.FAILED, job.failure, bounce=False))
                    report(finished[-1])
                    continue
                # Its turn under the rate limit comes before its start is recorded: a message that waits (a run
                # stopped meanwhile, a worker's grace running out) is still pending, not "sending" never sent.
                # What this connection sent before is recorded first, not after the wait.
                if finished and limiter.limited:
                    await committer.record(finished=finished)
                    finished = []
                await limiter.acquire()
                try:
                    # One commit records the previous outcomes and this message's start; while it runs, the
                    # message's envelope goes to the relay (MAIL, RCPT). The message itself waits for the commit.
                    commit = asyncio.ensure_future(committer.record(finished=finished, started=job.delivery_id))
                    finished = []
                    outcome, stop = await attempt(mailer, job, ready=functools.partial(cleared, commit))
                finally:
                    limiter.release()
                if not await commit:  # our lease lapsed and another sender took it over: theirs to send now
                    continue
                if outcome is None:  # another connection stopped the run while this one waited for its commit
                    outcome = Outcome(job.delivery_id, job.subscriber_id, DeliveryStatus.PENDING, "the run stopped")
                finished.append(outcome)
                if stop:
                    halt(stop)
                report(outcome)
        except Exception as exc:  # a failed commit, a failed read of the next job, a bug: stop every worker
            halt(one_line(exc))
        try:
            if finished:
                await committer.record(finished=finished)
        except Exception as exc:
            halt(one_line(exc))

    try:
        await asyncio.gather(*(work(m) for m in mailers))
    finally:
        if isinstance(jobs, AsyncGenerator):
            await jobs.aclose()
    return result


def one_line(exc: BaseException) -> str:
    """An exception as one line: our own errors as they are, others with their type (no SQL, no traceback)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, NewsletterError | TemporaryFailure | PermanentFailure | UnknownOutcome):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def attempt(
    mailer: Mailer, job: OutboundMessage, *, ready: Callable[[], Awaitable[bool]],
) -> tuple[Outcome | None, str | None]:
    """One delivery, classified, and why the run must stop (None: go on with the next message).

    The message is handed over only once ``ready()`` says so (its ``sending`` is committed); an
    ``AnnouncingMailer`` opens the transaction before asking, so the commit and the envelope's round
    trips overlap. When ``ready()`` says no, nothing is sent and the outcome is None.

    A connection lost before the message was handed over gets one more try at once, on a fresh
    connection; a 4xx reply is retried later, by the schedule in the ledger.
    """
    announcing = mailer if isinstance(mailer, AnnouncingMailer) else None
    for try_number in (1, 2):
        try:
            if announcing:
                await announcing.announce(job.envelope)
            if not await ready():
                if announcing:
                    await announcing.withdraw()
                return None, None
            await mailer.send(job.envelope)
        except TemporaryFailure as exc:
            if exc.connection_lost and try_number == 1:
                continue
            return Outcome(job.delivery_id, job.subscriber_id, DeliveryStatus.RETRY, str(exc)), None
        except PermanentFailure as exc:
            return Outcome(job.delivery_id, job.subscriber_id, DeliveryStatus.FAILED, str(exc), bounce=exc.bounce,
                           hard_bounce=exc.bounce and bool(NO_SUCH_USER.search(str(exc)))), None
        except UnknownOutcome as exc:
            return Outcome(job.delivery_id, job.subscriber_id, DeliveryStatus.UNKNOWN, str(exc)), None
        except DeliveryError as exc:  # the relay or the outbox went away mid-run: nothing was handed over
            return Outcome(job.delivery_id, job.subscriber_id, DeliveryStatus.PENDING, str(exc)), str(exc)
        except Exception as exc:  # a bug in the mailer: whether the message left is unknown (retried once)
            return Outcome(job.delivery_id, job.subscriber_id, DeliveryStatus.UNKNOWN, one_line(exc)), one_line(exc)
        return Outcome(job.delivery_id, job.subscriber_id, DeliveryStatus.SENT), None
    raise AssertionError("unreachable")
