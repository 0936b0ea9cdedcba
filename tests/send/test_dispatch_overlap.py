"""The commit of a message's start overlaps the envelope's round trips (MAIL, RCPT), never the message:
each message goes to the relay only after its ``sending`` and the connection's previous outcome are
committed, and a delivery that is no longer ours is announced at most, then withdrawn, never sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection
from typing import Self

from newsletter.db.ledger import Outcome
from newsletter.records import Envelope
from newsletter.send.dispatch import GroupCommitter, OutboundMessage, RateLimiter, dispatch

COMMIT_S = 0.02  # a slow commit, so that an overlap (or its absence) shows in the order of events


class Journal:
    def __init__(self, *, not_ours: Collection[int] = ()) -> None:
        self.events: list[tuple[str, int]] = []
        self.not_ours = set(not_ours)

    def write(self, started: list[int], finished: list[Outcome]) -> Collection[int]:
        time.sleep(COMMIT_S)  # runs in a worker thread, as the ledger's commit does
        self.events += [("sent committed", o.delivery_id) for o in finished if o.status == "sent"]
        self.events += [("start committed", i) for i in started]
        return set(started) - self.not_ours


class AnnouncingRelay:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.announced: int | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def announce(self, envelope: Envelope) -> None:
        self.announced = int(envelope.message_id)
        self.journal.events.append(("announced", self.announced))

    async def withdraw(self) -> None:
        assert self.announced is not None
        self.journal.events.append(("withdrawn", self.announced))
        self.announced = None

    async def send(self, envelope: Envelope) -> None:
        assert self.announced == int(envelope.message_id), "the message goes in the transaction announced for it"
        self.journal.events.append(("handed over", self.announced))
        self.announced = None


async def jobs(count: int) -> AsyncIterator[OutboundMessage]:
    for n in range(1, count + 1):
        yield OutboundMessage(n, n, Envelope("digest@example.org", f"r{n}@example.org", str(n), b"Subject: x\r\n\r\nhi\r\n"))


def run(journal: Journal, *, count: int, connections: int) -> dict[str, int]:
    relays = [AnnouncingRelay(journal) for _ in range(connections)]
    result = asyncio.run(dispatch(jobs(count), mailers=relays, committer=GroupCommitter(journal.write), limiter=RateLimiter(0)))
    assert result.error is None
    return result.outcomes


def at(journal: Journal, event: str, delivery: int) -> int:
    return journal.events.index((event, delivery))


def test_each_message_is_handed_over_only_after_its_start_and_the_previous_outcome_are_committed() -> None:
    journal = Journal()
    assert run(journal, count=12, connections=1) == {"sent": 12}
    for n in range(1, 13):
        assert at(journal, "start committed", n) < at(journal, "handed over", n)
        if n > 1:  # one connection: at most one message in doubt at any moment
            assert at(journal, "sent committed", n - 1) < at(journal, "handed over", n)


def test_the_envelope_goes_out_while_the_start_is_being_committed() -> None:
    journal = Journal()
    run(journal, count=8, connections=2)
    for n in range(1, 9):
        assert at(journal, "announced", n) < at(journal, "start committed", n) < at(journal, "handed over", n)


def test_a_delivery_no_longer_ours_is_withdrawn_not_sent_and_the_next_one_goes() -> None:
    journal = Journal(not_ours={3})
    assert run(journal, count=5, connections=1) == {"sent": 4}
    assert ("handed over", 3) not in journal.events
    assert at(journal, "announced", 3) < at(journal, "withdrawn", 3) < at(journal, "announced", 4)
    assert ("handed over", 4) in journal.events


class TurnOnce:
    """A rate limit that gives one turn, then makes everyone wait (until the run is stopped)."""

    limited = True

    def __init__(self) -> None:
        self.turns = 1
        self.waiting = asyncio.Event()

    async def acquire(self) -> None:
        if self.turns:
            self.turns -= 1
            return
        self.waiting.set()
        await asyncio.Event().wait()  # never: the relay's limit is reached for longer than the run lasts

    def release(self) -> None:
        pass


def test_a_message_waiting_for_its_turn_is_not_recorded_as_sending_and_the_one_before_is_recorded_sent() -> None:
    """A worker stopped while its next message waited for the shared rate limit left that message "sending"
    (never handed over, yet counted as in doubt and sent again once); and the message before it stayed
    unrecorded for as long as the wait lasted."""
    journal, limiter = Journal(), TurnOnce()

    async def stopped_while_waiting() -> None:
        task = asyncio.ensure_future(dispatch(jobs(3), mailers=[AnnouncingRelay(journal)], committer=GroupCommitter(journal.write),
                                              limiter=limiter))
        await limiter.waiting.wait()
        await asyncio.sleep(COMMIT_S * 3)  # time for any commit that would run
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(stopped_while_waiting())
    assert ("handed over", 1) in journal.events and ("sent committed", 1) in journal.events
    assert ("start committed", 2) not in journal.events and ("announced", 2) not in journal.events
