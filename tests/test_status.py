"""`newsletter status`: what it reports from a real database, and when it says a person is needed (exit 1)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import DaemonHeartbeat, Delivery, Source, Subscriber, utcnow
from newsletter.ingest.run import EMPTY_LISTING
from newsletter.ingest.sources import ARXIV_RSS
from newsletter.status import DaemonState, read_status, span

WEDNESDAY = dt.datetime(2026, 12, 2, 15, 0)  # 10:00 in New York: arXiv's listing should carry papers
SATURDAY = dt.datetime(2026, 12, 5, 15, 0)


@pytest.fixture
def db(env, sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    env(database_url=sqlite_url)
    engine = make_engine(sqlite_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def add(sessions: sessionmaker[Session], *rows: Any) -> None:
    with sessions() as session:
        session.add_all(rows)
        session.commit()


def heartbeat(*, beat_ago: dt.timedelta, stopped: bool = False, jobs: dict | None = None, pid: int = 1) -> DaemonHeartbeat:
    beat_at = utcnow() - beat_ago
    return DaemonHeartbeat(id=f"host:{pid}", started_at=beat_at - dt.timedelta(hours=2), beat_at=beat_at,
                           stopped_at=beat_at if stopped else None, jobs=jobs or {})


def iso(moment: dt.datetime) -> str:
    return moment.replace(tzinfo=dt.UTC).isoformat()


def arxiv_source(**health: Any) -> Source:
    return Source(url=ARXIV_RSS + "cs.LG", kind="arxiv-rss", name="cs.LG updates on arXiv.org", **health)


def subscriber(email: str, **fields: Any) -> Subscriber:
    return Subscriber(email=email, **fields)


def status(cli, *args: str):
    result = cli("status", *args)
    return result, result.out.splitlines()[0] if result.out else ""


def test_a_fresh_install_is_ok_and_says_the_daemon_is_not_running(cli, db) -> None:
    result, first = status(cli)
    assert result.code == 0, result.out
    assert first == "status: OK"
    assert "daemon: not running" in result.out
    assert "sources: none configured" in result.out and "next sends: none scheduled" in result.out


def test_a_daemon_that_stopped_beating_without_stopping_needs_a_person(cli, db) -> None:
    add(db, heartbeat(beat_ago=dt.timedelta(minutes=10, seconds=5)))
    result, first = status(cli)
    assert result.code == 1
    assert first == "status: NEEDS ATTENTION — daemon silent for 10 min"
    assert "daemon: silent (host:1, up 2 h, last beat " in result.out and ", 10 min ago)" in result.out


def test_a_daemon_killed_a_moment_ago_is_silent_at_once_not_running_for_five_minutes(cli, db) -> None:
    import socket
    import subprocess
    import sys

    killed = subprocess.Popen([sys.executable, "-c", "pass"])  # a process of this host that no longer exists
    killed.wait()
    beat_at = utcnow() - dt.timedelta(seconds=20)
    add(db, DaemonHeartbeat(id=f"{socket.gethostname()[:60]}:{killed.pid}", started_at=beat_at - dt.timedelta(hours=1),
                            beat_at=beat_at, stopped_at=None, jobs={}))
    result, first = status(cli)
    assert result.code == 1, result.out
    assert first.startswith("status: NEEDS ATTENTION — daemon silent for ") and f"its process {socket.gethostname()[:60]}:" in first
    assert "daemon: silent" in result.out


def test_every_daemon_beating_now_is_listed_and_each_ones_faults_count(cli, db) -> None:
    refused = {"send": {"next_run_at": None, "last_run_at": iso(utcnow()), "last_seconds": 0.1,
                        "last_result": None, "last_error": "cannot log in to the SMTP relay: 535 authentication failed"}}
    add(db, heartbeat(beat_ago=dt.timedelta(seconds=5), pid=1),  # the latest beat: its jobs are fine
        heartbeat(beat_ago=dt.timedelta(seconds=30), pid=2, jobs=refused))
    result, first = status(cli)
    assert result.code == 1, result.out
    assert first == "status: NEEDS ATTENTION — the relay refuses the login (job send of host:2)"
    assert "daemon: running (host:1, up " in result.out and "daemon: also running (host:2, up " in result.out
    report = json.loads(cli("status", "--json").out)
    assert [other["id"] for other in report["daemon"]["others"]] == ["host:2"]


def test_a_daemon_that_stopped_cleanly_is_not_running_and_that_is_fine(cli, db) -> None:
    """Cron may run the digests instead; and a crash that a later clean start and stop followed is history."""
    add(db, heartbeat(beat_ago=dt.timedelta(days=2), pid=1),  # crashed two days ago
        heartbeat(beat_ago=dt.timedelta(hours=1), stopped=True, pid=2))
    result, first = status(cli)
    assert (result.code, first) == (0, "status: OK")
    assert "daemon: not running (host:2 stopped " in result.out and ", 60 min ago)" in result.out


@pytest.mark.parametrize("survivor_stopped", [False, True], ids=["the-other-runs", "the-other-stopped-cleanly-later"])
def test_a_daemon_that_died_beside_another_is_not_hidden_by_it(cli, db, survivor_stopped: bool) -> None:
    """Two daemons (two hosts, or two by mistake): one is killed. The survivor's beats, or its clean stop a
    minute later, said OK; the dead one was named nowhere. A start after a crash still makes it history."""
    add(db, heartbeat(beat_ago=dt.timedelta(minutes=1), stopped=survivor_stopped, pid=1),  # both started 2 h ago
        heartbeat(beat_ago=dt.timedelta(minutes=10), pid=2))
    result, first = status(cli)
    assert result.code == 1, result.out
    assert first.startswith("status: NEEDS ATTENTION — daemon host:2 stopped beating 10 min ago without a clean stop")
    report = json.loads(cli("status", "--json").out)
    assert [crashed["id"] for crashed in report["daemon"]["crashed"]] == ["host:2"]
    restarted = heartbeat(beat_ago=dt.timedelta(seconds=5), pid=3)
    restarted.started_at = utcnow() - dt.timedelta(minutes=2)  # started after host:2's last beat: a restart
    add(db, restarted)
    assert status(cli)[0].code == 0


@pytest.mark.parametrize(("started_ago", "beat_ago", "stopped", "state", "up"), [
    (dt.timedelta(seconds=42), dt.timedelta(seconds=28), False, DaemonState.RUNNING, "42 s"),  # it beats, so it is up now
    (dt.timedelta(minutes=42), dt.timedelta(minutes=30), False, DaemonState.SILENT, "12 min"),  # nothing says it lived on
    (dt.timedelta(minutes=42), dt.timedelta(minutes=30), True, DaemonState.NOT_RUNNING, None),
])
def test_a_daemon_is_up_until_now_while_it_beats(db, started_ago: dt.timedelta, beat_ago: dt.timedelta, stopped: bool,
                                                  state: DaemonState, up: str | None) -> None:
    beat_at = WEDNESDAY - beat_ago
    add(db, DaemonHeartbeat(id="host:1", started_at=WEDNESDAY - started_ago, beat_at=beat_at,
                            stopped_at=beat_at if stopped else None, jobs={}))
    with db() as session:
        report = read_status(session, now=WEDNESDAY)
    uptime = report.daemon.uptime(now=WEDNESDAY)
    assert report.daemon.state == state
    assert (uptime and span(uptime)) == up
    assert report.as_dict()["daemon"]["process"]["seconds_up"] == (uptime and uptime.total_seconds())


def test_a_beating_daemon_shows_the_next_run_of_each_job(cli, db) -> None:
    next_digest = (utcnow() + dt.timedelta(minutes=3)).replace(second=0, microsecond=0)
    next_ingest = (utcnow() + dt.timedelta(hours=5)).replace(second=0, microsecond=0)
    jobs = {"digest": {"next_run_at": iso(next_digest), "last_run_at": iso(utcnow() - dt.timedelta(minutes=2)),
                       "last_seconds": 1.25, "last_result": "sent 12", "last_error": None},
            "ingest": {"next_run_at": iso(next_ingest), "last_run_at": None, "last_seconds": None, "last_result": None,
                       "last_error": None}}
    add(db, heartbeat(beat_ago=dt.timedelta(days=1), pid=7),  # an old crash, superseded by the live process
        heartbeat(beat_ago=dt.timedelta(seconds=20), jobs=jobs, pid=8))
    result, first = status(cli)
    assert (result.code, first) == (0, "status: OK")
    assert "daemon: running (host:8, up 2 h, last beat " in result.out
    digest_row = next(line for line in result.out.splitlines() if "digest" in line)
    assert f"{next_digest:%H:%M}, in " in digest_row and "1.2 s" in digest_row and "sent 12" in digest_row
    ingest_row = next(line for line in result.out.splitlines() if "ingest" in line)
    assert f"{next_ingest:%H:%M}, in " in ingest_row


def test_a_source_failing_twice_in_a_row_needs_a_person_and_is_named(cli, db) -> None:
    add(db, arxiv_source(consecutive_failures=2, last_error="rss.arxiv.org: the server answered HTTP 503 4 times",
                         last_fetched_at=utcnow(), last_success_at=utcnow() - dt.timedelta(days=1), last_new=40))
    result, first = status(cli)
    assert result.code == 1
    assert first == "status: NEEDS ATTENTION — source arxiv:cs.LG failing (2 in a row)"
    assert "503" in result.out  # the reason, in the sources table


def test_a_single_failure_is_only_a_warning(cli, db) -> None:
    add(db, arxiv_source(consecutive_failures=1, last_error="timed out", last_fetched_at=utcnow()))
    result, first = status(cli)
    assert (result.code, first) == (0, "status: OK")
    assert "warning: source arxiv:cs.LG failed on its last fetch" in result.out


@pytest.mark.parametrize(("fetched", "warned"), [(WEDNESDAY, True), (SATURDAY, False)])
def test_an_empty_arxiv_listing_is_a_warning_on_weekdays_only(cli, db, fetched: dt.datetime, warned: bool) -> None:
    add(db, arxiv_source(last_fetched_at=fetched, last_success_at=fetched, last_new=0, last_note=EMPTY_LISTING))
    result, first = status(cli)
    assert (result.code, first) == (0, "status: OK")  # a holiday looks the same: never a page
    warning = "warning: source arxiv:cs.LG was empty on a weekday (Wed 2026-12-02 New York)"
    assert (warning in result.out) is warned, result.out


def test_a_relay_refusing_the_login_needs_a_person_other_job_errors_are_warnings(cli, db) -> None:
    refused = {"send": {"last_error": "SMTP relay smtp.example.org:587 refused the login (535 5.7.8 Authentication credentials "
                                      "invalid); check NEWSLETTER_SMTP_USERNAME and NEWSLETTER_SMTP_PASSWORD"}}  # the mailer's words
    add(db, heartbeat(beat_ago=dt.timedelta(seconds=5), jobs=refused))
    result, first = status(cli)
    assert result.code == 1 and first == "status: NEEDS ATTENTION — the relay refuses the login (job send)"
    assert "535 5.7.8" in result.out

    with db() as session:
        session.get(DaemonHeartbeat, "host:1").jobs = {"ingest": {"last_error": "the database is locked"}}
        session.commit()
    result, first = status(cli)
    assert (result.code, first) == (0, "status: OK")
    assert "warning: job ingest failed on its last run" in result.out


def test_deliveries_expired_in_the_last_day_need_a_person(cli, db) -> None:
    ada = subscriber("ada@example.org")
    add(db, ada)
    add(db, Delivery(subscriber_id=ada.id, issue_date=dt.date(2026, 1, 1), status="expired", message_id="<a@x>",
                     created_at=utcnow() - dt.timedelta(days=3), updated_at=utcnow() - dt.timedelta(days=2)))
    result, first = status(cli)
    assert (result.code, first) == (0, "status: OK"), "an expiry two days ago is no longer news"

    add(db, Delivery(subscriber_id=ada.id, issue_date=dt.date(2026, 1, 2), status="expired", message_id="<b@x>",
                     created_at=utcnow() - dt.timedelta(hours=25), updated_at=utcnow() - dt.timedelta(hours=1)))
    result, first = status(cli)
    assert result.code == 1
    assert first == "status: NEEDS ATTENTION — 1 delivery expired in the last 24 h (not sent within the retry window)"


def test_a_digest_the_relay_took_twice_without_confirming_needs_a_person(cli, db) -> None:
    """Two stalls in a row left a delivery "unknown" after its one retry, never sent again, and status said OK."""
    ada = subscriber("ada@example.org")
    add(db, ada)
    add(db, Delivery(subscriber_id=ada.id, issue_date=dt.date(2026, 1, 1), status="unknown", attempts=1, message_id="<a@x>"))
    result, first = status(cli)
    assert (result.code, first) == (0, "status: OK"), "unknown once: the next run retries it"
    add(db, Delivery(subscriber_id=ada.id, issue_date=dt.date(2026, 1, 2), status="unknown", attempts=2, message_id="<b@x>"))
    result, first = status(cli)
    assert result.code == 1 and first == ("status: NEEDS ATTENTION — 1 digest the relay took twice without confirming (a stall "
                                          "or a lost connection after the message): not sent again, it may have them; "
                                          "check the relay's log for their Message-IDs")


def test_a_delivery_left_sending_without_a_live_lease_is_a_warning(cli, db) -> None:
    """A daemon stopped during a relay stall left rows "sending" with no lease; status showed "sending 4" and nothing else."""
    ada = subscriber("ada@example.org")
    add(db, ada)
    add(db, Delivery(subscriber_id=ada.id, issue_date=dt.date(2026, 1, 1), status="sending", attempts=1, message_id="<a@x>",
                     leased_by="host:1:dead", lease_until=utcnow() + dt.timedelta(minutes=5)))
    result, _ = status(cli)
    assert "stopped mid-message" not in result.out, "a live lease: its sender is at work"
    add(db, Delivery(subscriber_id=ada.id, issue_date=dt.date(2026, 1, 2), status="sending", attempts=1, message_id="<b@x>"))
    result, _ = status(cli)
    assert ("warning: 1 delivery left \"sending\" by a sender that stopped mid-message: the next run records them unknown "
            "and sends them once more") in result.out


def test_the_json_report_on_both_databases(cli, env, database_url: str) -> None:
    env(database_url=database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    now = utcnow()
    jobs = {"digest": {"next_run_at": iso(now + dt.timedelta(minutes=1)), "last_run_at": iso(now), "last_seconds": 0.5,
                       "last_result": "sent 3", "last_error": None}}
    people = [subscriber(f"reader{i}@example.org", timezone="Asia/Tokyo", next_send_at=now + dt.timedelta(hours=6 - i))
              for i in range(6)]
    bounced = subscriber("gone@example.org", status="bounced", bounce_count=3, next_send_at=now)
    add(sessions, heartbeat(beat_ago=dt.timedelta(seconds=30), jobs=jobs),
        arxiv_source(consecutive_failures=3, last_error="HTTP 500", last_fetched_at=now, last_success_at=now - dt.timedelta(days=1),
                     last_new=12, last_note=None),
        *people, bounced, subscriber("flaky@example.org", bounce_count=1))
    reader = {s.email: s.id for s in people}
    rows = [("sent", 1, 0), ("sent", 2, 0), ("retry", 3, 0), ("pending", 4, 0), ("failed", 5, 0), ("sent", 0, 3)]
    add(sessions, *[Delivery(subscriber_id=reader[f"reader{who}@example.org"], issue_date=dt.date(2026, 1, day + 1), status=state,
                             message_id=f"<{who}.{day}@x>", created_at=now - dt.timedelta(hours=2 + 24 * day),
                             updated_at=now - dt.timedelta(hours=1)) for state, who, day in rows],
        Delivery(subscriber_id=reader["reader0@example.org"], issue_date=dt.date(2026, 2, 1), status="expired", message_id="<e@x>",
                 created_at=now - dt.timedelta(hours=30), updated_at=now - dt.timedelta(minutes=5)))
    engine.dispose()

    result = cli("status", "--json")
    assert result.code == 1
    report = json.loads(result.out)
    assert set(report) == {"ok", "now", "needs_a_person", "warnings", "daemon", "sources", "deliveries", "next_sends", "queue"}
    # No job queue on SQLite; on PostgreSQL (migrated with the scale extra) an empty one.
    assert report["queue"] in (None, {"queues": {}, "workers_seen": 0, "workers": []})
    assert report["ok"] is False
    assert report["needs_a_person"] == ["source arxiv:cs.LG failing (3 in a row)",
                                        "1 delivery expired in the last 24 h (not sent within the retry window)"]
    daemon = report["daemon"]
    assert daemon["state"] == "running" and daemon["process"]["id"] == "host:1"
    assert 25 <= daemon["process"]["seconds_since_beat"] <= 90
    [job] = daemon["jobs"]
    assert job == {"id": "digest", "next_run_at": (now + dt.timedelta(minutes=1)).isoformat(timespec="seconds") + "Z",
                   "last_run_at": now.isoformat(timespec="seconds") + "Z", "last_seconds": 0.5, "last_result": "sent 3",
                   "last_error": None}
    [source] = report["sources"]
    assert {k: source[k] for k in ("label", "kind", "consecutive_failures", "last_error", "last_new")} == {
        "label": "arxiv:cs.LG", "kind": "arxiv-rss", "consecutive_failures": 3, "last_error": "HTTP 500", "last_new": 12}
    deliveries = report["deliveries"]
    assert {k: v for k, v in deliveries["by_status"].items() if v} == {"sent": 2, "retry": 1, "pending": 1, "failed": 1}
    assert set(deliveries["by_status"]) >= {"pending", "sending", "sent", "retry", "failed", "expired", "unknown", "empty", "missed"}
    assert deliveries["retries_waiting"] == 1 and deliveries["expired_recently"] == 1
    assert deliveries["oldest_unsent_at"] == (now - dt.timedelta(hours=2)).isoformat(timespec="seconds") + "Z"
    assert report["warnings"] == ["a delivery has waited 2 h unsent"]
    assert (deliveries["bounced_subscribers"], deliveries["suppressed_subscribers"]) == (2, 1)
    # The soonest five of the active subscribers, with their own clock; the suppressed one is not sent to.
    assert [n["email"] for n in report["next_sends"]] == [f"reader{i}@example.org" for i in (5, 4, 3, 2, 1)]
    soonest = (now + dt.timedelta(hours=1)).replace(tzinfo=dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=9)))
    assert report["next_sends"][0]["local"] == f"{soonest:%Y-%m-%d %H:%M} Asia/Tokyo"


@pytest.mark.parametrize(("queue", "who"), [
    (None, "the next 'newsletter digest' sends them"),
    ({"queues": {}, "workers_seen": 1}, "the next 'newsletter worker' started on this host sends them"),
])
def test_deliveries_held_by_a_dead_sender_name_what_takes_them_over(queue, who) -> None:
    """With the job queue, 'digest' only plans and queues: sending it did nothing for them."""
    from newsletter.status import Daemon, Deliveries, Report, assess

    now = utcnow()
    deliveries = Deliveries(since=now, by_status={}, retries_waiting=0, oldest_unsent_at=None, expired_recently=0,
                            bounced_subscribers=0, suppressed_subscribers=0, held=340, held_by_dead=340)
    _, warnings = assess(Report(now, Daemon(DaemonState.NOT_RUNNING), (), deliveries, (), queue=queue))
    assert warnings == (f"340 deliveries held by a sender of this host that died: {who}",)
