"""A simulated week, driven by `newsletter digest --at`: every subscriber gets one digest per send day of
their own calendar, at their own hour, across zones and both clock changes; a day with no run at all
is recorded missed and its papers roll into the next digest.

The expectations are written without ``newsletter.schedule``: a digest is due at the first run whose
local wall clock, on a send day, reads the subscriber's send time or later. That is the rule on the
days that go wrong too: on the spring-forward day 02:30 never shows in Berlin and the first run
after the jump (03:00 CEST) sends; on the fall-back day 01:30 shows twice in New York and only the
first time sends, as the local day already has its digest the second time.
"""

from __future__ import annotations

import datetime as dt
import email
import json
import zoneinfo
from collections import defaultdict
from dataclasses import dataclass
from email.policy import default as default_policy
from pathlib import Path

import pytest
from sqlalchemy import select, update

from newsletter.db import repo
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, DeliveryItem, Paper, Subscriber

UTC = dt.UTC
HOUR = dt.timedelta(hours=1)
QUARTER = dt.timedelta(minutes=15)
SAMPLE_FEED = Path(__file__).parents[1] / "newsletter" / "demo_data" / "arxiv_sample.rss"  # 211 papers
TOPICS = ("learning", "language models", "neural networks", "diffusion", "reinforcement learning")


@dataclass(frozen=True)
class Reader:
    email: str
    timezone: str
    hour: int
    minute: int = 0
    frequency: str = "daily"
    weekday: int = 0  # weekly: 0 = Monday … 6 = Sunday
    max_papers: int = 5

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def wall_time(self) -> dt.time:
        return dt.time(self.hour, self.minute)

    def sends_on(self, day: dt.date) -> bool:
        if self.frequency == "weekdays":
            return day.weekday() < 5
        if self.frequency == "weekly":
            return day.weekday() == self.weekday
        return True


READERS = (
    Reader("berlin.early@example.org", "Europe/Berlin", 2, 30),  # 02:30 does not exist on 2027-03-28
    Reader("berlin.sunday@example.org", "Europe/Berlin", 2, 30, "weekly", 6),  # …and that is a Sunday
    Reader("berlin.office@example.org", "Europe/Berlin", 8, 0, "weekdays"),
    Reader("ny.night@example.org", "America/New_York", 1, 30),  # 01:30 happens twice on 2026-11-01
    Reader("ny.friday@example.org", "America/New_York", 18, 0, "weekly", 4),
    Reader("kolkata@example.org", "Asia/Kolkata", 7, 0, max_papers=100),  # +05:30; the outage hits its Friday
    Reader("chatham@example.org", "Pacific/Chatham", 6, 0, "weekdays"),  # +13:45: its Monday begins on Sunday, UTC
    Reader("utc.midnight@example.org", "UTC", 0, 0),
    Reader("utc.monday@example.org", "UTC", 9, 0, "weekly", 0),
)
BY_EMAIL = {r.email: r for r in READERS}


@dataclass(frozen=True)
class Week:
    start: dt.datetime  # the first run; subscribers sign up the minute before
    end: dt.datetime  # no run at or after this
    transition: dt.datetime  # runs every 15 minutes from 3 h before to 3 h after it
    outage: tuple[dt.datetime, dt.datetime] | None = None  # no run at all in [start, end)


WEEKS = {
    # US clocks go back on Sunday 2026-11-01 at 02:00 EDT (06:00 UTC). Kolkata's Friday 2026-10-30 has no run.
    "fall-back": Week(dt.datetime(2026, 10, 28, tzinfo=UTC), dt.datetime(2026, 11, 4, tzinfo=UTC),
                      transition=dt.datetime(2026, 11, 1, 6, tzinfo=UTC),
                      outage=(dt.datetime(2026, 10, 29, 18, 30, tzinfo=UTC), dt.datetime(2026, 10, 30, 18, 30, tzinfo=UTC))),
    # EU clocks go forward on Sunday 2027-03-28 at 02:00 CET (01:00 UTC).
    "spring-forward": Week(dt.datetime(2027, 3, 24, tzinfo=UTC), dt.datetime(2027, 3, 31, tzinfo=UTC),
                           transition=dt.datetime(2027, 3, 28, 1, tzinfo=UTC)),
}


def run_instants(week: Week) -> list[dt.datetime]:
    """Every hour on the hour, every quarter hour around the clock change, none during the outage."""
    instants = set()
    moment = week.start
    while moment < week.end:
        instants.add(moment)
        moment += HOUR
    moment = week.transition - 3 * HOUR
    while moment <= week.transition + 3 * HOUR:
        instants.add(moment)
        moment += QUARTER
    if week.outage:
        instants = {m for m in instants if not week.outage[0] <= m < week.outage[1]}
    return sorted(instants)


@dataclass(frozen=True)
class Expected:
    planned_at: dt.datetime | None  # the run that plans (and sends) the digest; None: missed


def expected_issues(reader: Reader, *, signed_up: dt.datetime, runs: list[dt.datetime]) -> dict[dt.date, Expected]:
    """Each local send day after sign-up: planned by its first run reading the send time or later on that local
    date; missed if the local day ended without one (and a later run noticed). Days still open at the end: absent."""
    local_runs = [(run, run.astimezone(reader.zone)) for run in runs]
    joined = signed_up.astimezone(reader.zone)
    first_day = joined.date() if joined.time() < reader.wall_time else joined.date() + dt.timedelta(days=1)
    last_day = local_runs[-1][1].date()
    expected: dict[dt.date, Expected] = {}
    day = first_day
    while day <= last_day:
        if reader.sends_on(day):
            due = [run for run, local in local_runs if local.date() == day and local.time() >= reader.wall_time]
            if due:
                expected[day] = Expected(due[0])
            elif any(local.date() > day for _, local in local_runs):
                expected[day] = Expected(None)
        day += dt.timedelta(days=1)
    return expected


@dataclass
class Simulation:
    deliveries: dict[str, dict[dt.date, Delivery]]  # email → issue date → the ledger row
    planned_by: dict[tuple[str, dt.date], list[dt.datetime]]  # (email, issue date) → the runs whose plan included it
    picks: dict[int, list[int]]  # delivery id → paper ids, in rank order
    first_seen: dict[int, dt.datetime]  # paper id → first seen (naive UTC)
    emails: dict[str, list[email.message.EmailMessage]]  # recipient → the messages in the outbox
    sent_reported: int  # "sent" summed over every run's JSON
    missed_reported: int  # "missed" summed over every run's JSON


@pytest.fixture
def simulate(cli, env, sqlite_url: str, tmp_path: Path):
    def run(week: Week) -> Simulation:
        env(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij", from_address="digest@example.org",
            email_backend="file", outbox_dir=tmp_path / "outbox", base_url="https://digest.example.org",
            candidate_window_days=1,  # windows tile exactly: only the roll-over of a missed day reaches further back
            min_score=0, send_empty_digest="true")  # every send day is an email, whatever the papers
        for reader in READERS:
            args = ["--timezone", reader.timezone, "--hour", str(reader.hour), "--minute", str(reader.minute),
                    "--frequency", reader.frequency, "--max-papers", str(reader.max_papers)]
            if reader.frequency == "weekly":  # only a weekly digest takes a weekday
                args += ["--weekday", str(reader.weekday)]
            result = cli("subscribers", "add", reader.email, *[a for t in TOPICS for a in ("--topic", t)], *args)
            assert result.code == 0, result.err
        assert cli("ingest", str(SAMPLE_FEED)).code == 0
        sign_up(sqlite_url, at=week.start - dt.timedelta(minutes=1))
        spread_papers(sqlite_url, start=week.start - 2 * 24 * HOUR, end=week.end)

        planned_by: dict[tuple[str, dt.date], list[dt.datetime]] = defaultdict(list)
        sent_reported = missed_reported = 0
        for instant in run_instants(week):
            result = cli("digest", "--allow-future", "--at", instant.isoformat(), "--json")
            assert result.code == 0, f"digest --at {instant}: {result.err}"
            assert "Traceback" not in result.err
            report = json.loads(result.out)
            for pick in report["picks"]:
                planned_by[(pick["email"], dt.date.fromisoformat(pick["issue_date"]))].append(instant)
            assert set(report["outcomes"]) <= {"sent"}, f"digest --at {instant}: {report['outcomes']}"
            sent_reported += report["outcomes"].get("sent", 0)
            missed_reported += report["missed"]
        return read_back(sqlite_url, tmp_path / "outbox", planned_by, sent_reported, missed_reported)

    return run


def sign_up(url: str, *, at: dt.datetime) -> None:
    """Subscribers are added on the real clock: each schedule as if created at ``at`` instead."""
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        for row in session.scalars(select(Subscriber)).unique():
            reader = BY_EMAIL[row.email]
            assert (row.send_hour, row.send_minute, row.frequency, row.send_weekday) == \
                   (reader.hour, reader.minute, reader.frequency, reader.weekday)
            row.next_send_at = repo.first_send_at(repo.schedule_of(row), now=at.astimezone(UTC).replace(tzinfo=None))
        session.commit()
    engine.dispose()


def spread_papers(url: str, *, start: dt.datetime, end: dt.datetime) -> None:
    """Papers are first seen at ingest, on the real clock: spread them evenly over the simulated days instead."""
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        ids = session.scalars(select(Paper.id).order_by(Paper.id)).all()
        step = (end - start) / len(ids)
        for position, paper_id in enumerate(ids):
            moment = (start + position * step).astimezone(UTC).replace(tzinfo=None, microsecond=0)
            session.execute(update(Paper).where(Paper.id == paper_id).values(first_seen_at=moment))
        session.commit()
    engine.dispose()


def read_back(url: str, outbox: Path, planned_by: dict[tuple[str, dt.date], list[dt.datetime]], sent_reported: int,
              missed_reported: int) -> Simulation:
    engine = make_engine(url)
    deliveries: dict[str, dict[dt.date, Delivery]] = defaultdict(dict)
    picks: dict[int, list[int]] = defaultdict(list)
    with make_sessionmaker(engine)() as session:
        for address, delivery in session.execute(
                select(Subscriber.email, Delivery).join(Delivery, Delivery.subscriber_id == Subscriber.id)):
            assert delivery.issue_date not in deliveries[address], "one delivery per subscriber per issue date"
            deliveries[address][delivery.issue_date] = delivery
        for delivery_id, paper_id in session.execute(
                select(DeliveryItem.delivery_id, DeliveryItem.paper_id).order_by(DeliveryItem.delivery_id, DeliveryItem.rank)):
            picks[delivery_id].append(paper_id)
        first_seen = {paper_id: at for paper_id, at in session.execute(select(Paper.id, Paper.first_seen_at))}
    engine.dispose()
    emails: dict[str, list[email.message.EmailMessage]] = defaultdict(list)
    for path in sorted(outbox.glob("*/*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=default_policy)
        emails[str(message["To"])].append(message)  # type: ignore[arg-type]
    return Simulation(dict(deliveries), dict(planned_by), dict(picks), first_seen, dict(emails), sent_reported, missed_reported)


def local(instant: dt.datetime, timezone: str) -> dt.datetime:
    return instant.astimezone(zoneinfo.ZoneInfo(timezone))


def aware(naive_utc: dt.datetime) -> dt.datetime:
    return naive_utc.replace(tzinfo=UTC)


# --- the week as a whole --------------------------------------------------------------------------


def check_every_send_day_once(week: Week, sim: Simulation) -> None:
    runs = run_instants(week)
    for reader in READERS:
        expected = expected_issues(reader, signed_up=week.start - dt.timedelta(minutes=1), runs=runs)
        got = sim.deliveries.get(reader.email, {})
        assert sorted(got) == sorted(expected), f"{reader.email}: issue dates"
        for day, want in expected.items():
            row = got[day]
            if want.planned_at is None:
                assert row.status == "missed", f"{reader.email} {day}: {row.status}"
                assert (reader.email, day) not in sim.planned_by
                continue
            assert row.status == "sent" and row.attempts == 1, f"{reader.email} {day}: {row.status} after {row.attempts}"
            assert sim.planned_by[(reader.email, day)] == [want.planned_at], f"{reader.email} {day}: planned by one run, the first due"
            assert local(aware(row.send_at), reader.timezone).date() == day, "the issue date is the local date of its send moment"
            assert local(want.planned_at, reader.timezone).date() == day, "…and of the run that sent it"
            assert row.send_at <= want.planned_at.replace(tzinfo=None), "never before the send moment"
            assert reader.sends_on(day)
        sent = {row.message_id for row in got.values() if row.status == "sent"}
        in_outbox = [str(m["Message-ID"]) for m in sim.emails.get(reader.email, [])]
        assert sorted(in_outbox) == sorted(sent), f"{reader.email}: one email per sent delivery, no other"
    total_sent = sum(row.status == "sent" for rows in sim.deliveries.values() for row in rows.values())
    assert sim.sent_reported == total_sent, "each email was sent by one run, once (a resend would overwrite its .eml)"
    total_missed = sum(row.status == "missed" for rows in sim.deliveries.values() for row in rows.values())
    assert sim.missed_reported == total_missed, "each missed issue is reported once, by the run that recorded it"


def check_calendars(sim: Simulation) -> None:
    for reader in READERS:
        days = [day for day, row in sim.deliveries[reader.email].items() if row.status == "sent"]
        if reader.frequency == "weekdays":
            assert all(day.weekday() < 5 for day in days), f"{reader.email}: {days}"
        if reader.frequency == "weekly":
            assert {day.weekday() for day in days} == {reader.weekday}, f"{reader.email}: {days}"


@pytest.mark.parametrize("name", list(WEEKS))
def test_a_simulated_week_sends_one_digest_per_local_send_day(simulate, name: str) -> None:
    week = WEEKS[name]
    sim = simulate(week)
    check_every_send_day_once(week, sim)
    check_calendars(sim)
    if name == "fall-back":
        check_fall_back(sim)
        check_outage(sim)
    else:
        check_spring_forward(sim)


# --- the days that go wrong -----------------------------------------------------------------------


def check_fall_back(sim: Simulation) -> None:
    sunday = dt.date(2026, 11, 1)
    row = sim.deliveries["ny.night@example.org"][sunday]
    assert row.status == "sent" and row.send_at == dt.datetime(2026, 11, 1, 5, 30), "01:30 EDT, the first of the two"
    assert sim.planned_by[("ny.night@example.org", sunday)] == [dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)]
    # The runs at 06:30 and 06:45 UTC read 01:30 and 01:45 again (EST): they planned nothing more (one run above).
    assert sim.deliveries["ny.night@example.org"][dt.date(2026, 11, 2)].send_at == dt.datetime(2026, 11, 2, 6, 30)  # EST now


def check_spring_forward(sim: Simulation) -> None:
    sunday = dt.date(2027, 3, 28)
    for address in ("berlin.early@example.org", "berlin.sunday@example.org"):
        row = sim.deliveries[address][sunday]
        assert row.status == "sent" and row.send_at == dt.datetime(2027, 3, 28, 1, 0), "03:00 CEST, the first minute after 02:30"
        assert sim.planned_by[(address, sunday)] == [dt.datetime(2027, 3, 28, 1, 0, tzinfo=UTC)]
    assert sim.deliveries["berlin.early@example.org"][dt.date(2027, 3, 27)].send_at == dt.datetime(2027, 3, 27, 1, 30)  # CET
    assert sim.deliveries["berlin.early@example.org"][dt.date(2027, 3, 29)].send_at == dt.datetime(2027, 3, 29, 0, 30)  # CEST
    assert [day for day, row in sim.deliveries["berlin.sunday@example.org"].items() if row.status == "sent"] == [sunday]


def check_outage(sim: Simulation) -> None:
    """Kolkata's Friday had no run: missed; Saturday's digest holds the papers Friday's would have had."""
    rows = sim.deliveries["kolkata@example.org"]
    thursday, friday, saturday = dt.date(2026, 10, 29), dt.date(2026, 10, 30), dt.date(2026, 10, 31)
    assert rows[friday].status == "missed"
    assert rows[friday].send_at == dt.datetime(2026, 10, 30, 1, 30), "07:00 IST, the moment it was due"
    assert not sim.picks.get(rows[friday].id), "a missed issue has no picks"
    assert (rows[thursday].status, rows[saturday].status) == ("sent", "sent")
    assert sim.planned_by[("kolkata@example.org", saturday)] == [dt.datetime(2026, 10, 31, 2, 0, tzinfo=UTC)]  # 07:30 IST

    missed_window = (rows[thursday].send_at, rows[friday].send_at)  # what Friday's digest would have covered
    own_window = (rows[friday].send_at, rows[saturday].send_at)
    seen = {paper: sim.first_seen[paper] for paper in sim.picks[rows[saturday].id]}
    rolled = [p for p, at in seen.items() if missed_window[0] <= at < missed_window[1]]
    assert rolled, "papers first seen during the missed day reach the next digest"
    assert all(missed_window[0] <= at < own_window[1] for at in seen.values()), "nothing older than the last digest sent"
    assert not set(seen) & set(sim.picks[rows[thursday].id]), "and none of Thursday's again"
    papers_then = [p for p, at in sim.first_seen.items() if missed_window[0] <= at < missed_window[1]]
    assert len(rolled) >= len(papers_then) // 2, f"most of the missed day's papers: {len(rolled)} of {len(papers_then)}"
