"""Benchmark: send batches on PostgreSQL by 1, 2 and 4 worker processes against an SMTP sink in another process.

    python bench/scale.py [--subscribers 100000] [--workers 1,2,4] [--pool 4] [--rate 100]

Seeds a fresh PostgreSQL database (``NEWSLETTER_TEST_POSTGRES``'s server) with ``--subscribers`` readers
and the sample arXiv feed, plans every digest once, then for each worker count: every delivery back to
pending, one ``send_batch`` job per 500, N ``newsletter worker`` processes (this file's ``--worker``
mode, the same ``run_worker``), timed from their start until the ledger says every delivery is sent.
Prints emails/s, the scaling ratio against one worker, the CPU seconds of the workers, PostgreSQL and
the sink per 1,000 emails and the machine's busy share (which resource saturates). Then ``--rate``: 3
workers sharing the relay's limit, and the most messages the sink saw in any one second.
"""

from __future__ import annotations

import argparse
import bisect
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from sqlalchemy import func, select, text

sys.path.insert(0, str(Path(__file__).parent))
from send import TOPICS, free_port  # noqa: E402 - the sibling benchmark's topics

from newsletter.db import migrate, repo  # noqa: E402
from newsletter.db.models import Delivery, DeliveryStatus, Subscriber  # noqa: E402
from newsletter.ingest.fetch import Fetcher, make_client  # noqa: E402
from newsletter.ingest.run import ingest_sources  # noqa: E402
from newsletter.ingest.sources import SourceSpec  # noqa: E402
from newsletter.paths import PACKAGE_DIR  # noqa: E402
from newsletter.plan import plan_due  # noqa: E402
from newsletter.records import NewSubscriber, Preferences  # noqa: E402
from newsletter.runtime import Runtime  # noqa: E402
from newsletter.scale.app import relay_queue  # noqa: E402
from newsletter.scale.enqueue import enqueue_due_batches  # noqa: E402
from newsletter.settings import Settings  # noqa: E402

ADMIN_URL = os.environ.get("NEWSLETTER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = "bench-secret-key-0123456789abcdefghij"
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


# --- processes this benchmark starts ---------------------------------------------------------------


def sink_main(port: int, arrivals: Path) -> None:
    """An SMTP sink that writes each message's arrival time (monotonic) to ``arrivals`` when it stops."""
    import asyncio

    from aiosmtpd.controller import Controller

    times: list[float] = []

    class Record:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook
            times.append(time.monotonic())
            return "250 OK"

    controller = Controller(Record(), hostname="127.0.0.1", port=port)
    controller.start()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print("ready", flush=True)
    try:
        asyncio.run(asyncio.Event().wait())
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()
        arrivals.write_text("\n".join(f"{t:.6f}" for t in times))


def worker_main(concurrency: int) -> None:
    from newsletter.scale.worker import run_worker

    sys.exit(run_worker(Settings(), concurrency=concurrency))  # settings from NEWSLETTER_* set by this benchmark


def spawn(args: list[str], environ: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args], env=environ, **kwargs)  # type: ignore[call-overload]


def cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime + stime
    return total


def postgres_pids(database: str) -> list[int]:
    """The server processes serving ``database`` (others' databases on a shared server are not ours to count;
    the WAL writer and checkpointer are left out too, so PostgreSQL's share is a lower bound)."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and f" {database} ".encode() in _cmdline(p)]


def _cmdline(path: Path) -> bytes:
    try:
        return (path / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def machine_busy() -> tuple[float, float]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


# --- the benchmark ---------------------------------------------------------------------------------


def seed(settings: Settings, subscribers: int) -> tuple[Runtime, float]:
    runtime = Runtime.build(settings)
    migrate.upgrade(runtime.engine)
    with make_client(timeout_s=5) as client:
        ingest_sources([SourceSpec(str(PACKAGE_DIR / "demo_data" / "arxiv_sample.rss"), "arxiv-rss")], sessions=runtime.sessions,
                       fetcher=Fetcher(client=client, max_bytes=50_000_000), now=time_now())
    rng = random.Random(5)
    for start in range(0, subscribers, 20_000):
        people = [NewSubscriber(email=f"reader{i}@lab{i % 211}.example.org", max_papers=rng.randint(5, 10),
                                preferences=Preferences.from_lists(topics=rng.sample(TOPICS, rng.randint(1, 3))))
                  for i in range(start, min(start + 20_000, subscribers))]
        with runtime.sessions() as session:
            repo.import_subscribers(session, subscribers=people)
            session.commit()
    with runtime.sessions() as session:
        latest = session.scalar(select(func.max(Subscriber.next_send_at)))
    started = time.perf_counter()
    plan_due(runtime, now=(latest + __import__("datetime").timedelta(minutes=1)).replace(tzinfo=__import__("datetime").UTC))
    return runtime, time.perf_counter() - started


def time_now():  # noqa: ANN201
    import datetime as dt

    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def requeue(runtime: Runtime, queue: str, limit: int | None = None) -> int:
    """Every delivery back to pending (the first ``limit``), no jobs, and one job per 500."""
    with runtime.sessions() as session:
        session.execute(text("DELETE FROM scale.procrastinate_jobs"))
        session.execute(text("DELETE FROM scale.relay_rate_buckets"))
        session.execute(text("UPDATE deliveries SET status = 'pending', attempts = 0, sent_at = NULL, leased_by = NULL, "
                             "lease_until = NULL WHERE status IN ('sent', 'sending', 'unknown')"))
        rows = session.execute(select(Delivery.id, Delivery.issue_date).where(Delivery.status == DeliveryStatus.PENDING)
                               .order_by(Delivery.id).limit(limit)).all()
        if limit is not None:  # the rest out of the way for this run
            session.execute(text("UPDATE deliveries SET status = 'failed' WHERE status = 'pending' AND id > :last"),
                            {"last": rows[-1][0]})
        enqueue_due_batches(session, deliveries=rows, queue=queue)
        session.commit()
    return len(rows)


def unsent(runtime: Runtime) -> int:
    with runtime.sessions() as session:
        return session.scalar(select(func.count(Delivery.id)).where(Delivery.status.in_(
            (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.RETRY, DeliveryStatus.UNKNOWN)))) or 0


def run(runtime: Runtime, environ: dict[str, str], *, workers: int, port: int, folder: Path, total: int) -> dict[str, float]:
    arrivals = folder / f"arrivals-{workers}-{uuid.uuid4().hex[:6]}.txt"
    sink = spawn(["--sink", str(port), str(arrivals)], stdout=subprocess.PIPE)
    assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
    database = runtime.engine.url.database or ""
    pg_before, busy_before = cpu_s(postgres_pids(database)), machine_busy()
    started = time.perf_counter()
    procs = [spawn(["--worker"], environ, stderr=(folder / f"worker{n}.log").open("wb")) for n in range(workers)]
    while unsent(runtime):
        time.sleep(0.25)
        assert all(p.poll() is None for p in procs), "a worker died; see its log in " + str(folder)
    seconds = time.perf_counter() - started
    worker_cpu, sink_cpu = cpu_s([p.pid for p in procs]), cpu_s([sink.pid])
    pg_cpu, busy_after = cpu_s(postgres_pids(database)) - pg_before, machine_busy()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(30)
    sink.send_signal(signal.SIGTERM)
    sink.wait(30)
    times = sorted(float(t) for t in arrivals.read_text().split())
    peak = max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)
    busy = (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1)
    return {"seconds": seconds, "rate": total / seconds, "worker_cpu": worker_cpu, "pg_cpu": pg_cpu, "sink_cpu": sink_cpu,
            "busy": busy, "peak_1s": peak, "received": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--pool", type=int, default=4, help="SMTP connections per batch")
    parser.add_argument("--rate", type=float, default=100.0, help="the shared-limit run: messages/s for 3 workers (0: skip)")
    parser.add_argument("--rate-messages", type=int, default=3_000)
    parser.add_argument("--sink", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        return sink_main(int(args.sink[0]), Path(args.sink[1]))
    if args.worker:
        return worker_main(1)

    name = f"bench_scale_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(ADMIN_URL, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    port = free_port()
    values = dict(database_url=url, secret_key=SECRET, from_address="digest@example.org", email_backend="smtp",
                  smtp_host="127.0.0.1", smtp_port=port, smtp_security="none", smtp_pool_size=args.pool, log_level="WARNING")
    settings = Settings(**values, _env_file=None)  # type: ignore[arg-type]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    environ.update({f"NEWSLETTER_{k.upper()}": str(v) for k, v in values.items()})
    try:
        runtime, plan_s = seed(settings, args.subscribers)
        print(f"subscribers {args.subscribers:,}; planned in {plan_s:.1f} s; SMTP connections per batch {args.pool}; "
              f"{os.cpu_count()} CPUs", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            results = {}
            for workers in [int(n) for n in args.workers.split(",")]:
                total = requeue(runtime, relay_queue(settings))
                results[workers] = result = run(runtime, environ, workers=workers, port=port, folder=Path(folder), total=total)
                ratio = result["rate"] / results[min(results)]["rate"]
                per_k = {k: 1000 * result[k] / total for k in ("worker_cpu", "pg_cpu", "sink_cpu")}
                print(f"{workers} worker(s): {total:,} emails in {result['seconds']:.1f} s = {result['rate']:,.0f} emails/s "
                      f"(x{ratio:.2f} of 1 worker); CPU s per 1,000 emails: workers {per_k['worker_cpu']:.2f}, "
                      f"postgres {per_k['pg_cpu']:.2f}, sink {per_k['sink_cpu']:.2f}; machine busy {result['busy']:.0%}",
                      flush=True)
            if args.rate:
                environ_rated = {**environ, "NEWSLETTER_SMTP_RATE_PER_S": str(args.rate)}
                total = requeue(runtime, relay_queue(settings), limit=args.rate_messages)
                result = run(runtime, environ_rated, workers=3, port=port, folder=Path(folder), total=total)
                print(f"shared limit {args.rate:g}/s, 3 workers: {total:,} emails in {result['seconds']:.1f} s = "
                      f"{result['rate']:,.1f} emails/s; at most {result['peak_1s']} in any one second at the sink")
        runtime.close()
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
