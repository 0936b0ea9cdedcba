"""Benchmark: send batches on PostgreSQL by 1, 2 and 4 worker processes against an SMTP sink in another process.

    python bench/scale.py [--subscribers 100000] [--workers 1,2,4] [--repeat 1] [--concurrency 2] [--pool 4] [--rate 100]

Seeds a fresh PostgreSQL database (``NEWSLETTER_TEST_POSTGRES``'s server) with ``--subscribers`` readers
and the sample arXiv feed: the first ``--planned`` (2,000) are planned by ``plan_due``, the others'
deliveries and picks are copied from theirs in SQL (a minute for 100,000, where planning them all
takes many; ``bench/dry_run.py`` measures planning). Then for each worker count, ``--repeat`` times:
every delivery back to pending, one ``send_batch`` job per 500, N ``newsletter worker`` processes
(this file's ``--worker`` mode, the same ``run_worker``), timed from their start until no send
batch is left waiting or running (then the ledger must say every delivery was sent). Prints
emails/s (and the steady rate, between the sink's 10th and 90th percentile arrivals), the scaling
ratio against one worker, the CPU seconds of the workers, PostgreSQL and the sink per 1,000 emails,
the machine's busy share and how much of it other processes took (the machine may be shared).
Then ``--rate``: 3 workers sharing the relay's limit, and the most messages the sink saw in any one
second. ``--async-commit`` runs the database with ``synchronous_commit = off``: if that is much
faster, WAL flushes at commit bound the rate.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import os
import random
import signal
import statistics
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
from newsletter.scale.app import conninfo, relay_queue  # noqa: E402
from newsletter.scale.enqueue import enqueue_due_batches  # noqa: E402
from newsletter.scale.worker import DEFAULT_CONCURRENCY  # noqa: E402
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


def postgres_pids(database: str, *, leave_out: int) -> list[int]:
    """The server processes serving ``database`` but ``leave_out`` (others' databases on a shared server are not ours
    to count; the WAL writer and checkpointer are left out too, so PostgreSQL's share is a lower bound)."""
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and int(p.name) != leave_out and f" {database} ".encode() in _cmdline(p)]


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


CLONE_MAP = text("""
CREATE TEMPORARY TABLE clone_map ON COMMIT DROP AS
SELECT clone.id AS subscriber_id, template.id AS template_id
FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM subscribers WHERE id > :last_planned) AS clone
JOIN (SELECT id, row_number() OVER (ORDER BY subscriber_id) - 1 AS n FROM deliveries) AS template
  ON template.n = clone.n % :templates
""")
CLONE_DELIVERIES = text("""
INSERT INTO deliveries (subscriber_id, issue_date, status, message_id, attempts, created_at, updated_at, send_at)
SELECT map.subscriber_id, t.issue_date, t.status,
       '<digest.' || to_char(t.issue_date, 'YYYYMMDD') || '.' || map.subscriber_id || '.' || substr(md5(random()::text), 1, 16)
       || '@' || split_part(t.message_id, '@', 2),
       0, t.created_at, t.updated_at, t.send_at
FROM clone_map AS map JOIN deliveries AS t ON t.id = map.template_id
""")
CLONE_ITEMS = text("""
INSERT INTO delivery_items (delivery_id, paper_id, rank, score, reasons)
SELECT d.id, i.paper_id, i.rank, i.score, i.reasons
FROM clone_map AS map JOIN deliveries AS d ON d.subscriber_id = map.subscriber_id
JOIN delivery_items AS i ON i.delivery_id = map.template_id
""")
CLONE_SCHEDULE = text("""
UPDATE subscribers AS s SET next_send_at = t.next_send_at
FROM clone_map AS map JOIN deliveries AS d ON d.id = map.template_id JOIN subscribers AS t ON t.id = d.subscriber_id
WHERE s.id = map.subscriber_id
""")


def seed(settings: Settings, subscribers: int, *, planned: int) -> tuple[Runtime, dict[str, float]]:
    """The sample feed and ``subscribers`` readers; the first ``planned`` planned by ``plan_due``, the others' deliveries
    (and picks) copied from theirs in SQL: this benchmark measures sending, and planning 100,000 takes many minutes
    (bench/dry_run.py measures that). Returns the runtime and the seconds each step took."""
    runtime = Runtime.build(settings)
    migrate.upgrade(runtime.engine)
    seconds, started = {}, time.perf_counter()
    with make_client(timeout_s=5) as client:
        ingest_sources([SourceSpec(str(PACKAGE_DIR / "demo_data" / "arxiv_sample.rss"), "arxiv-rss")], sessions=runtime.sessions,
                       fetcher=Fetcher(client=client, max_bytes=50_000_000), now=time_now())
    rng = random.Random(5)
    planned = min(planned, subscribers)
    for start, end in [(0, planned), *((n, min(n + 20_000, subscribers)) for n in range(planned, subscribers, 20_000))]:
        people = [NewSubscriber(email=f"reader{i}@lab{i % 211}.example.org", max_papers=rng.randint(5, 10),
                                preferences=Preferences.from_lists(topics=rng.sample(TOPICS, rng.randint(1, 3))))
                  for i in range(start, end)]
        with runtime.sessions() as session:
            repo.import_subscribers(session, subscribers=people)
            session.commit()
        if end == planned:  # the first `planned` readers only: plan them
            seconds["import"] = time.perf_counter() - started
            with runtime.sessions() as session:
                latest = session.scalar(select(func.max(Subscriber.next_send_at)))
                last_planned = session.scalar(select(func.max(Subscriber.id)))
            started = time.perf_counter()
            plan_due(runtime, now=(latest + dt.timedelta(minutes=1)).replace(tzinfo=dt.UTC))
            seconds["plan"], started = time.perf_counter() - started, time.perf_counter()
    with runtime.sessions() as session:
        session.execute(CLONE_MAP, {"last_planned": last_planned, "templates": planned})
        for statement in (CLONE_DELIVERIES, CLONE_ITEMS, CLONE_SCHEDULE):
            session.execute(statement)
        session.commit()
    vacuum(runtime)
    seconds["import and copy"] = time.perf_counter() - started + seconds.pop("import")
    return runtime, seconds


def time_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def requeue(runtime: Runtime, queue: str, limit: int | None = None) -> int:
    """Every delivery back to pending (the first ``limit``), no jobs, one job per 500, and the database vacuumed, so
    each run starts from the same state (the last one left several dead row versions per delivery)."""
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
    vacuum(runtime)
    return len(rows)


def vacuum(runtime: Runtime) -> None:
    """What autovacuum would have done by now: this test server runs with it off (``SHOW autovacuum``), and a
    subscribers table never analyzed since its bulk import made the planner join every active subscriber for
    each batch's 500 deliveries (0.5 s a query at 100,000). Dead row versions still pile up during a run."""
    with runtime.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM (ANALYZE)"))


def unsent(runtime: Runtime) -> int:
    with runtime.sessions() as session:
        return session.scalar(select(func.count(Delivery.id)).where(Delivery.status.in_(
            (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.RETRY, DeliveryStatus.UNKNOWN)))) or 0


class Watch:
    """Whether the workers are done, asked cheaply: jobs waiting or running (a few hundred rows), not a count over the
    deliveries (100,000 rows four times a second cost PostgreSQL as much CPU as a worker's sending). Its own server
    process is left out of PostgreSQL's CPU."""

    def __init__(self, database_url: str) -> None:
        self.connection = psycopg.connect(conninfo(database_url), autocommit=True)
        self.pid = self.connection.info.backend_pid

    def jobs_left(self) -> int:
        row = self.connection.execute("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')").fetchone()
        return int(row[0]) if row else 0


def run(runtime: Runtime, environ: dict[str, str], *, workers: int, concurrency: int, port: int, folder: Path,
        total: int) -> dict[str, float]:
    arrivals = folder / f"arrivals-{workers}-{uuid.uuid4().hex[:6]}.txt"
    sink = spawn(["--sink", str(port), str(arrivals)], stdout=subprocess.PIPE)
    assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
    database, watch = runtime.engine.url.database or "", Watch(runtime.settings.database_url)
    pg_before, busy_before = cpu_s(postgres_pids(database, leave_out=watch.pid)), machine_busy()
    started, spawned = time.perf_counter(), time.monotonic()
    procs = [spawn(["--worker", str(concurrency)], environ, stderr=(folder / f"worker{n}.log").open("wb")) for n in range(workers)]
    while watch.jobs_left():
        time.sleep(0.25)
        assert all(p.poll() is None for p in procs), "a worker died; see its log in " + str(folder)
    seconds = time.perf_counter() - started
    worker_cpu, sink_cpu = cpu_s([p.pid for p in procs]), cpu_s([sink.pid])
    pg_cpu, busy_after = cpu_s(postgres_pids(database, leave_out=watch.pid)) - pg_before, machine_busy()
    watch.connection.close()
    assert unsent(runtime) == 0, "the jobs are done and deliveries are left unsent; see the workers' logs in " + str(folder)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(30)
    sink.send_signal(signal.SIGTERM)
    sink.wait(30)
    times = sorted(float(t) for t in arrivals.read_text().split())
    peak = max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)
    busy = (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1)
    ours = (worker_cpu + pg_cpu + sink_cpu) / (seconds * (os.cpu_count() or 1))
    tenth, ninetieth = times[len(times) // 10], times[len(times) * 9 // 10]  # steady state: past start-up, before the tail
    return {"seconds": seconds, "rate": total / seconds, "steady": (len(times) * 0.8) / max(ninetieth - tenth, 1e-9),
            "first_s": times[0] - spawned if times else float("nan"), "worker_cpu": worker_cpu, "pg_cpu": pg_cpu,
            "sink_cpu": sink_cpu, "busy": busy, "others": max(busy - ours, 0.0), "peak_1s": peak, "received": len(times)}


def report(label: str, result: dict[str, float], *, total: int, one_worker: float) -> str:
    per_k = {k: 1000 * result[k] / total for k in ("worker_cpu", "pg_cpu", "sink_cpu")}
    return (f"{label}: {total:,} emails in {result['seconds']:.1f} s = {result['rate']:,.0f} emails/s (x{result['rate'] / one_worker:.2f} "
            f"of 1 worker; steady {result['steady']:,.0f}/s, first email {result['first_s']:.1f} s after start); CPU s per 1,000 "
            f"emails: workers {per_k['worker_cpu']:.2f}, postgres {per_k['pg_cpu']:.2f}, sink {per_k['sink_cpu']:.2f}; "
            f"machine busy {result['busy']:.0%} (other processes {result['others']:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--repeat", type=int, default=1, help="runs per worker count; more than one: the median is printed too")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help="send batches each worker process runs at once (default: newsletter worker's)")
    parser.add_argument("--pool", type=int, default=4, help="SMTP connections per batch")
    parser.add_argument("--planned", type=int, default=2_000, help="subscribers planned by plan_due; the others copy their picks")
    parser.add_argument("--rate", type=float, default=100.0, help="the shared-limit run: messages/s for 3 workers (0: skip)")
    parser.add_argument("--rate-messages", type=int, default=3_000)
    parser.add_argument("--async-commit", action="store_true",
                        help="synchronous_commit=off for the benchmark's database: do WAL flushes at commit bound the rate?")
    parser.add_argument("--sink", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, metavar="CONCURRENCY", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        return sink_main(int(args.sink[0]), Path(args.sink[1]))
    if args.worker:
        return worker_main(args.worker)

    name = f"bench_scale_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(ADMIN_URL, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    if args.async_commit:
        admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    url = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    port = free_port()
    values = dict(database_url=url, secret_key=SECRET, from_address="digest@example.org", email_backend="smtp",
                  smtp_host="127.0.0.1", smtp_port=port, smtp_security="none", smtp_pool_size=args.pool, log_level="WARNING")
    settings = Settings(**values, _env_file=None)  # type: ignore[arg-type]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    environ.update({f"NEWSLETTER_{k.upper()}": str(v) for k, v in values.items()})
    try:
        started = time.perf_counter()
        runtime, took = seed(settings, args.subscribers, planned=args.planned)
        print(f"subscribers {args.subscribers:,}: {min(args.planned, args.subscribers):,} planned in {took['plan']:.1f} s, "
              f"the rest copied from them; seeded in {time.perf_counter() - started:.1f} s; SMTP connections per batch {args.pool}, "
              f"{args.concurrency} batch(es) at once per worker; {os.cpu_count()} CPUs"
              f"{'; synchronous_commit off' if args.async_commit else ''}", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            medians: dict[int, dict[str, float]] = {}
            for workers in [int(n) for n in args.workers.split(",")]:
                runs = []
                for attempt in range(args.repeat):
                    total = requeue(runtime, relay_queue(settings))
                    runs.append(run(runtime, environ, workers=workers, concurrency=args.concurrency, port=port,
                                    folder=Path(folder), total=total))
                    baseline = medians[min(medians)]["rate"] if medians else runs[0]["rate"]
                    print(report(f"{workers} worker(s), run {attempt + 1}", runs[-1], total=total, one_worker=baseline), flush=True)
                medians[workers] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                if args.repeat > 1:
                    print(report(f"{workers} worker(s), median of {args.repeat}", medians[workers], total=total,
                                 one_worker=medians[min(medians)]["rate"]), flush=True)
            if args.rate:
                environ_rated = {**environ, "NEWSLETTER_SMTP_RATE_PER_S": str(args.rate)}
                total = requeue(runtime, relay_queue(settings), limit=args.rate_messages)
                result = run(runtime, environ_rated, workers=3, concurrency=args.concurrency, port=port, folder=Path(folder),
                             total=total)
                print(f"shared limit {args.rate:g}/s, 3 workers: {total:,} emails in {result['seconds']:.1f} s = "
                      f"{result['rate']:,.1f} emails/s; at most {result['peak_1s']} in any one second at the sink")
        runtime.close()
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
