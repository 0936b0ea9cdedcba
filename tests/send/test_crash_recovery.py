"""SIGKILL the sending process at random points of a 5,000-recipient run, restart it each time:
every recipient ends up with exactly one message, except that a delivery whose outcome was unknown
(handed over, then killed before the reply was recorded) may arrive twice, at most one per open
connection per kill."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from newsletter.cli import print_digest_summary
from newsletter.db import ledger
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, Subscriber
from newsletter.pipeline import DigestRun
from newsletter.plan import plan_due
from newsletter.runtime import Runtime, holder_is_dead, new_holder
from newsletter.settings import Settings
from tests.conftest import FIXTURES, fixed_send_moment, free_port
from tests.send.faults import FaultySink
from tests.send.test_no_hang import add_readers, digest_disturbed, environment, relay, run_cli, statuses  # noqa: F401  (relay: a fixture)

RECIPIENTS = 5000
KILLS = 10
POOL = 4
LEASE_S = 5  # a killed sender's claim lapses after this (the setting's minimum)


def test_sigkill_at_random_points_then_restart_delivers_each_message_once(cli, env, sqlite_url, tmp_path: Path) -> None:
    sink = FaultySink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings = dict(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij",
                        from_address="digest@example.org", email_backend="smtp",
                        smtp_host="127.0.0.1", smtp_port=port, smtp_security="none", smtp_pool_size=POOL, retry_base_s=0,
                        lease_s=LEASE_S)
        env(**settings)
        rows = "".join(f"reader{i}@example.org,diffusion models;language models,,,,,,,,2\n" for i in range(RECIPIENTS))
        (tmp_path / "list.csv").write_text("email,topics,exclude,categories,authors,describe,timezone,hour,frequency,max_papers\n" + rows)
        assert cli("subscribers", "import", str(tmp_path / "list.csv")).code == 0
        assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0

        environ = {**os.environ, **{f"NEWSLETTER_{k.upper()}": str(v) for k, v in settings.items()}}
        command = [sys.executable, "-m", "newsletter", "digest", "--allow-future", "--at", fixed_send_moment(sqlite_url)]
        rng = random.Random(20261128)
        kills_landed = 0
        for _ in range(KILLS):
            before = len(sink.received)
            process = subprocess.Popen(command, env=environ, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            # Kill at a random moment of sending: after start-up and planning, once messages flow.
            deadline = time.monotonic() + 60
            target = before + rng.randint(50, 500)
            while len(sink.received) < target and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills_landed += 1
            process.wait(30)
        assert kills_landed >= KILLS - 2, "most kills must land mid-run to mean anything"

        time.sleep(LEASE_S + 1)  # the killed runs' claims lapse: their deliveries are anybody's again
        for _ in range(3):  # finish: the last run sends the rest, a further one retries unknown outcomes
            finish = subprocess.run(command, env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=300)
            assert finish.returncode == 0, finish.stderr
    finally:
        controller.stop()

    per_recipient = Counter(r for r, _, _ in sink.received)
    assert len(per_recipient) == RECIPIENTS, "nobody is left without their digest"
    duplicated = {r: n for r, n in per_recipient.items() if n > 1}
    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as session:
        rows = {email: (status, attempts, message_id) for status, attempts, message_id, email in session.execute(
            select(Delivery.status, Delivery.attempts, Delivery.message_id, Subscriber.email)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id))}
    engine.dispose()
    assert {status for status, _, _ in rows.values()} == {"sent"}
    for recipient, count in duplicated.items():
        status, attempts, message_id = rows[recipient]
        assert count == 2 and attempts == 2, f"{recipient}: {count} copies after {attempts} attempts"
        assert {m for r, m, _ in sink.received if r == recipient} == {message_id}, "a resend carries the same Message-ID"
    assert len(duplicated) <= kills_landed * POOL
    print(f"\n{kills_landed} kills, {len(duplicated)} duplicates (bound {kills_landed * POOL}), {len(sink.received)} messages")


@pytest.mark.parametrize("render_ahead_from", [0, 10_000], ids=["rendering ahead", "in one process"])
def test_a_run_right_after_a_sigkill_sends_what_the_killed_run_held_at_once(
        cli, env, sqlite_url, tmp_path, render_ahead_from, relay) -> None:  # noqa: F811  (the fixture imported above)
    """The killed run's leases would keep its deliveries from anyone for ``lease_s`` (5 minutes by default):
    a user re-running ``digest`` at once got "nothing to send". Its process is gone, so its leases end now."""
    settings = dict(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij",
                    from_address="digest@example.org", email_backend="smtp", smtp_host="127.0.0.1",
                    smtp_port=relay.port, smtp_security="none", smtp_pool_size=POOL, smtp_rate_per_s=40,
                    render_ahead_from=render_ahead_from)  # the default lease (300 s) all along
    env(**settings)
    readers = add_readers(cli, tmp_path, 160)  # 4 s at 40 a second: the kill lands mid-run
    returncode, stderr = digest_disturbed(environment(**settings), tmp_path, sqlite_url, relay, after=20,
                                          disturb=lambda process: process.send_signal(signal.SIGKILL))
    assert returncode == -signal.SIGKILL
    # The run's own processes leave nothing a cleaner has to warn about (multiprocessing's resource tracker
    # printed "There appear to be N leaked semaphore objects" into the log of a killed sender).
    assert "leaked" not in stderr, stderr
    left = Counter(statuses(sqlite_url).values())
    assert left["pending"] + left["sending"] > 0, left
    # What it held (claimed, not sent): a big run also leaves digests it planned and had not claimed yet.
    held = held_by_anyone(sqlite_url)
    assert held > 0

    again = run_cli(environment(**settings), tmp_path, "digest")
    assert again.returncode == 0, again.stderr
    assert f"taken over: {held:,} deliveries of a sender on this host that died" in again.stdout
    # Everyone was planned by the killed run: not "0 subscribers due, scored against 0 candidate papers" above "sent 150".
    assert "nobody newly due; sending what earlier runs planned" in again.stdout and "0 candidate papers" not in again.stdout
    assert "held by another sender" not in again.stdout
    per_recipient = relay.per_recipient()
    assert set(per_recipient) == set(readers), "everyone's digest went out in the run right after the kill"
    twice = [r for r, n in per_recipient.items() if n > 1]
    assert len(twice) <= left["sending"] <= POOL and max(per_recipient.values()) <= 2, "only those it was handing over, once more"
    assert set(statuses(sqlite_url).values()) == {"sent"}


def held_by_anyone(url: str) -> int:
    """Unsent deliveries under a lease."""
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        held = len(session.scalars(select(Delivery.id).where(Delivery.leased_by.is_not(None),
                                                             Delivery.status.in_(("pending", "sending")))).all())
    engine.dispose()
    return held


def test_a_run_beside_a_live_sender_leaves_its_deliveries_and_says_who_holds_them(
        cli, env, sqlite_url, tmp_path, relay, capsys) -> None:  # noqa: F811  (the fixture imported above)
    settings = dict(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij",
                    from_address="digest@example.org", email_backend="smtp", smtp_host="127.0.0.1",
                    smtp_port=relay.port, smtp_security="none")
    env(**settings)
    readers = add_readers(cli, tmp_path, 5)
    runtime = Runtime.build(Settings(**settings, _env_file=None))
    plan_due(runtime, now=dt.datetime.fromisoformat(fixed_send_moment(sqlite_url)))  # planned, nothing sent yet
    runtime.engine.dispose()
    assert set(statuses(sqlite_url).values()) == {"pending"}
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # a sender of this host, alive
    try:
        engine = make_engine(sqlite_url)
        with make_sessionmaker(engine)() as session:  # two of them held by the live process, as its claim would
            held = list(session.scalars(select(Delivery).order_by(Delivery.id).limit(2)))
            for delivery in held:
                delivery.leased_by = f"{socket.gethostname()[:60]}:{live.pid}:0badf00d"
                delivery.lease_until = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=5)
            session.commit()
        engine.dispose()

        second = run_cli(environment(**settings), tmp_path, "digest")
        assert second.returncode == 0, second.stderr
        assert "sent 3" in second.stdout and "taken over" not in second.stdout
        assert "held by another sender: 2 deliveries, its lease running until" in second.stdout
        assert len(relay.per_recipient()) == 3
        status = run_cli(environment(**settings), tmp_path, "status")
        assert "held by senders now: 2 deliveries\n" in status.stdout and "died" not in status.stdout, status.stdout
    finally:
        live.kill()
        live.wait()
    # Had it died while a run went on, that run would have ended with its two held by nobody alive: say so.
    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as session:
        count, _until, dead = ledger.held_elsewhere(session, now=dt.datetime.now(dt.UTC).replace(tzinfo=None), holder="x:1:a",
                                                    is_dead=holder_is_dead)
    engine.dispose()
    assert (count, dead) == (2, 2)
    capsys.readouterr()
    print_digest_summary(DigestRun(dt.datetime.now(dt.UTC), picks=[], held_elsewhere=2, held_by_dead=2), seconds=1.0, dry_run=False)
    summary = capsys.readouterr().out
    assert "held by a sender of this host that died during this run: 2 deliveries; run 'newsletter digest' again" in summary
    assert "held by another sender" not in summary

    status = run_cli(environment(**settings), tmp_path, "status")  # a warning, not a page: the next run sends them
    assert status.returncode == 0
    assert "held by senders now: 2 deliveries, 2 of them by a sender of this host that died" in status.stdout
    assert "2 deliveries held by a sender of this host that died: the next 'newsletter digest' sends them" in status.stdout

    third = run_cli(environment(**settings), tmp_path, "digest")  # it is gone now: its two go at once
    assert third.returncode == 0, third.stderr
    assert "taken over: 2 deliveries" in third.stdout
    assert relay.per_recipient() == Counter(dict.fromkeys(readers, 1))


def test_only_a_process_of_this_host_that_is_certainly_gone_counts_as_a_dead_holder() -> None:
    host = socket.gethostname()[:60]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process (until reused, when it counts as alive: its lease runs its course)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert holder_is_dead(f"{host}:{gone.pid}:ab12cd34")
        assert not holder_is_dead(f"{host}:{alive.pid}:ab12cd34")
        assert not holder_is_dead(new_holder()), "this very process"
        assert not holder_is_dead(f"another-host:{gone.pid}:ab12cd34"), "another host's processes cannot be looked at"
        for odd in ("", "worker-7", f"{host}:", f"{host}:abc:1", f"{host}:99999999999999999999:1"):
            assert not holder_is_dead(odd), odd
    finally:
        alive.kill()
        alive.wait()


def test_a_restarted_daemon_sees_what_a_dead_sender_held_as_something_to_send(cli, env, sqlite_url, tmp_path) -> None:
    """The daemon looks before it sends (``anything_to_send``): it only saw free leases, so after a SIGKILL and a
    restart it waited out the dead run's leases (5 minutes) while ``digest`` sent them at once."""
    from newsletter.db import ledger

    settings = dict(database_url=sqlite_url, secret_key="test-secret-key-0123456789abcdefghij", from_address="digest@example.org")
    env(**settings)
    add_readers(cli, tmp_path, 3)
    runtime = Runtime.build(Settings(**settings, _env_file=None))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        plan_due(runtime, now=dt.datetime.fromisoformat(fixed_send_moment(sqlite_url)))
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        with runtime.sessions() as session:
            ledger.claim_due(session, now=now, holder=f"{socket.gethostname()[:60]}:{gone.pid}:0badf00d",
                             lease=dt.timedelta(minutes=5), limit=10)  # as the killed run's claim left them
            session.commit()
            assert not ledger.anything_to_send(session, now=now), "nothing free: a live sender would be waited for"
            assert ledger.anything_to_send(session, now=now, is_dead=holder_is_dead), "its holder is gone: send them now"
    finally:
        runtime.close()
