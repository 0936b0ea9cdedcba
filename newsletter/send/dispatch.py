"""Sending many messages: a pool of connections, a rate limit, and the ledger written around each one.

Each connection takes a message, waits for the rate limit, has the delivery marked ``sending``,
sends, and has the outcome recorded, before it takes the next. The ledger writes of all
connections are grouped into one commit (``GroupCommitter``), and each connection waits for its
own write to be committed: so after a crash at most one message per open connection was handed
to the relay without its ``sent`` being recorded (it becomes ``unknown``, retried once with the
same Message-ID), and a message is never sent before its ``sending`` is on disk.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from newsletter.db.ledger import Outcome
from newsletter.errors import DeliveryError
from newsletter.records import Envelope
from newsletter.send.mailer import Mailer, PermanentFailure, TemporaryFailure, UnknownOutcome

NO_SUCH_USER = re.compile(r"\b5\.1\.1\b|no such user|user unknown|unknown user|does not exist|mailbox unavailable", re.I)


@dataclass(frozen=True, slots=True)
class Job:
    delivery_id: int
    subscriber_id: int
    envelope: Envelope


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


@dataclass
class GroupCommitter:
    """Collects ledger writes from every connection and commits them together."""

    write: Callable[[list[int], list[Outcome]], None]  # (started ids, finished outcomes) → committed
    _started: list[int] = field(default_factory=list)
    _finished: list[Outcome] = field(default_factory=list)
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)
    _flushing: asyncio.Task[None] | None = None

    async def record(self, *, finished: Outcome | None = None, started: int | None = None) -> None:
        """Record a connection's last outcome and/or the delivery it sends next, and wait for the commit."""
        if finished is not None:
            self._finished.append(finished)
        if started is not None:
            self._started.append(started)
        await self._committed()

    async def _committed(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        await waiter

    async def _flush(self) -> None:
        while self._waiters:
            await asyncio.sleep(0)  # let the other connections add theirs to this commit
            started, finished, waiters = self._started, self._finished, self._waiters
            self._started, self._finished, self._waiters = [], [], []
            try:
                self.write(started, finished)
            except Exception as exc:  # a failed commit must stop every connection waiting on it
                for waiter in waiters:
                    waiter.set_exception(exc)
                continue
            for waiter in waiters:
                waiter.set_result(None)


@dataclass
class DispatchResult:
    outcomes: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the relay became unreachable mid-run; the rest stays pending


async def dispatch(
    jobs: AsyncIterator[Job],
    *,
    mailers: Sequence[Mailer],
    committer: GroupCommitter,
    limiter: RateLimiter,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> DispatchResult:
    """Send every job over the (already open) ``mailers``, one worker per connection."""
    result = DispatchResult()
    queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=len(mailers) * 4)
    stop = asyncio.Event()

    async def produce() -> None:
        try:
            async for job in jobs:
                if stop.is_set():
                    break
                await queue.put(job)
        finally:
            for _ in mailers:
                await queue.put(None)

    async def work(mailer: Mailer) -> None:
        last: Outcome | None = None
        while (job := await queue.get()) is not None and not stop.is_set():
            # One commit records the previous message's outcome and this one's start.
            await committer.record(finished=last, started=job.delivery_id)
            last = None
            await limiter.acquire()  # after the commit, right before the send
            try:
                last, relay_down = await attempt(mailer, job)
            finally:
                limiter.release()
            if relay_down:
                result.error = last.error
                stop.set()
            result.outcomes[last.status] = result.outcomes.get(last.status, 0) + 1
            if on_outcome:
                on_outcome(last)
        if last is not None:
            await committer.record(finished=last)
        while job is not None:  # after a stop, drain: those jobs stay pending for the next run
            job = await queue.get()

    await asyncio.gather(produce(), *(work(m) for m in mailers))
    return result


async def attempt(mailer: Mailer, job: Job) -> tuple[Outcome, bool]:
    """One delivery, classified, and whether the relay is gone (stop the run).

    A connection lost before the message was handed over gets one more try at once, on a fresh
    connection; a 4xx reply is retried later, by the schedule in the ledger.
    """
    for try_number in (1, 2):
        try:
            await mailer.send(job.envelope)
        except TemporaryFailure as exc:
            if exc.connection_lost and try_number == 1:
                continue
            return Outcome(job.delivery_id, job.subscriber_id, "retry", str(exc)), False
        except PermanentFailure as exc:
            return Outcome(job.delivery_id, job.subscriber_id, "failed", str(exc),
                           hard_bounce=bool(NO_SUCH_USER.search(str(exc)))), False
        except UnknownOutcome as exc:
            return Outcome(job.delivery_id, job.subscriber_id, "unknown", str(exc)), False
        except DeliveryError as exc:  # reconnecting failed: the relay went away mid-run
            return Outcome(job.delivery_id, job.subscriber_id, "retry", str(exc)), True
        return Outcome(job.delivery_id, job.subscriber_id, "sent"), False
    raise AssertionError("unreachable")
