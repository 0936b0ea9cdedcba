"""Benchmark: a simulated day of the scheduler, and the cost of a tick that finds nothing due.

    python bench/daemon.py [--subscribers 20000] [--idle-subscribers 100000]

1. ``--subscribers`` readers spread over 24 time zones (UTC−10 to UTC+13), each at a local hour
   between 06:00 and 09:59; the sample feed's papers first seen the evening before. Then one
   simulated UTC day: ``newsletter digest --at`` (a subprocess: the real command, start-up
   included) at the top of every hour against an SMTP sink in another process. Prints the digests sent each hour and
   the command's time. Every subscriber must get exactly one digest that day.
2. ``--idle-subscribers`` readers whose next send is hours away: the time of a tick that finds
   nothing due (plan: the indexed query for due subscribers; send: the claim query), median of
   25 in-process runs. Goal (issue 9): under 50 ms at 100,000 subscribers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select, update

sys.path.insert(0, str(Path(__file__).parent))
from send import TOPICS, start_sink  # noqa: E402 - the sibling benchmark's sink and topics

from newsletter.db import migrate, repo  # noqa: E402
from newsletter.db.engine import make_engine, make_sessionmaker  # noqa: E402
from newsletter.db.models import Delivery, Paper, Subscriber  # noqa: E402
from newsletter.deliver import send_due  # noqa: E402
from newsletter.ingest.fetch import Fetcher, make_client  # noqa: E402
from newsletter.ingest.run import ingest_sources  # noqa: E402
from newsletter.ingest.sources import SourceSpec  # noqa: E402
from newsletter.paths import PACKAGE_DIR  # noqa: E402
from newsletter.plan import plan_due  # noqa: E402
from newsletter.records import NewSubscriber, Preferences  # noqa: E402
from newsletter.runtime import Runtime  # noqa: E402
from newsletter.send.mailer import RecordingMailer  # noqa: E402
from newsletter.settings import Settings  # noqa: E402

ZONES = ["Pacific/Honolulu", "America/Anchorage", "America/Los_Angeles", "America/Denver", "America/Chicago",
         "America/New_York", "America/Halifax", "America/Sao_Paulo", "Atlantic/South_Georgia", "Atlantic/Azores", "UTC",
         "Europe/Berlin", "Europe/Athens", "Europe/Moscow", "Asia/Dubai", "Asia/Karachi", "Asia/Kolkata", "Asia/Dhaka",
         "Asia/Bangkok", "Asia/Shanghai", "Asia/Tokyo", "Australia/Sydney", "Pacific/Noumea", "Pacific/Auckland"]
SECRET = "bench-secret-key-0123456789abcdefghij"


def make_database(folder: str, count: int, *, port: int, day: dt.date) -> Settings:
    settings = Settings(database_url=f"sqlite:///{folder}/daemon.db", email_backend="smtp", smtp_host="127.0.0.1",
                        smtp_port=port, smtp_security="none", secret_key=SECRET, from_address="digest@example.org",
                        _env_file=None)
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    with make_client(timeout_s=5) as client:
        ingest_sources([SourceSpec(str(PACKAGE_DIR / "demo_data" / "arxiv_sample.rss"), "arxiv-rss")],
                       sessions=sessions, fetcher=Fetcher(client=client, max_bytes=50_000_000), now=dt.datetime(2026, 1, 1))
    rng = random.Random(9)
    people = [NewSubscriber(email=f"reader{i}@lab{i % 97}.example.org", timezone=ZONES[i % len(ZONES)],
                            send_hour=rng.randint(6, 9), send_minute=rng.choice((0, 15, 30, 45)), max_papers=5,
                            preferences=Preferences.from_lists(topics=rng.sample(TOPICS, rng.randint(1, 3))))
              for i in range(count)]
    start = dt.datetime.combine(day, dt.time())  # the simulated day: 24 hours from 00:00 UTC
    with sessions() as session:
        repo.import_subscribers(session, subscribers=people)
        # The day's schedule as the daemon would hold it: each next send moment from the day's start.
        for subscriber in session.scalars(select(Subscriber)):
            subscriber.next_send_at = repo.first_send_at(repo.schedule_of(subscriber), now=start)
        session.execute(update(Paper).values(first_seen_at=start - dt.timedelta(hours=2)))
        session.commit()
    engine.dispose()
    return settings


def simulated_day(settings: Settings, folder: str, day: dt.date) -> tuple[Counter[int], list[float]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update({f"NEWSLETTER_{k.upper()}": str(v) for k, v in settings.model_dump().items()
                if v is not None and k in ("database_url", "email_backend", "smtp_host", "smtp_port", "smtp_security",
                                            "secret_key", "from_address")})
    command = str(Path(sys.executable).with_name("newsletter"))
    seconds = []
    first = dt.datetime.combine(day, dt.time(), dt.UTC)
    import subprocess

    for hour in range(24):  # every daily subscriber's next send after 00:00 UTC falls within these 24 hours
        at = first + dt.timedelta(hours=hour + 1)
        started = time.perf_counter()
        done = subprocess.run([command, "digest", "--allow-future", "--at", at.isoformat()], env=env, cwd=folder, capture_output=True,
                              text=True, timeout=1800)
        seconds.append(time.perf_counter() - started)
        assert done.returncode == 0, done.stderr
    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        rows = session.execute(select(Delivery.send_at, Delivery.status, Delivery.subscriber_id)).all()
    engine.dispose()
    per_subscriber = Counter(subscriber for _, status, subscriber in rows if status == "sent")
    statuses = Counter(status for _, status, _ in rows)
    assert set(per_subscriber.values()) == {1}, f"exactly one digest each: {Counter(per_subscriber.values())} {statuses}"
    per_hour = Counter(int((send_at.replace(tzinfo=dt.UTC) - first).total_seconds() // 3600) for send_at, status, _ in rows
                       if status == "sent")
    return per_hour, seconds


def idle_tick(folder: str, count: int) -> tuple[float, float]:
    settings = Settings(database_url=f"sqlite:///{folder}/idle.db", secret_key=SECRET, from_address="digest@example.org",
                        _env_file=None)
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    people = [NewSubscriber(email=f"idle{i}@example.org", timezone=ZONES[i % len(ZONES)], send_hour=7) for i in range(count)]
    now = dt.datetime.now(dt.UTC)
    with sessions() as session:
        repo.import_subscribers(session, subscribers=people)
        session.execute(update(Subscriber).values(next_send_at=now.replace(tzinfo=None) + dt.timedelta(hours=6)))
        session.commit()
        assert session.scalar(select(func.count()).select_from(Subscriber)) == count
    runtime = Runtime.build(settings, engine=engine, connect=RecordingMailer)
    plans, sends = [], []
    for _ in range(25):
        started = time.perf_counter()
        report = plan_due(runtime, now=now)
        plans.append(time.perf_counter() - started)
        assert report.due == 0
        started = time.perf_counter()
        delivered = asyncio.run(send_due(runtime, mailers=[RecordingMailer()]))
        sends.append(time.perf_counter() - started)
        assert not delivered.outcomes
    runtime.close()
    return statistics.median(plans), statistics.median(sends)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--idle-subscribers", type=int, default=100_000)
    args = parser.parse_args()
    day = dt.date(2026, 12, 2)
    sink, port = start_sink()
    try:
        with tempfile.TemporaryDirectory() as folder:
            settings = make_database(folder, args.subscribers, port=port, day=day)
            per_hour, seconds = simulated_day(settings, folder, day)
            plan_s, send_s = idle_tick(folder, args.idle_subscribers)
    finally:
        sink.terminate()
    print(f"simulated day {day}: {args.subscribers:,} subscribers in {len(ZONES)} time zones, `newsletter digest --at` hourly")
    print("run at (UTC)   digests sent   command time")
    for hour, took in enumerate(seconds):
        print(f"  {hour + 1:02d}:00        {per_hour.get(hour, 0):>9,}   {took:8.2f} s")
    print(f"total sent: {sum(per_hour.values()):,} (each subscriber exactly once)")
    print(f"idle tick at {args.idle_subscribers:,} subscribers (median of 25): plan {plan_s * 1000:.1f} ms, "
          f"send {send_s * 1000:.1f} ms, together {(plan_s + send_s) * 1000:.1f} ms (goal < 50 ms)")


if __name__ == "__main__":
    main()
