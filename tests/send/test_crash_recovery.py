"""SIGKILL the sending process at random points of a 5,000-recipient run, restart it each time:
every recipient ends up with exactly one message, except that a delivery whose outcome was unknown
(handed over, then killed before the reply was recorded) may arrive twice, at most one per open
connection per kill."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from aiosmtpd.controller import Controller
from sqlalchemy import select

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, Subscriber
from tests.conftest import FIXTURES, fixed_send_moment, free_port
from tests.send.faults import FaultySink

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
        command = [sys.executable, "-m", "newsletter", "digest", "--at", fixed_send_moment(sqlite_url)]
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
