"""Benchmark: digests for N subscribers rendered and sent to an aiosmtpd sink in another process.

    python bench/send.py [--subscribers 20000] [--pool 4]
    python bench/send.py --command [--subscribers 5000] [--repeats 3]

Prints emails/s for: rendering + MIME alone; sending alone (pre-built messages through the pool,
the rate limiter and the ledger); end to end (render + MIME + pool + ledger, from the recorded picks;
scoring and recording the picks is timed on its own line); a bare pooled aiosmtplib loop sending
pre-built messages to the same sink, with no database (the practical ceiling); and the naive path
(the whole template rendered per subscriber, CSS inlined per message, ``EmailMessage``, a new
connection per message). Then peak RSS. Targets (issue 5): rendering + MIME >= 2,000 emails/s;
end to end >= 70 % of the bare loop; 100,000 subscribers scored, rendered and sent under 1 GB.

``--command`` measures what the user runs instead: ``newsletter digest`` as a subprocess (start-up,
scoring, recording, rendering, sending and printing included) against the same sink, then the very
messages it sent (written out again by the file backend) replayed by the bare pooled loop. Target
(issue 8): the command at >= 70 % of the replay's rate. Medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import css_inline
from sqlalchemy import func, select, update

import newsletter.deliver as deliver_module
from newsletter.db import ledger, migrate, repo
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, DeliveryItem, Subscriber, utcnow
from newsletter.ingest.fetch import Fetcher, make_client
from newsletter.ingest.run import ingest_sources
from newsletter.ingest.sources import SourceSpec
from newsletter.paths import PACKAGE_DIR
from newsletter.plan import embed_new_papers, plan_due
from newsletter.records import NewSubscriber, Preferences
from newsletter.render.digest import make_environment, short_authors, tldr
from newsletter.runtime import Runtime
from newsletter.send.mailer import SmtpMailer
from newsletter.settings import Settings

TOPICS = ["diffusion models", "large language models", "reinforcement learning", "graph neural networks",
          "retrieval-augmented generation", "speech recognition", "robot manipulation", "recommender systems",
          "time series forecasting", "code generation", "federated learning", "image segmentation"]
SAMPLE_MESSAGES = 2000  # pre-built messages the bare loop cycles through (keeps memory flat)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_sink() -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(Path(__file__).parent / "smtp_sink.py"), str(port)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process, port


def due_moment(sessions) -> dt.datetime:
    """An instant when every subscriber's next digest is due (they all send at 07:00 UTC here)."""
    with sessions() as session:
        latest = session.scalar(select(func.max(Subscriber.next_send_at)))
    return (latest + dt.timedelta(minutes=1)).replace(tzinfo=dt.UTC)


def setup(folder: str, subscribers: int, port: int, pool: int) -> tuple[Settings, object]:
    settings = Settings(database_url=f"sqlite:///{folder}/bench.db", email_backend="smtp", smtp_host="127.0.0.1",
                        smtp_port=port, smtp_security="none", smtp_pool_size=pool, secret_key="bench-secret-key-0123456789abcdefghij",
                        from_address="digest@example.org", _env_file=None)
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    with make_client(timeout_s=5) as client:
        ingest_sources([SourceSpec(str(PACKAGE_DIR / "demo_data" / "arxiv_sample.rss"), "arxiv-rss"),
                        SourceSpec(str(PACKAGE_DIR / "demo_data" / "hf_daily_sample.json"), "hf-daily")],
                       sessions=sessions, fetcher=Fetcher(client=client, max_bytes=50_000_000), now=utcnow())
    # As `newsletter ingest` does: the new papers' sentence vectors are stored once, at ingest, so the
    # runs measure sending, not a one-off (embedding these 211 papers is ~25 s of CPU here).
    embed_new_papers(Runtime.build(settings), now=utcnow())
    rng = random.Random(5)
    people = [NewSubscriber(email=f"reader{i}@lab{i % 211}.example.org", max_papers=rng.randint(5, 10),
                            preferences=Preferences.from_lists(topics=rng.sample(TOPICS, rng.randint(1, 3))))
              for i in range(subscribers)]
    with sessions() as session:
        repo.import_subscribers(session, subscribers=people)
        session.commit()
    return settings, sessions


def reset(sessions) -> None:
    with sessions() as session:
        session.execute(update(Delivery).where(Delivery.status.in_(("sent", "sending")))
                        .values(status="pending", attempts=0, sent_at=None, leased_by=None, lease_until=None))
        session.commit()


async def collect(runtime: Runtime, keep: int, stop_after: int | None = None) -> tuple[list, float]:
    """Claim and render + MIME due deliveries (no sending): all, or ``stop_after``; keeps the first ``keep``."""
    kept, started = [], time.perf_counter()
    builder = deliver_module.BatchBuilder(runtime)  # a renderer built for one batch serves the next ones
    with runtime.sessions() as session:
        while batch := builder.claim_and_build(session, now=dt.datetime.now(dt.UTC), subscriber_id=None, delivery_ids=None):
            kept += batch[: max(keep - len(kept), 0)]
            if stop_after is not None and len(kept) >= stop_after:
                break
        elapsed = time.perf_counter() - started
        ledger.release_leases(session, holder=runtime.holder)
        session.commit()
    return kept, elapsed


async def bare_loop(port: int, pool: int, messages: list[bytes], count: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)

    async def worker() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        while not queue.empty():
            n = queue.get_nowait()
            await smtp.sendmail("digest@example.org", [f"r{n}@example.org"], messages[n % len(messages)])
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(pool)))
    return time.perf_counter() - started


NAIVE_TEMPLATE = """<html><head><style>{{ css }}</style></head><body><h1>{{ list_name }}</h1>
{% for pick in picks %}<table><tr><td class="card"><a class="paper-title" href="{{ pick.paper.abs_url }}">{{ pick.paper.title }}</a>
<div class="meta">{{ authors(pick.paper.authors) }}</div><p class="tldr">{{ tldr(pick.paper) }}</p>
{% for r in pick.reasons %}<span class="reason">{{ r }}</span>{% endfor %}</td></tr></table>{% endfor %}
<a href="{{ unsubscribe }}">Unsubscribe</a></body></html>"""


async def naive(port: int, runtime: Runtime, count: int) -> float:
    """The straightforward way: whole template per subscriber, CSS inlined per message, EmailMessage, a connection each."""
    env = make_environment()
    template = env.from_string(NAIVE_TEMPLATE)
    css = (Path(env.loader.searchpath[0]) / "email" / "digest.css").read_text()  # type: ignore[union-attr]
    jobs, _ = await collect(runtime, keep=count, stop_after=count)
    with runtime.sessions() as session:
        items = ledger.delivery_items(session, delivery_ids=[j.delivery_id for j in jobs])
        papers = repo.papers_by_id(session, ids={p for rows in items.values() for p, _, _ in rows})
    started = time.perf_counter()
    for job in jobs:
        picks = [type("Pick", (), {"paper": papers[p], "reasons": r}) for p, _, r in items[job.delivery_id]]
        html = css_inline.inline(template.render(css=css, list_name="Paper digest", picks=picks, authors=short_authors,
                                                 tldr=tldr, unsubscribe="https://example.org/u"))
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "digest@example.org", job.envelope.recipient, "Digest"
        message.set_content("text version")
        message.add_alternative(html, subtype="html")
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        await smtp.send_message(message)
        await smtp.quit()
    return time.perf_counter() - started


async def main_async(args: argparse.Namespace) -> None:
    sink, port = start_sink()
    try:
        with tempfile.TemporaryDirectory() as folder:
            settings, sessions = setup(folder, args.subscribers, port, args.pool)
            runtime = Runtime.build(settings)
            started = time.perf_counter()
            plan = plan_due(runtime, now=due_moment(sessions))
            plan_s = time.perf_counter() - started
            total = plan.due - plan.empty
            sample, render_s = await collect(runtime, keep=SAMPLE_MESSAGES)
            messages = [job.envelope.data for job in sample]

            # Sending alone: pre-built messages through the pool, limiter and ledger.
            async def prebuilt(runtime, session, **_k):
                n = 0
                while batch := ledger.claim_due(session, now=utcnow(), holder=runtime.holder, lease=dt.timedelta(minutes=5),
                                                limit=500):
                    built = []
                    for delivery in batch:
                        n += 1
                        built.append(type(sample[0])(delivery.id, delivery.subscriber_id,
                                                     sample[0].envelope.__class__("digest@example.org", delivery.email,
                                                                                  delivery.message_id, messages[n % len(messages)])))
                    yield built

            real_batches = deliver_module._batches_in_thread
            deliver_module._batches_in_thread = prebuilt  # type: ignore[assignment]
            send_s = await timed_send(runtime, args.pool)
            deliver_module._batches_in_thread = real_batches
            reset(sessions)
            e2e_s = await timed_send(runtime, args.pool)
            bare_s = await bare_loop(port, args.pool, messages, total)
            reset(sessions)  # the naive path renders the same deliveries again
            naive_count = min(args.naive, total)
            naive_s = await naive(port, runtime, naive_count)
    finally:
        sink.terminate()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bare_rate = total / bare_s
    print(f"subscribers: {args.subscribers:,}   digests: {total:,}   SMTP connections: {args.pool}")
    print(f"score + record picks       : {plan_s:7.2f} s  ({args.subscribers / plan_s:,.0f} subscribers/s)")
    print(f"render + MIME alone        : {total / render_s:9,.0f} emails/s")
    print(f"send alone (pool + ledger) : {total / send_s:9,.0f} emails/s")
    print(f"end to end (render + send) : {total / e2e_s:9,.0f} emails/s   = {total / e2e_s / bare_rate:.0%} of the bare loop")
    print(f"bare pooled aiosmtplib loop: {bare_rate:9,.0f} emails/s")
    naive_rate = naive_count / naive_s
    print(f"naive path                 : {naive_rate:9,.0f} emails/s   (end to end is {total / e2e_s / naive_rate:.1f}x)")
    print(f"all of it, score to sent   : {plan_s + e2e_s:7.2f} s   peak RSS {rss_mb:,.0f} MB")


async def timed_send(runtime: Runtime, pool: int) -> float:
    mailers = [SmtpMailer(host="127.0.0.1", port=runtime.settings.smtp_port, security="none") for _ in range(pool)]
    for mailer in mailers:
        await mailer.__aenter__()
    started = time.perf_counter()
    report = await deliver_module.send_due(runtime, mailers=mailers)
    elapsed = time.perf_counter() - started
    for mailer in mailers:
        await mailer.__aexit__(None, None, None)
    assert report.outcomes.get("sent", 0) > 0 and not report.error, (report.outcomes, report.error)
    return elapsed


def run_command(settings: Settings, folder: str, at: dt.datetime, **overrides: object) -> tuple[float, str]:
    """``newsletter digest`` in its own process with these settings; (wall seconds, what it printed)."""
    values = {"database_url": settings.database_url, "email_backend": "smtp", "smtp_host": "127.0.0.1",
              "smtp_port": settings.smtp_port, "smtp_security": "none", "smtp_pool_size": settings.smtp_pool_size,
              "secret_key": settings.secret_key, "from_address": settings.from_address, **overrides}
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update({f"NEWSLETTER_{k.upper()}": str(v) for k, v in values.items()})
    command = str(Path(sys.executable).with_name("newsletter"))
    started = time.perf_counter()
    done = subprocess.run([command, "digest", "--allow-future", "--at", at.isoformat()], env=env, cwd=folder,
                          capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    return elapsed, done.stdout


async def command_vs_replay(args: argparse.Namespace) -> None:
    sink, port = start_sink()
    command_rates, replay_rates = [], []
    try:
        with tempfile.TemporaryDirectory() as folder:
            settings, sessions = setup(folder, args.subscribers, port, args.pool)
            at = due_moment(sessions)
            for repeat in range(args.repeats):
                if repeat:
                    with sessions() as session:
                        session.execute(DeliveryItem.__table__.delete())  # the next run plans and records again
                        session.execute(Delivery.__table__.delete())
                        session.execute(update(Subscriber).values(next_send_at=at - dt.timedelta(minutes=1)))
                        session.commit()
                command_s, printed = run_command(settings, folder, at)
                with sessions() as session:
                    sent = session.query(Delivery).filter(Delivery.status == "sent").count()
                reset(sessions)  # the same deliveries, written out by the file backend this time
                run_command(settings, folder, at, email_backend="file", outbox_dir=f"{folder}/outbox{repeat}")
                messages = [p.read_bytes() for p in sorted(Path(f"{folder}/outbox{repeat}").glob("*/*.eml"))]
                assert len(messages) == sent, (len(messages), sent)
                replay_s = await bare_loop(port, args.pool, messages, len(messages))
                command_rates.append(sent / command_s)
                replay_rates.append(sent / replay_s)
                print(f"run {repeat + 1}: command {command_s:.2f} s for {sent:,} emails; replay {replay_s:.2f} s")
            print(printed.strip())
    finally:
        sink.terminate()
    command_rate, replay_rate = statistics.median(command_rates), statistics.median(replay_rates)
    print(f"subscribers: {args.subscribers:,}   SMTP connections: {args.pool}   repeats: {args.repeats}")
    print(f"newsletter digest (subprocess): {command_rate:7,.0f} emails/s (median)")
    print(f"bare pooled replay            : {replay_rate:7,.0f} emails/s (median)")
    print(f"command / replay              : {command_rate / replay_rate:.0%}  (target >= 70%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=None, help="default: 20,000; 5,000 with --command")
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--naive", type=int, default=500, help="messages to time the naive path on")
    parser.add_argument("--command", action="store_true", help="time the real 'newsletter digest' command instead")
    parser.add_argument("--repeats", type=int, default=3, help="with --command: runs to take the median of")
    args = parser.parse_args()
    if args.command:
        args.subscribers = args.subscribers or 5_000
        asyncio.run(command_vs_replay(args))
    else:
        args.subscribers = args.subscribers or 20_000
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
