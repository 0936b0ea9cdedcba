"""The worker's jobs, run by procrastinate's in-memory connector on a real SQLite database: a send batch
sends its deliveries once; an unreachable relay returns the batch and backs off without burning the
job's retries; a delivery another sender holds is handed to a follow-up at its lease's end; ingest
of a source stores its papers, and skips a source no longer configured."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from procrastinate import App
from procrastinate.testing import InMemoryConnector
from sqlalchemy import select, update

from newsletter import deliver
from newsletter.db import ledger
from newsletter.db.models import Delivery, Source
from newsletter.errors import ConfigError, DeliveryError
from newsletter.records import Envelope
from newsletter.runtime import Runtime
from newsletter.scale.app import INGEST_SOURCE, SEND_BATCH, check_dispatch, make_app, relay_queue
from newsletter.scale.batch import RELAY_BACKOFF_MAX_S, deliver_batch, relay_backoff_s
from newsletter.scale.enqueue import source_lock
from newsletter.send.dispatch import RateLimiter
from newsletter.send.mailer import Mailer, RecordingMailer
from tests.conftest import FIXTURES
from tests.scale.seeding import plan_everyone, seed, settings_for

READERS = 30


class UnreachableRelay:
    """A mailer whose connection is refused, as SmtpMailer reports it."""

    async def __aenter__(self) -> UnreachableRelay:
        raise DeliveryError("cannot connect to the relay 127.0.0.1:1: connection refused")

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def send(self, envelope: Envelope) -> None:
        raise AssertionError("never connected")


@pytest.fixture
def recorded() -> RecordingMailer:
    return RecordingMailer()


@pytest.fixture
def runtime(sqlite_url: str, recorded: RecordingMailer) -> Iterator[Runtime]:
    built = Runtime.build(settings_for(sqlite_url), connect=lambda: recorded)
    seed(built, READERS)
    yield built
    built.close()


@pytest.fixture
def app() -> App:
    return make_app(connector=InMemoryConnector())


def connector_of(app: App) -> InMemoryConnector:
    assert isinstance(app.connector, InMemoryConnector)
    return app.connector


async def run_jobs(app: App, runtime: Runtime) -> None:
    """Run every job due now, then stop."""
    await app.run_worker_async(wait=False, install_signal_handlers=False, additional_context={"runtime": runtime, "limiter": None})


def statuses(runtime: Runtime) -> dict[int, tuple[str, str | None]]:
    with runtime.sessions() as session:
        return {i: (s, held) for i, s, held in session.execute(select(Delivery.id, Delivery.status, Delivery.leased_by))}


def with_mailers(runtime: Runtime, connect: Callable[[], Mailer]) -> Runtime:
    return Runtime(settings=runtime.settings, engine=runtime.engine, sessions=runtime.sessions, templates=runtime.templates,
                   connect=connect)


def test_a_send_batch_sends_each_of_its_deliveries_once_and_leaves_nothing_behind(
        app: App, runtime: Runtime, recorded: RecordingMailer) -> None:
    async def scenario() -> None:
        planned = plan_everyone(runtime)
        batch, others = [i for i, _ in planned[:20]], [i for i, _ in planned[20:]]
        async with app.open_async():
            await app.configure_task(SEND_BATCH, queue=relay_queue(runtime.settings)).defer_async(delivery_ids=batch)
            await run_jobs(app, runtime)
        rows = statuses(runtime)
        assert {rows[i] for i in batch} == {("sent", None)}
        assert {rows[i][0] for i in others} == {"pending"}, "a batch sends only its own deliveries"
        with runtime.sessions() as session:
            batch_ids = set(session.scalars(select(Delivery.message_id).where(Delivery.id.in_(batch))))
        assert sorted(e.message_id for e in recorded.sent) == sorted(batch_ids)
        jobs = list(connector_of(app).jobs.values())
        assert [(j["task_name"], j["status"]) for j in jobs] == [(SEND_BATCH, "succeeded")], "no follow-up: nothing is left"

    asyncio.run(scenario())


@pytest.mark.parametrize("size", ["a full claim", "a shorter one"])
def test_a_worker_batch_is_claimed_once_and_sent_whole(
        runtime: Runtime, recorded: RecordingMailer, monkeypatch: pytest.MonkeyPatch, size: str) -> None:
    """A batch is at most one claim's worth: after claiming it, a second claim (the next batch's, or a last
    look) could only come back empty, so none is made; every delivery of the batch is still sent."""
    monkeypatch.setattr(deliver, "CLAIM_BATCH", 10)  # a full claim without planning 500 digests
    claims: list[int] = []
    claim_due = ledger.claim_due

    def counted_claim(*args: Any, **kwargs: Any) -> list[ledger.DueDelivery]:
        claims.append(len(claimed := claim_due(*args, **kwargs)))
        return claimed

    monkeypatch.setattr(ledger, "claim_due", counted_claim)
    batch = [i for i, _ in plan_everyone(runtime)[: 10 if size == "a full claim" else 7]]
    result = asyncio.run(deliver_batch(runtime, batch))
    assert claims == [len(batch)], "one claim, of the whole batch"
    assert result.remaining == () and result.outcomes == {"sent": len(batch)}
    assert {statuses(runtime)[i] for i in batch} == {("sent", None)}
    assert len(recorded.sent) == len(batch)


def test_an_unreachable_relay_returns_the_batch_and_backs_off_without_burning_retries(app: App, runtime: Runtime) -> None:
    async def scenario() -> None:
        batch = [i for i, _ in plan_everyone(runtime)[:10]]
        down = with_mailers(runtime, UnreachableRelay)
        async with app.open_async():
            await app.configure_task(SEND_BATCH, queue="send:relay").defer_async(delivery_ids=batch)
            before = dt.datetime.now(dt.UTC)
            await run_jobs(app, down)
        first, follow_up = connector_of(app).jobs.values()
        assert (first["status"], first["attempts"]) == ("succeeded", 1), "ran once and succeeded: not a failure that burns a retry"
        assert follow_up["status"] == "todo" and follow_up["queue_name"] == "send:relay"
        assert follow_up["args"] == {"delivery_ids": batch, "relay_failures": 1}
        wait_s = (follow_up["scheduled_at"] - before).total_seconds()
        assert relay_backoff_s(1) - 1 <= wait_s <= relay_backoff_s(1) + 5
        assert {statuses(runtime)[i] for i in batch} == {("pending", None)}, "nothing claimed, nothing held"

        follow_up["scheduled_at"] = dt.datetime.now(dt.UTC)  # its time has come: the relay is still down
        async with app.open_async():
            await run_jobs(app, down)
        again = list(connector_of(app).jobs.values())[-1]
        assert again["args"]["relay_failures"] == 2
        assert (again["scheduled_at"] - dt.datetime.now(dt.UTC)).total_seconds() > relay_backoff_s(1), "the wait doubles"

    asyncio.run(scenario())


def test_the_relay_backoff_doubles_up_to_five_minutes() -> None:
    waits = [relay_backoff_s(n) for n in range(1, 10)]
    assert waits[:3] == [5.0, 10.0, 20.0]
    assert waits == sorted(waits) and waits[-1] == RELAY_BACKOFF_MAX_S == 300.0


def test_a_delivery_another_sender_holds_is_handed_to_a_follow_up_when_its_lease_ends(
        app: App, runtime: Runtime, recorded: RecordingMailer) -> None:
    async def scenario() -> None:
        batch = [i for i, _ in plan_everyone(runtime)[:5]]
        held_until = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0) + dt.timedelta(seconds=60)
        with runtime.sessions() as session:  # a live sender (another worker) has it claimed
            session.execute(update(Delivery).where(Delivery.id == batch[0]).values(leased_by="other:1:ab", lease_until=held_until))
            session.commit()
        async with app.open_async():
            await app.configure_task(SEND_BATCH, queue="send:relay").defer_async(delivery_ids=batch)
            await run_jobs(app, runtime)
        rows = statuses(runtime)
        assert {rows[i] for i in batch[1:]} == {("sent", None)}
        assert rows[batch[0]] == ("pending", "other:1:ab"), "another sender's claim is left alone"
        assert len(recorded.sent) == 4
        follow_up = list(connector_of(app).jobs.values())[-1]
        assert follow_up["args"] == {"delivery_ids": [batch[0]], "relay_failures": 0}
        assert held_until <= follow_up["scheduled_at"].replace(tzinfo=None) <= held_until + dt.timedelta(seconds=5)

    asyncio.run(scenario())


def test_ingest_source_stores_the_sources_papers(app: App, runtime: Runtime) -> None:
    async def scenario() -> None:
        url = str(FIXTURES / "arxiv_weekend.rss")
        with runtime.sessions() as session:
            session.add(Source(url=url, kind="arxiv-rss"))
            session.commit()
        async with app.open_async():
            await app.configure_task(INGEST_SOURCE, lock=source_lock(url)).defer_async(url=url, kind="arxiv-rss")
            await run_jobs(app, runtime)
        [job] = connector_of(app).jobs.values()
        assert job["status"] == "succeeded"
        with runtime.sessions() as session:
            fetched = session.scalars(select(Source).where(Source.url == url)).one()
            assert fetched.last_success_at is not None and fetched.last_error is None

    asyncio.run(scenario())


def test_ingest_source_skips_a_source_removed_since_its_job_was_queued(
        app: App, runtime: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = str(tmp_path / "removed.rss")  # in neither the database nor NEWSLETTER_SOURCES; fetching it would fail
    caplog.set_level(logging.INFO, logger="newsletter.daemon")

    async def scenario() -> None:
        async with app.open_async():
            await app.configure_task(INGEST_SOURCE, lock=source_lock(url)).defer_async(url=url, kind="arxiv-rss")
            await run_jobs(app, runtime)

    asyncio.run(scenario())
    [job] = connector_of(app).jobs.values()
    assert job["status"] == "succeeded"
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "newsletter.daemon"]
    assert lines == [("INFO", f"ingest: {url}: 0 new, 0 updated, 0 unchanged (no longer configured) in 0.00 s")]


def test_dispatch_through_procrastinate_on_sqlite_is_a_one_line_error(sqlite_url: str) -> None:
    settings = settings_for(sqlite_url).model_copy(update={"dispatch": "procrastinate"})
    with pytest.raises(ConfigError) as raised:
        check_dispatch(settings)
    assert "NEWSLETTER_DISPATCH=procrastinate needs PostgreSQL" in str(raised.value) and "\n" not in str(raised.value)
    check_dispatch(settings.model_copy(update={"dispatch": "inline"}))  # the embedded default is fine
    check_dispatch(settings_for("postgresql://u@db.example.org/n").model_copy(update={"dispatch": "procrastinate"}))


def test_a_batch_is_sent_under_the_limiter_it_is_given(runtime: Runtime, recorded: RecordingMailer) -> None:
    """A worker passes the relay's shared limit: every message takes its turn from it, not from a limit of the
    process's own (the worker's runtime keeps its rate setting)."""
    class Counted(RateLimiter):
        taken = 0

        async def acquire(self) -> None:
            Counted.taken += 1
            await super().acquire()

    batch = [i for i, _ in plan_everyone(runtime)[:7]]
    result = asyncio.run(deliver_batch(runtime, batch, limiter=Counted(1_000)))
    assert result.outcomes == {"sent": 7} and Counted.taken == 7 and len(recorded.sent) == 7
