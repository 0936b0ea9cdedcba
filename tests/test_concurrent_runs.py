"""Exactly once, whatever runs at the same time: `digest` runs started a few seconds apart on one
database send every digest once; a retry from yesterday is still sent (or expired by query) today;
a delivery another live sender holds is left alone until its lease lapses, then retried once."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
import zoneinfo
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Update, select, update

from newsletter.db import ledger
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, Subscriber
from newsletter.deliver import DeliveryReport, send_due
from newsletter.plan import plan_due
from newsletter.runtime import Runtime
from newsletter.settings import load_settings
from tests.conftest import FIXTURES, fixed_send_moment, free_port
from tests.send.faults import FaultySink

HEADER = "email,topics,exclude,categories,authors,describe,timezone,hour,frequency,max_papers\n"
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Chatham", "America/Los_Angeles",
         "Australia/Adelaide")
RECIPIENTS = 1_500
STARTS_S = (0, 1, 4)  # when each of the three runs starts, after the first
RATE_PER_S = 200  # per run: 1,500 messages take the first run 7.5 s at least, so the later ones start while it sends
HARD_TIMEOUT_S = 240  # a run takes seconds; only a hang (a lock never released) gets near this
SECRET = "test-secret-key-0123456789abcdefghij"


@dataclass
class Relay(FaultySink):
    """A real SMTP server (aiosmtpd) that records each message's recipient, Message-ID and arrival."""

    port: int = 0


@pytest.fixture
def sink() -> Iterator[Relay]:
    relay = Relay(port=free_port())
    controller = Controller(relay, hostname="127.0.0.1", port=relay.port)
    controller.start()
    yield relay
    controller.stop()


def smtp_settings(database_url: str, sink: Relay, **extra: object) -> dict[str, object]:
    return dict(database_url=database_url, secret_key=SECRET, from_address="digest@example.org", email_backend="smtp",
                smtp_host="127.0.0.1", smtp_port=sink.port, smtp_security="none", **extra)


def hours_due_together(zones: tuple[str, ...], *, now: dt.datetime) -> tuple[dt.datetime, list[tuple[str, int]]]:
    """An instant a little ahead and, per zone, local send hours whose send moments all fall in the two hours
    before it and on the same local date: for subscribers added now, each one's first digest is due at that instant."""
    base = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=3)  # ≥ 2 h ahead, so every send moment is too
    choices = []
    for zone in zones:
        local = base.astimezone(zoneinfo.ZoneInfo(zone))
        choices += [(zone, local.hour)] + ([(zone, local.hour - 1)] if local.hour >= 1 else [])
    return base + dt.timedelta(minutes=1), choices


def import_readers(cli, tmp_path: Path, count: int, *, max_papers: int = 2) -> tuple[list[str], str]:
    """``count`` readers spread over ZONES and two hours each (CSV import) and the fixture feed ingested;
    returns the readers and the instant (``--at``) when every one of them is due."""
    at, choices = hours_due_together(ZONES, now=dt.datetime.now(dt.UTC))
    emails = [f"reader{i:04d}@example.org" for i in range(count)]
    rows = [f"{email},diffusion models;language models,,,,,{choices[i % len(choices)][0]},{choices[i % len(choices)][1]},"
            f"daily,{max_papers}\n" for i, email in enumerate(emails)]
    (tmp_path / "readers.csv").write_text(HEADER + "".join(rows))
    assert cli("subscribers", "import", str(tmp_path / "readers.csv")).code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    return emails, at.isoformat()


def ledger_rows(url: str) -> dict[str, Delivery]:
    """Each subscriber's latest delivery, by email."""
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        rows = session.execute(select(Subscriber.email, Delivery).join(Delivery, Delivery.subscriber_id == Subscriber.id)
                               .order_by(Delivery.issue_date)).all()
    engine.dispose()
    return {email: delivery for email, delivery in rows}


def all_deliveries(url: str) -> list[tuple[str, Delivery]]:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        rows = session.execute(select(Subscriber.email, Delivery).join(Delivery, Delivery.subscriber_id == Subscriber.id)
                               .order_by(Subscriber.email, Delivery.issue_date)).all()
    engine.dispose()
    return [(email, delivery) for email, delivery in rows]


def execute(url: str, statement: Update) -> None:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        session.execute(statement)
        session.commit()
    engine.dispose()


def naive_utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    started: float  # time.monotonic()
    stdout: Path
    stderr: Path
    ended: float | None = None


# --- three runs at once ---------------------------------------------------------------------------


def test_three_digest_runs_started_apart_send_each_digest_once(cli, env, database_url: str, sink: Relay,
                                                               tmp_path: Path) -> None:
    settings = smtp_settings(database_url, sink, smtp_pool_size=2, smtp_rate_per_s=RATE_PER_S)
    env(**settings)
    emails, at = import_readers(cli, tmp_path, RECIPIENTS)

    environ = {**os.environ, **{f"NEWSLETTER_{k.upper()}": str(v) for k, v in settings.items()}}
    command = [sys.executable, "-m", "newsletter", "digest", "--allow-future", "--at", at, "--json"]
    runs: list[Run] = []
    origin = time.monotonic()
    try:
        for number, start_s in enumerate(STARTS_S):
            time.sleep(max(0.0, origin + start_s - time.monotonic()))
            out, err = tmp_path / f"run{number}.out", tmp_path / f"run{number}.err"
            with out.open("wb") as stdout, err.open("wb") as stderr:  # files, not pipes: a full pipe would stall a run
                process = subprocess.Popen(command, env=environ, cwd=tmp_path, stdout=stdout, stderr=stderr)
            runs.append(Run(process, time.monotonic(), out, err))
        deadline = time.monotonic() + HARD_TIMEOUT_S
        while any(r.ended is None for r in runs) and time.monotonic() < deadline:
            for run in runs:
                if run.ended is None and run.process.poll() is not None:
                    run.ended = time.monotonic()
            time.sleep(0.02)
    finally:
        for run in runs:
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait(30)
    assert all(r.ended is not None for r in runs), f"a digest run did not finish within {HARD_TIMEOUT_S} s"

    stderrs = [r.stderr.read_text() for r in runs]
    for number, (run, stderr) in enumerate(zip(runs, stderrs, strict=True)):
        assert "Traceback" not in stderr, f"run {number}:\n{stderr}"
        assert run.process.returncode == 0, f"run {number} exited {run.process.returncode}:\n{stderr}"
    first, _, third = runs
    assert third.started < first.ended, "the runs must overlap: the third started before the first finished"  # type: ignore[operator]

    per_recipient = sink.per_recipient()
    assert set(per_recipient) == set(emails), "every due subscriber got their digest"
    duplicated = sorted(r for r, n in per_recipient.items() if n > 1)
    assert not duplicated, f"{len(duplicated)} recipients got more than one message, e.g. {duplicated[:5]}"
    assert len({message_id for _, message_id, _ in sink.received}) == RECIPIENTS, "Message-IDs are unique"

    reports = [json.loads(r.stdout.read_text()) for r in runs]
    sent_by_run = [report["outcomes"].get("sent", 0) for report in reports]
    assert sum(sent_by_run) == RECIPIENTS, f"each message is counted by the one run that sent it: {sent_by_run}"
    assert sum(len(report["picks"]) for report in reports) == RECIPIENTS, "each digest was planned by one run"

    rows = all_deliveries(database_url)
    assert len(rows) == RECIPIENTS and len({email for email, _ in rows}) == RECIPIENTS, "one delivery per subscriber"
    assert Counter(d.status for _, d in rows) == {"sent": RECIPIENTS}
    assert {d.attempts for _, d in rows} == {1}
    assert {email: d.message_id for email, d in rows} == {r: m for r, m, _ in sink.received}
    assert all(d.leased_by is None and d.lease_until is None for _, d in rows), "every lease was given back"
    arrivals = sorted(at for _, _, at in sink.received)
    peak = max(bisect.bisect_left(arrivals, at + 1.0) - i for i, at in enumerate(arrivals))
    print(f"\nsent per run {sent_by_run}; runs took "
          f"{', '.join(f'{r.started - origin:.1f}–{r.ended - origin:.1f} s' for r in runs)}; "  # type: ignore[operator]
          f"messages {arrivals[0] - origin:.1f}–{arrivals[-1] - origin:.1f} s, at most {peak} in one second")


# --- a retry from yesterday -----------------------------------------------------------------------


def test_a_retry_from_yesterday_is_sent_today_and_one_past_the_window_expires_by_query(
        cli, env, database_url: str, sink: Relay, tmp_path: Path) -> None:
    env(**smtp_settings(database_url, sink, smtp_pool_size=1, retry_window_h=24))
    emails, yesterday = import_readers(cli, tmp_path, 4)
    late, stale = emails[0], emails[1]
    sink.temporary = lambda address: address in (late, stale)  # 451 the first time only

    first = cli("digest", "--allow-future", "--at", yesterday, "--json")
    assert first.code == 0, first.err
    assert json.loads(first.out)["outcomes"] == {"sent": 2, "retry": 2}
    before = ledger_rows(database_url)
    assert before[late].status == before[stale].status == "retry"
    assert before[late].next_attempt_at > naive_utcnow(), "the relay said 'not now': it waits for its retry time"

    # A day passes. The late one's retry time has come; the stale one was planned more than the window ago.
    now = naive_utcnow()
    execute(database_url, update(Delivery).where(Delivery.id == before[late].id)
            .values(next_attempt_at=now - dt.timedelta(minutes=1), created_at=now - dt.timedelta(hours=20)))
    execute(database_url, update(Delivery).where(Delivery.id == before[stale].id)
            .values(next_attempt_at=now - dt.timedelta(minutes=1), created_at=now - dt.timedelta(hours=25)))
    today = (dt.datetime.fromisoformat(yesterday) + dt.timedelta(days=1)).isoformat()

    # The retry drain (the daemon's, between ticks) sends what is due without planning anything new.
    runtime = Runtime.build(load_settings())
    try:
        drained = asyncio.run(drain(runtime))
    finally:
        runtime.close()
    assert (dict(drained.outcomes), drained.expired) == ({"sent": 1}, 1), "yesterday's retry sent; the stale one expired"

    second = cli("digest", "--allow-future", "--at", today, "--json")
    assert second.code == 0, second.err
    report = json.loads(second.out)
    assert len(report["picks"]) == 4, "today's digests are planned for everyone"
    assert report["outcomes"] == {"sent": 4}, "today's four"

    deliveries = all_deliveries(database_url)
    by_email: dict[str, list[Delivery]] = {}
    for email, delivery in deliveries:
        by_email.setdefault(email, []).append(delivery)
    assert all(len(rows) == 2 for rows in by_email.values()), "two issue dates, one delivery each"
    retried, expired = by_email[late][0], by_email[stale][0]
    assert retried.issue_date < by_email[late][1].issue_date
    assert (retried.status, retried.attempts) == ("sent", 2)
    assert (expired.status, expired.attempts) == ("expired", 1), "expired by query, without another attempt"
    assert "451" in (expired.last_error or ""), "the reason it failed is kept"
    assert all(rows[1].status == "sent" for rows in by_email.values())

    received = Counter(sink.per_recipient())
    assert received == {late: 2, stale: 1, emails[2]: 2, emails[3]: 2}
    late_ids = [m for r, m, _ in sink.received if r == late]
    assert late_ids.count(retried.message_id) == 1 and by_email[late][1].message_id in late_ids
    assert expired.message_id not in {m for _, m, _ in sink.received}, "the expired digest never reached the relay"


async def drain(runtime: Runtime) -> DeliveryReport:
    async with contextlib.AsyncExitStack() as stack:
        mailers = [await stack.enter_async_context(m) for m in runtime.mailers()]
        return await send_due(runtime, mailers=mailers)


# --- a live lease, then a lapsed one --------------------------------------------------------------


def test_a_delivery_leased_by_a_live_sender_is_left_alone_until_the_lease_lapses_then_retried_once(
        cli, env, database_url: str, sink: Relay, tmp_path: Path) -> None:
    env(**smtp_settings(database_url, sink, smtp_pool_size=1))
    emails, at = import_readers(cli, tmp_path, 4)
    held, twice, *free = emails

    # Another sender plans everything, claims two deliveries and hands them over ("sending"), then goes quiet:
    # `held` still under a live lease, `twice` already on its second attempt (a retry after an unknown outcome).
    runtime = Runtime.build(load_settings())
    try:
        plan_due(runtime, now=dt.datetime.fromisoformat(at))
        with runtime.sessions() as session:
            ids = {email: session.scalar(select(Subscriber.id).where(Subscriber.email == email)) for email in (held, twice)}
            policy = ledger.RetryPolicy()
            for email, attempts in ((held, 1), (twice, 2)):
                [claimed] = ledger.claim_due(session, now=naive_utcnow(), holder="elsewhere:4242:cafe0000",
                                             lease=dt.timedelta(hours=1), limit=10, subscriber_id=ids[email])
                elsewhere = ledger.Ledger(session.connection(), policy=policy, holder="elsewhere:4242:cafe0000")
                assert elsewhere.started([claimed.id], now=naive_utcnow()) == {claimed.id}
                session.execute(update(Delivery).where(Delivery.id == claimed.id).values(attempts=attempts))
                session.commit()
    finally:
        runtime.close()
    planned = ledger_rows(database_url)
    assert (planned[held].status, planned[held].attempts, planned[held].leased_by) == ("sending", 1, "elsewhere:4242:cafe0000")

    alongside = cli("digest", "--allow-future", "--at", at, "--json")
    assert alongside.code == 0, alongside.err
    assert json.loads(alongside.out)["outcomes"] == {"sent": 2}, "only the two nobody holds"
    rows = ledger_rows(database_url)
    for email in (held, twice):
        assert (rows[email].status, rows[email].leased_by, rows[email].lease_until) == \
               ("sending", planned[email].leased_by, planned[email].lease_until), "a live lease is never taken over"
    assert set(sink.per_recipient()) == set(free)

    # The other sender died: its lease runs out.
    execute(database_url, update(Delivery).where(Delivery.leased_by == "elsewhere:4242:cafe0000")
            .values(lease_until=naive_utcnow() - dt.timedelta(seconds=1)))
    after = cli("digest", "--allow-future", "--at", at, "--json")
    assert after.code == 0, after.err
    assert json.loads(after.out)["outcomes"] == {"sent": 1}, "the unknown outcome is retried once; the twice-tried one is not"
    rows = ledger_rows(database_url)
    assert (rows[held].status, rows[held].attempts) == ("sent", 2)
    assert (rows[twice].status, rows[twice].attempts) == ("unknown", 2)
    assert [m for r, m, _ in sink.received if r == held] == [planned[held].message_id], "resent with the same Message-ID"

    again = cli("digest", "--allow-future", "--at", at, "--json")
    assert again.code == 0, again.err
    assert json.loads(again.out)["outcomes"] == {}
    assert sink.per_recipient() == {held: 1, **{email: 1 for email in free}}


def test_a_live_sender_stuck_on_a_slow_relay_keeps_its_lease_and_nothing_is_sent_twice(cli, env, sqlite_url, tmp_path) -> None:
    """Run A waits 12 s for the relay's answer with a 5 s lease; run B starts meanwhile. A renews its lease on a
    timer, so B takes none of A's deliveries; and a sender whose claim was taken over would send none of them."""
    sink = FaultySink(stall_for={"reader0@example.org": 12.0})
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings = dict(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij",
                        from_address="digest@example.org", email_backend="smtp", smtp_host="127.0.0.1", smtp_port=port,
                        smtp_security="none", smtp_pool_size=1, lease_s=5)
        env(**settings)
        (tmp_path / "l.csv").write_text("email,topics,max_papers\n"
                                        + "".join(f"reader{i}@example.org,diffusion models;language models,2\n" for i in range(3)))
        assert cli("subscribers", "import", str(tmp_path / "l.csv")).code == 0
        assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
        environ = {**os.environ, **{f"NEWSLETTER_{k.upper()}": str(v) for k, v in settings.items()}}
        command = [sys.executable, "-m", "newsletter", "digest", "--allow-future", "--at", fixed_send_moment(sqlite_url)]
        first = subprocess.Popen(command, env=environ, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while (row := ledger_rows(sqlite_url).get("reader0@example.org")) is None or row.status != "sending":
            assert time.monotonic() < deadline, "run A never handed reader0's message over"
            time.sleep(0.1)
        time.sleep(6)  # longer than the lease: without renewal, B would take A's deliveries over
        second = subprocess.run(command, env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        _, first_err = first.communicate(timeout=120)
    finally:
        controller.stop()
    assert first.returncode == 0 and second.returncode == 0, (first_err, second.stderr)
    assert "Traceback" not in first_err + second.stderr
    assert sink.per_recipient() == {f"reader{i}@example.org": 1 for i in range(3)}
