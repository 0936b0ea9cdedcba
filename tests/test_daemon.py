"""`newsletter daemon`: its schedule from the settings, the catch-up at start, a relay that is down, the
ingest jobs, the cleanup, and the real process: SIGTERM within 10 s with its claims released, and
SIGKILL then restart with every due subscriber getting exactly one digest."""

from __future__ import annotations

import asyncio
import configparser
import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from newsletter import schedule
from newsletter.daemon import Daemon
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import DaemonHeartbeat, Delivery, Paper, Source, Subscriber, utcnow
from newsletter.errors import ConfigError
from newsletter.jobs import job_table
from newsletter.runtime import Runtime
from newsletter.send.mailer import RecordingMailer
from newsletter.settings import Settings, load_settings
from tests.conftest import FIXTURES, SmtpSink, free_port
from tests.send.faults import FaultySink

UTC = dt.UTC
TOPICS = "diffusion models;language models"  # every subscriber finds papers in the fixture feed
SECRET = "test-secret-key-0123456789abcdefghij"
JOB_FIELDS = {"next_run_at", "last_run_at", "last_seconds", "last_result", "last_error"}


def midday_zone(now: dt.datetime) -> str:
    """A fixed-offset zone where it is about noon now: a digest due at 09:00 there stays due for hours."""
    east = 12 - now.hour  # hours east of UTC: -11 ... +12 (Etc/ names count the other way)
    return "Etc/GMT" if east == 0 else f"Etc/GMT{-east:+d}"


def naive(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


@pytest.fixture
def db(configured: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(configured)
    yield make_sessionmaker(engine)
    engine.dispose()


def make_due(sessions: sessionmaker[Session], *, zone: str, emails: list[str] | None = None, days_ago: int = 0) -> dt.datetime:
    """Move ``emails``' (default: everyone's) next send to 09:00 local ``days_ago`` days back, as if the daemon had
    been down since; the papers were first seen two hours before that. Returns that send moment."""
    moment = schedule.send_moment(schedule.Schedule(zone, 9), schedule.local_date(zone, dt.datetime.now(UTC)) - dt.timedelta(days=days_ago))
    assert moment is not None
    with sessions() as session:
        session.execute(update(Paper).values(first_seen_at=naive(moment) - dt.timedelta(hours=2)))
        who = update(Subscriber) if emails is None else update(Subscriber).where(Subscriber.email.in_(emails))
        session.execute(who.values(next_send_at=naive(moment)))
        session.commit()
    return moment


def run_until(daemon: Daemon, condition: Callable[[], Any], *, timeout_s: float = 60.0, linger_s: float = 0.0) -> None:
    """Run the daemon in this process until ``condition()`` holds (or the timeout), then stop it as SIGTERM would."""

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run())
        deadline = time.monotonic() + timeout_s
        while not condition() and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(linger_s)
        daemon.request_stop("the test is done")
        await asyncio.wait_for(task, timeout=30)

    asyncio.run(scenario())


def deliveries(sessions: sessionmaker[Session]) -> dict[str, list[tuple[dt.date, str]]]:
    with sessions() as session:
        rows = session.execute(select(Subscriber.email, Delivery.issue_date, Delivery.status)
                               .join(Subscriber, Subscriber.id == Delivery.subscriber_id).order_by(Delivery.issue_date))
        found: dict[str, list[tuple[dt.date, str]]] = {}
        for email, issue_date, status in rows:
            found.setdefault(email, []).append((issue_date, status))
        return found


# --- the schedule ----------------------------------------------------------------------------------


def test_the_jobs_follow_the_settings_and_read_weekdays_as_crontab_does() -> None:
    jobs = {spec.id: spec for spec in job_table(Settings(_env_file=None))}  # type: ignore[call-arg]
    assert list(jobs) == ["tick", "retry", "ingest", "trending", "cleanup"]
    assert {i: s.misfire_grace_s for i, s in jobs.items()} == {
        "tick": 60, "retry": 300, "ingest": 20 * 3600, "trending": 1800, "cleanup": 86400}
    ingest = jobs["ingest"].trigger  # 20:05 New York time, Sunday to Thursday
    thursday_evening = dt.datetime(2026, 11, 27, 2, 0, tzinfo=UTC)  # Thursday 21:00 in New York
    assert ingest.get_next_fire_time(None, thursday_evening) == dt.datetime(2026, 11, 30, 1, 5, tzinfo=UTC)  # Sunday 20:05 EST
    assert ingest.get_next_fire_time(None, dt.datetime(2026, 7, 1, 12, 0, tzinfo=UTC)) == dt.datetime(2026, 7, 2, 0, 5, tzinfo=UTC)
    assert jobs["trending"].trigger.get_next_fire_time(None, dt.datetime(2026, 11, 27, 10, 20, tzinfo=UTC)) == \
        dt.datetime(2026, 11, 27, 11, 15, tzinfo=UTC)
    assert jobs["cleanup"].trigger.get_next_fire_time(None, dt.datetime(2026, 11, 27, 4, 0, tzinfo=UTC)) == \
        dt.datetime(2026, 11, 28, 3, 30, tzinfo=UTC)

    weekdays = {spec.id: spec for spec in job_table(Settings(_env_file=None, ingest_cron="0 6 * * 1-5", ingest_timezone="UTC"))}  # type: ignore[call-arg]
    saturday = dt.datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert weekdays["ingest"].trigger.get_next_fire_time(None, saturday) == dt.datetime(2026, 11, 30, 6, 0, tzinfo=UTC)  # Monday

    with pytest.raises(ConfigError, match="NEWSLETTER_INGEST_CRON is invalid"):
        job_table(Settings(_env_file=None, ingest_cron="61 * * * *"))  # type: ignore[call-arg]


def test_the_daemon_command_refuses_a_bad_cron_in_one_line(cli, env, configured: str) -> None:
    env(trending_cron="every hour")
    result = cli("daemon")
    assert result.code == 1
    assert result.err.strip().startswith("error: NEWSLETTER_TRENDING_CRON is invalid") and len(result.err.strip().splitlines()) == 1


# --- in this process -------------------------------------------------------------------------------


def test_at_start_a_digest_that_fell_due_while_down_goes_out_and_one_whose_day_ended_is_missed(cli, env, db) -> None:
    env(tick_s=3600, retry_drain_s=3600)  # nothing but the runs at start
    zone = midday_zone(dt.datetime.now(UTC))
    for name in ("late", "lapsed", "future"):
        assert cli("subscribers", "add", f"{name}@example.org", "--topic", "diffusion models", "--topic", "language models",
                   "--timezone", zone, "--hour", "9").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    today = make_due(db, zone=zone, emails=["late@example.org"])  # due 3 h ago: the daemon was down
    yesterday = make_due(db, zone=zone, emails=["lapsed@example.org"], days_ago=1)  # down since yesterday's send
    mailer = RecordingMailer()
    daemon = Daemon(Runtime.build(load_settings(), connect=lambda: mailer))

    run_until(daemon, lambda: len(mailer.sent) >= 2, linger_s=0.5)

    assert sorted(e.recipient for e in mailer.sent) == ["lapsed@example.org", "late@example.org"]
    today_date, yesterday_date = today.astimezone(schedule.Schedule(zone, 9).zone).date(), yesterday.astimezone(
        schedule.Schedule(zone, 9).zone).date()
    assert deliveries(db) == {"late@example.org": [(today_date, "sent")],
                              "lapsed@example.org": [(yesterday_date, "missed"), (today_date, "sent")]}
    with db() as session:
        beats = session.scalars(select(DaemonHeartbeat)).all()
        tomorrow = naive(today + dt.timedelta(days=1))
        assert set(session.scalars(select(Subscriber.next_send_at))) == {tomorrow}  # everyone: tomorrow at 09:00
    assert [b.id for b in beats] == [daemon.id] and beats[0].stopped_at is not None
    jobs = beats[0].jobs
    assert set(jobs) == {"tick", "retry", "ingest", "trending", "cleanup", "send"}
    assert all(set(entry) == JOB_FIELDS for entry in jobs.values())
    assert jobs["tick"]["last_result"] == "planned 2 (0 quiet, 1 missed)" and jobs["tick"]["last_error"] is None
    assert jobs["send"]["last_result"].startswith("sent 2,")
    assert dt.datetime.fromisoformat(jobs["tick"]["last_run_at"]).tzinfo is not None
    assert jobs["ingest"]["last_run_at"] is None  # no source was due for an ingest


def test_an_unreachable_relay_is_a_warning_and_the_next_tick_tries_again(cli, env, db, caplog) -> None:
    port = free_port()  # nothing listens there yet
    env(email_backend="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_security="none", tick_s=0.5, retry_drain_s=3600)
    zone = midday_zone(dt.datetime.now(UTC))
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models", "--timezone", zone, "--hour", "9").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    make_due(db, zone=zone)
    daemon = Daemon(Runtime.build(load_settings()))
    sink = SmtpSink("127.0.0.1", port)
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    seen: dict[str, Any] = {}

    def recorded_error() -> str | None:
        with db() as session:
            beat = session.get(DaemonHeartbeat, daemon.id)
            return beat.jobs["send"]["last_error"] if beat else None

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run())
        deadline = time.monotonic() + 60
        while not (seen.get("error") or task.done()) and time.monotonic() < deadline:
            seen["error"] = await asyncio.to_thread(recorded_error)
            await asyncio.sleep(0.1)
        seen["while_down"] = await asyncio.to_thread(deliveries, db)
        await asyncio.sleep(1.5)  # more ticks against the closed port: the daemon keeps going
        assert not task.done()
        await asyncio.to_thread(controller.start)
        while not sink.received and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        daemon.request_stop("the test is done")
        await asyncio.wait_for(task, timeout=30)

    try:
        asyncio.run(scenario())
    finally:
        controller.stop()

    assert "cannot reach SMTP relay 127.0.0.1" in seen["error"]
    assert [status for _, status in seen["while_down"]["ada@example.org"]] == ["pending"]  # nothing claimed without a relay
    assert [r.recipients for r in sink.received] == [["ada@example.org"]]
    assert [status for _, status in deliveries(db)["ada@example.org"]] == ["sent"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "newsletter.daemon" and r.levelname == "WARNING"]
    assert sum("send: not sending: cannot reach SMTP relay" in w and "trying again at the next tick" in w for w in warnings) >= 2


def test_an_ingest_due_while_down_runs_at_start_trending_sources_apart(cli, env, db, tmp_path: Path, caplog) -> None:
    a_while_ago = dt.datetime.now(UTC) - dt.timedelta(minutes=2)  # both crons fired then; the next time is an hour away
    env(ingest_cron=f"{a_while_ago.minute} * * * *", ingest_timezone="UTC", trending_cron=f"{a_while_ago.minute} * * * *",
        tick_s=3600, retry_drain_s=3600, hf_daily_url=FIXTURES / "hf_daily.json", sources='["hf-daily"]')
    assert cli("sources", "add", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    assert cli("sources", "add", str(tmp_path / "gone.rss"), "--no-check").code == 0
    daemon = Daemon(Runtime.build(load_settings(), connect=RecordingMailer))
    caplog.set_level(logging.INFO, logger="newsletter.daemon")

    run_until(daemon, lambda: daemon.jobs["ingest"].last_run_at and daemon.jobs["trending"].last_run_at)

    ingest, trending = daemon.jobs["ingest"], daemon.jobs["trending"]
    assert ingest.last_result == "2 sources, 60 new papers, 0 updated, 1 failed"
    assert ingest.last_error is not None and "gone.rss" in ingest.last_error
    assert trending.last_result is not None and trending.last_result.startswith("1 source,") and trending.last_error is None
    with db() as session:
        assert session.scalar(select(Source.last_success_at).where(Source.url.endswith("arxiv_cs_lg.rss"))) is not None
        assert session.scalar(select(Source.consecutive_failures).where(Source.url.endswith("gone.rss"))) == 1
        assert session.scalars(select(Paper.upvotes).where(Paper.upvotes.is_not(None))).first() is not None  # trending data
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "newsletter.daemon"]
    assert any(level == "INFO" and line.startswith("ingest: ") and "arxiv_cs_lg.rss: 60 new" in line for level, line in lines)
    assert any(level == "WARNING" and line.startswith("ingest: ") and "gone.rss failed" in line for level, line in lines)


def test_no_ingest_at_start_when_the_sources_were_fetched_since_the_cron_fired(cli, env, db) -> None:
    a_while_ago = dt.datetime.now(UTC) - dt.timedelta(minutes=2)
    env(ingest_cron=f"{a_while_ago.minute} * * * *", ingest_timezone="UTC", tick_s=3600, retry_drain_s=3600)
    assert cli("sources", "add", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    with db() as session:
        session.execute(update(Source).values(last_success_at=utcnow() - dt.timedelta(minutes=1)))  # after the cron fired
        session.commit()
    daemon = Daemon(Runtime.build(load_settings(), connect=RecordingMailer))

    run_until(daemon, lambda: daemon.jobs["tick"].last_run_at and daemon.jobs["cleanup"].last_run_at, linger_s=0.5)

    assert daemon.jobs["ingest"].last_run_at is None
    with db() as session:
        assert session.scalars(select(Paper.id)).first() is None


def test_the_cleanup_at_start_expires_stale_deliveries_and_forgets_silent_daemons(cli, env, db) -> None:
    env(tick_s=3600, retry_drain_s=3600, retry_window_h=24)
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models").code == 0
    now = utcnow()
    with db() as session:
        ada = session.scalar(select(Subscriber.id))
        session.add_all([
            Delivery(subscriber_id=ada, issue_date=(now - dt.timedelta(days=2)).date(), status="retry", message_id="<old@example.org>",
                     attempts=3, created_at=now - dt.timedelta(days=2), next_attempt_at=now + dt.timedelta(hours=1)),
            DaemonHeartbeat(id="gone:1", started_at=now - dt.timedelta(days=9), beat_at=now - dt.timedelta(days=8), jobs={}),
            DaemonHeartbeat(id="quiet:2", started_at=now - dt.timedelta(days=3), beat_at=now - dt.timedelta(days=2), jobs={}),
        ])
        session.commit()
    daemon = Daemon(Runtime.build(load_settings(), connect=RecordingMailer))

    run_until(daemon, lambda: daemon.jobs["cleanup"].last_run_at)

    assert daemon.jobs["cleanup"].last_result == "expired 1 deliveries past the retry window, forgot 1 silent daemons"
    assert daemon.jobs["send"].last_result in (None, "nothing due")  # the cleanup expired it, not a send
    with db() as session:
        assert session.scalar(select(Delivery.status)) == "expired"
        assert set(session.scalars(select(DaemonHeartbeat.id))) == {"quiet:2", daemon.id}


# --- the real process ------------------------------------------------------------------------------


def import_due_subscribers(cli, sessions: sessionmaker[Session], tmp_path: Path, count: int) -> None:
    zone = midday_zone(dt.datetime.now(UTC))
    rows = "".join(f"reader{i}@example.org,{TOPICS},,,,,{zone},9,,3\n" for i in range(count))
    (tmp_path / "list.csv").write_text("email,topics,exclude,categories,authors,describe,timezone,hour,frequency,max_papers\n" + rows)
    assert cli("subscribers", "import", str(tmp_path / "list.csv")).code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    make_due(sessions, zone=zone)


class DaemonProcess:
    """``python -m newsletter daemon`` with its stderr in a file; killed at the end of the test whatever happens."""

    def __init__(self, environ: dict[str, str], folder: Path, name: str) -> None:
        self.log = folder / f"{name}.log"
        with self.log.open("wb") as stderr:
            self.process = subprocess.Popen([sys.executable, "-m", "newsletter", "daemon"], env=environ, cwd=folder,
                                            stdout=subprocess.DEVNULL, stderr=stderr)

    def lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.strip()]

    def terminate(self) -> tuple[int, float]:
        """SIGTERM, as systemd stops it; (exit status, seconds it took to exit)."""
        self.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = self.process.wait(30)
        return code, time.monotonic() - signalled

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def wait_for(condition: Callable[[], Any], *, timeout_s: float, process: DaemonProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.process.poll() is None, "the daemon exited:\n" + process.log.read_text()[-3000:]
        assert time.monotonic() < deadline, "timed out; the daemon said:\n" + process.log.read_text()[-3000:]
        time.sleep(0.01)


@pytest.fixture
def relay() -> Iterator[tuple[FaultySink, int]]:
    sink, port = FaultySink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


def daemon_environment(env, url: str, port: int, **extra: object) -> dict[str, str]:
    settings = {"database_url": url, "secret_key": SECRET, "from_address": "digest@example.org", "email_backend": "smtp",
                "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none", "smtp_pool_size": 4, "tick_s": 1,
                "retry_drain_s": 1, "lease_s": 5, **extra}
    env(**settings)
    return {**os.environ, **{f"NEWSLETTER_{k.upper()}": str(v) for k, v in settings.items()}}


def test_sigterm_stops_within_10_s_with_messages_in_flight_recorded_and_claims_released(cli, env, sqlite_url, relay, tmp_path) -> None:
    sink, port = relay
    environ = daemon_environment(env, sqlite_url, port, smtp_rate_per_s=20, log_format="json")  # 300 take 15 s: mid-run at SIGTERM
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    import_due_subscribers(cli, sessions, tmp_path, 300)
    daemon = DaemonProcess(environ, tmp_path, "daemon")
    try:
        wait_for(lambda: len(sink.received) >= 20, timeout_s=90, process=daemon)
        code, took = daemon.terminate()
    finally:
        daemon.close()

    assert code == 0 and took < 10, f"exit {code} after {took:.1f} s"
    received = Counter(recipient for recipient, _, _ in sink.received)
    assert len(received) < 300 and set(received.values()) == {1}
    with sessions() as session:
        rows = session.execute(select(Subscriber.email, Delivery.status, Delivery.leased_by)
                               .join(Subscriber, Subscriber.id == Delivery.subscriber_id)).all()
        beat = session.scalars(select(DaemonHeartbeat)).one()
    engine.dispose()
    assert {email for email, status, _ in rows if status == "sent"} == set(received)  # every message in flight finished, recorded
    assert Counter(status for _, status, _ in rows) == {"sent": len(received), "pending": 300 - len(received)}
    assert [email for email, _, holder in rows if holder is not None] == []  # claims released for the next sender
    assert beat.stopped_at is not None

    entries = [json.loads(line) for line in daemon.lines()]  # every line is JSON
    assert "Traceback" not in daemon.log.read_text()
    ticks = [e for e in entries if e.get("job") == "tick" and e.get("planned")]
    assert ticks and ticks[0]["planned"] == 300 and ticks[0]["missed"] == 0 and ticks[0]["message"].startswith("tick: planned 300")
    sends = [e for e in entries if e.get("job") == "send" and "sent" in e]
    assert sum(e["sent"] for e in sends) == len(received) and all(isinstance(e["seconds"], float) for e in sends)
    assert any("stopping (SIGTERM)" in e["message"] for e in entries)


def test_sigterm_exits_within_10_s_even_with_a_message_the_relay_sits_on_and_a_feed_that_never_answers(
        cli, env, sqlite_url, tmp_path) -> None:
    sink, port = FaultySink(stall_for={"reader0@example.org": 60.0}), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections (the kernel does) and never answers
    a_while_ago = dt.datetime.now(UTC) - dt.timedelta(minutes=2)
    environ = daemon_environment(env, sqlite_url, port, smtp_pool_size=1, allow_private_sources="true", host_interval_s=0,
                                 ingest_cron=f"{a_while_ago.minute} * * * *", ingest_timezone="UTC")
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    import_due_subscribers(cli, sessions, tmp_path, 3)
    assert cli("sources", "add", f"http://127.0.0.1:{silent.getsockname()[1]}/feed.rss", "--no-check").code == 0

    def stuck() -> bool:
        with sessions() as session:
            return session.scalar(select(Delivery.status).join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                                  .where(Subscriber.email == "reader0@example.org")) == "sending"

    controller.start()
    daemon = DaemonProcess(environ, tmp_path, "daemon")
    try:
        wait_for(stuck, timeout_s=90, process=daemon)
        time.sleep(0.5)
        code, took = daemon.terminate()
    finally:
        daemon.close()
        controller.stop()
        silent.close()

    assert code == 0 and took < 10, f"exit {code} after {took:.1f} s"
    with sessions() as session:
        left = session.execute(select(Delivery.status, Delivery.leased_by).join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                               .where(Subscriber.email == "reader0@example.org")).one()
    engine.dispose()
    assert tuple(left) == ("sending", None)  # released: the next sender takes it as unknown, resent once with the same id
    log = daemon.log.read_text()
    assert "send: still running at the shutdown deadline, abandoned" in log
    assert "ingest: still running at the shutdown deadline, abandoned" in log and "work still running in a thread is abandoned" in log
    assert "Traceback" not in log


def test_sigkill_then_restart_every_due_subscriber_gets_exactly_one_digest(cli, env, sqlite_url, relay, tmp_path) -> None:
    sink, port = relay
    recipients, pool = 200, 4
    environ = daemon_environment(env, sqlite_url, port, smtp_rate_per_s=50)  # 200 take 4 s: the kill lands mid-run
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    import_due_subscribers(cli, sessions, tmp_path, recipients)

    def all_sent() -> bool:
        with sessions() as session:
            return session.scalar(select(Delivery.id).where(Delivery.status != "sent")) is None and \
                len(session.scalars(select(Delivery.id)).all()) == recipients

    first = DaemonProcess(environ, tmp_path, "first")
    try:
        wait_for(lambda: len(sink.received) >= 40, timeout_s=90, process=first)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
    finally:
        first.close()
    assert len(sink.received) < recipients, "the kill must land mid-run to mean anything"
    second = DaemonProcess(environ, tmp_path, "second")
    try:
        wait_for(all_sent, timeout_s=90, process=second)
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(30) == 0
    finally:
        second.close()

    per_recipient = Counter(recipient for recipient, _, _ in sink.received)
    assert len(per_recipient) == recipients, "nobody is left without their digest"
    with sessions() as session:
        rows = {email: (attempts, message_id) for email, attempts, message_id in session.execute(
            select(Subscriber.email, Delivery.attempts, Delivery.message_id).join(Subscriber, Subscriber.id == Delivery.subscriber_id))}
        beats = {b.id: b.stopped_at for b in session.scalars(select(DaemonHeartbeat))}
    engine.dispose()
    duplicated = {r: n for r, n in per_recipient.items() if n > 1}
    assert len(duplicated) <= pool, "at most one message per open connection was handed over unrecorded"
    for recipient, count in duplicated.items():  # handed over, then killed before the reply was recorded: resent once, same id
        assert count == 2 and rows[recipient][0] == 2
        assert {m for r, m, _ in sink.received if r == recipient} == {rows[recipient][1]}
    assert sorted(stopped is None for stopped in beats.values()) == [False, True]  # the killed one never stopped: status tells
    assert "Traceback" not in first.log.read_text() + second.log.read_text()
    assert any("newsletter.daemon: send: sent" in line for line in second.lines())


# --- deploy/ ---------------------------------------------------------------------------------------


def test_the_systemd_unit_and_the_crontab_run_real_commands_and_wait_for_the_promised_stop(cli) -> None:
    deploy = Path(__file__).parent.parent / "deploy"
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string((deploy / "newsletter-daemon.service").read_text())
    service = unit["Service"]
    program, *arguments = service["ExecStart"].split()
    assert Path(program).name == "newsletter" and arguments == ["daemon"] and service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 10  # the daemon exits within 10 s of SIGTERM; systemd must not SIGKILL it first
    crontab = [line.split() for line in (deploy / "crontab.example").read_text().splitlines() if line[:1].isdigit() or
               line.startswith("*/")]
    commands = {words[words.index(".venv/bin/newsletter") + 1] for words in crontab}
    assert commands == {"digest", "ingest"}
    for command in ("daemon", *commands):
        assert cli(command, "--help").code == 0
