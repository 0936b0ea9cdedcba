"""Three worker processes on the real local PostgreSQL send 5,000 digests to a real SMTP server (aiosmtpd, in
this process); one is SIGKILLed while it sends. Every subscriber gets their digest; the only messages
sent twice are those the dead worker had on an open connection, at most one per connection, each
resent with the same Message-ID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from newsletter.db import migrate
from newsletter.db.models import Delivery, DeliveryStatus, Subscriber
from newsletter.runtime import Runtime
from newsletter.scale.app import relay_queue
from newsletter.scale.enqueue import enqueue_due_batches
from tests.conftest import free_port
from tests.scale.seeding import SECRET, plan_everyone, reader, seed, settings_for
from tests.send.faults import FaultySink

REPO = Path(__file__).resolve().parents[2]
SUBSCRIBERS = 5_000
WORKERS = 3
POOL = 4  # connections per batch: the dead worker may leave this many messages unrecorded
LEASE_S = 5  # a dead worker's deliveries are free again this long after its last renewal
KILL_AFTER_MESSAGES = 600  # well into the run: every worker is busy sending by then
DEADLINE_S = 120  # the run takes ~30 s here; only a batch nobody takes over gets near this


@pytest.fixture
def relay() -> Iterator[FaultySink]:
    sink = FaultySink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    sink.port = controller.port  # type: ignore[attr-defined]
    yield sink
    controller.stop()


def start_worker(values: dict[str, object], log: Path) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    environ.update({f"NEWSLETTER_{k.upper()}": str(v) for k, v in values.items()})
    with log.open("wb") as stderr:  # a file, not a pipe: a full pipe would stall the worker
        return subprocess.Popen([sys.executable, "-m", "newsletter", "worker", "--concurrency", "1"], cwd=REPO,
                                env=environ, stdout=subprocess.DEVNULL, stderr=stderr)


def holders(runtime: Runtime) -> Counter[int]:
    """Deliveries held right now, by the pid of the process holding them (``Runtime.holder`` is host:pid:random)."""
    with runtime.sessions() as session:
        held = session.scalars(select(Delivery.leased_by).where(Delivery.leased_by.is_not(None))).all()
    return Counter(int(holder.split(":")[1]) for holder in held if holder)


def unfinished(runtime: Runtime) -> int:
    with runtime.sessions() as session:
        return len(session.scalars(select(Delivery.id).where(Delivery.status != DeliveryStatus.SENT)).all())


@pytest.mark.postgres
def test_three_workers_one_killed_mid_run_every_subscriber_gets_one_digest(postgres_url: str, relay: FaultySink,
                                                                            tmp_path: Path) -> None:
    values: dict[str, object] = dict(database_url=postgres_url, secret_key=SECRET, from_address="digest@example.org",
                                     send_empty_digest="true", email_backend="smtp", smtp_host="127.0.0.1",
                                     smtp_port=relay.port, smtp_security="none", smtp_pool_size=POOL,  # type: ignore[attr-defined]
                                     lease_s=LEASE_S, log_level="WARNING")
    settings = settings_for(postgres_url, **{k: v for k, v in values.items() if k not in ("database_url", "secret_key", "from_address",
                                                                                            "send_empty_digest")})
    origin = time.monotonic()
    runtime = Runtime.build(settings)
    migrate.upgrade(runtime.engine)
    seed(runtime, SUBSCRIBERS)
    planned = plan_everyone(runtime)
    assert len(planned) == SUBSCRIBERS
    with runtime.sessions() as session:
        jobs = enqueue_due_batches(session, deliveries=planned, queue=relay_queue(settings))
        session.commit()
    assert jobs == SUBSCRIBERS // 500

    seeded_s = time.monotonic() - origin
    workers = [start_worker(values, tmp_path / f"worker{n}.log") for n in range(WORKERS)]
    pids = {w.pid: w for w in workers}
    started, victim = time.monotonic(), None
    try:
        while len(relay.received) < KILL_AFTER_MESSAGES and time.monotonic() - started < DEADLINE_S:
            time.sleep(0.01)
        while victim is None and time.monotonic() - started < DEADLINE_S:
            busy = [pid for pid, _ in holders(runtime).most_common() if pid in pids]
            if busy:
                victim = pids[busy[0]]
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)
        assert victim is not None, "no worker was sending: the run ended before the kill"
        killed_at = len(relay.received)
        while unfinished(runtime) and time.monotonic() - started < DEADLINE_S:
            time.sleep(0.2)
        seconds = time.monotonic() - started
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
    logs = {n: (tmp_path / f"worker{n}.log").read_text() for n in range(WORKERS)}
    survivors = [n for n, w in enumerate(workers) if w is not victim]
    for n in survivors:
        assert "Traceback" not in logs[n], f"worker {n}:\n{logs[n][-3000:]}"
        assert workers[n].returncode == 0, f"worker {n} exited {workers[n].returncode} after SIGTERM:\n{logs[n][-3000:]}"
    assert unfinished(runtime) == 0, f"deliveries still unsent after {DEADLINE_S} s: the dead worker's batch was not taken over"

    per_recipient = relay.per_recipient()
    assert set(per_recipient) == {reader(i) for i in range(SUBSCRIBERS)}, "every subscriber got their digest"
    twice = {r: n for r, n in per_recipient.items() if n > 1}
    assert all(n == 2 for n in twice.values()) and len(twice) <= POOL, \
        f"only what the dead worker had on its {POOL} connections is resent, once: {twice}"
    ids: dict[str, set[str]] = defaultdict(set)
    for recipient, message_id, _ in relay.received:
        ids[recipient].add(message_id)
    assert all(len(found) == 1 for found in ids.values()), "a resend carries the same Message-ID"

    with runtime.sessions() as session:
        rows = session.execute(select(Subscriber.email, Delivery.attempts, Delivery.message_id, Delivery.leased_by)
                               .join(Subscriber, Subscriber.id == Delivery.subscriber_id)).all()
    assert {email: message_id for email, _, message_id, _ in rows} == {r: next(iter(m)) for r, m in ids.items()}
    assert set(twice) <= {email for email, attempts, _, _ in rows if attempts == 2}, "a resend is the one retry of an unknown outcome"
    survivors_held = [holder for *_, holder in rows if holder is not None and int(holder.split(":")[1]) != victim.pid]
    assert not survivors_held, "the live workers gave back every lease (the dead one's lapsed)"
    runtime.close()
    print(f"\nseeded and planned in {seeded_s:.1f} s; {SUBSCRIBERS:,} digests by {WORKERS} workers in {seconds:.1f} s; "
          f"worker {victim.pid} killed after {killed_at:,} messages; resent {len(twice)}")
