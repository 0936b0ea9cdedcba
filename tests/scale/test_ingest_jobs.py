"""Ingest through the job queue, on the real local PostgreSQL: with NEWSLETTER_DISPATCH=procrastinate the
daemon's ingest and trending runs fetch nothing themselves and queue one ``ingest_source`` job per source
(a source still waiting is not queued twice); a real procrastinate worker runs them, and never two of one
source at once, while it goes on with the other sources."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text

from newsletter.daemon import Daemon
from newsletter.db.models import Paper
from newsletter.jobs import queue_configured
from newsletter.runtime import Runtime
from newsletter.scale.app import INGEST_QUEUE, INGEST_SOURCE, make_app
from newsletter.scale.enqueue import source_lock
from newsletter.send.mailer import RecordingMailer
from newsletter.settings import load_settings
from tests.conftest import FIXTURES

pytestmark = pytest.mark.postgres

DEADLINE_S = 90  # for what a loaded machine does in well under a second


class Feeds(http.server.ThreadingHTTPServer):
    """Serves the fixture feed at any path; requests for ``held`` wait until ``release`` is set."""

    def __init__(self, held: str) -> None:
        super().__init__(("127.0.0.1", 0), FeedHandler)
        self.held, self.release, self.body = held, threading.Event(), (FIXTURES / "arxiv_cs_lg.rss").read_bytes()
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.most_at_once: Counter[str] = Counter()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class FeedHandler(http.server.BaseHTTPRequestHandler):
    server: Feeds

    def do_GET(self) -> None:  # noqa: N802 - http.server's hook
        feeds = self.server
        with feeds.lock:
            feeds.requests[self.path] += 1
            feeds.in_flight[self.path] += 1
            feeds.most_at_once[self.path] = max(feeds.most_at_once[self.path], feeds.in_flight[self.path])
        try:
            if self.path == feeds.held:
                feeds.release.wait(DEADLINE_S)
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Content-Length", str(len(feeds.body)))
            self.end_headers()
            self.wfile.write(feeds.body)
        finally:
            with feeds.lock:
                feeds.in_flight[self.path] -= 1

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        return None


@pytest.fixture
def feeds() -> Iterator[Feeds]:
    server = Feeds(held="/a.rss")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def queued_install(cli, env, postgres_url: str, feeds: Feeds) -> str:
    """A PostgreSQL installation with the job queue: source a.rss in the database, b.rss and hf-daily in
    NEWSLETTER_SOURCES, and both ingest crons fired two minutes ago (so a daemon's start catches them up)."""
    fired = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)
    env(database_url=postgres_url, dispatch="procrastinate", secret_key="test-secret-key-0123456789abcdefghij",
        from_address="digest@example.org", allow_private_sources="true", host_interval_s=0, fetch_timeout_s=DEADLINE_S,
        ingest_cron=f"{fired.minute} * * * *", ingest_timezone="UTC", trending_cron=f"{fired.minute} * * * *",
        tick_s=3600, retry_drain_s=3600, hf_daily_url=FIXTURES / "hf_daily.json",
        sources=f'["hf-daily", "{feeds.url("/b.rss")}"]', log_level="WARNING")
    assert cli("init").code == 0
    assert cli("sources", "add", feeds.url("/a.rss"), "--no-check").code == 0
    return postgres_url


def jobs(runtime: Runtime) -> list[dict[str, Any]]:
    with runtime.sessions() as session:
        return [dict(row._mapping) for row in session.execute(text(
            "SELECT id, queue_name, task_name, lock, queueing_lock, args, status FROM scale.procrastinate_jobs ORDER BY id"))]


def start_and_stop(daemon: Daemon) -> None:
    """Run the daemon until its catch-up ingest and trending runs are done, then stop it."""

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run())
        await until(lambda: bool(daemon.jobs["ingest"].last_run_at and daemon.jobs["trending"].last_run_at))
        daemon.request_stop("the test is done")
        await asyncio.wait_for(task, timeout=30)

    asyncio.run(scenario())


async def until(condition: Callable[[], bool | Awaitable[bool]]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        met = condition()
        if met if isinstance(met, bool) else await met:
            return
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.05)


def test_the_daemon_queues_a_job_per_source_and_fetches_nothing_itself(queued_install: str, feeds: Feeds) -> None:
    runtime = Runtime.build(load_settings(), connect=RecordingMailer)
    daemon = Daemon(runtime)
    start_and_stop(daemon)

    assert daemon.jobs["ingest"].last_result == "2 sources: 2 ingest jobs queued for the workers"
    assert daemon.jobs["trending"].last_result == "1 source: 1 ingest job queued for the workers"
    urls = [feeds.url("/a.rss"), feeds.url("/b.rss"), str(FIXTURES / "hf_daily.json")]
    assert sorted((j["queue_name"], j["task_name"], j["args"]["url"], j["lock"], j["status"]) for j in jobs(runtime)) == sorted(
        (INGEST_QUEUE, INGEST_SOURCE, url, source_lock(url), "todo") for url in urls)  # ingest and trending run in either order
    assert len({j["queueing_lock"] for j in jobs(runtime)}) == 3
    assert feeds.requests == Counter(), "the workers fetch; the daemon only queues"
    with runtime.sessions() as session:
        assert session.scalar(select(func.count(Paper.id))) == 0

    again = Daemon(runtime)  # a restart before any worker ran: the sources are still waiting, not queued twice
    start_and_stop(again)
    assert again.jobs["ingest"].last_result == "2 sources: 0 ingest jobs queued for the workers, 2 still waiting from before"
    assert len(jobs(runtime)) == 3
    runtime.close()


def test_a_worker_never_ingests_one_source_twice_at_once_and_goes_on_with_the_others(queued_install: str, feeds: Feeds) -> None:
    runtime = Runtime.build(load_settings(), connect=RecordingMailer)
    a, b = feeds.url("/a.rss"), feeds.url("/b.rss")

    def status_of(url: str) -> list[str]:
        return [j["status"] for j in jobs(runtime) if j["args"]["url"] == url]

    async def scenario() -> None:
        assert await asyncio.to_thread(queue_configured, runtime, trending=False) == (2, 2)  # a, then b
        app = make_app(runtime.settings.database_url)
        async with app.open_async():
            worker = asyncio.create_task(app.run_worker_async(
                concurrency=2, install_signal_handlers=False, fetch_job_polling_interval=0.2,
                additional_context={"runtime": runtime, "limiter": None}))
            await until(lambda: feeds.in_flight["/a.rss"] == 1 and status_of(b) == ["succeeded"])
            # a's first ingest is still running: its job may be queued again (nothing of a is waiting), and
            # is queued before b's second; the worker has a free slot and takes b's, not a's.
            assert await asyncio.to_thread(queue_configured, runtime, trending=False) == (2, 2)
            await until(lambda: status_of(b) == ["succeeded", "succeeded"])
            assert status_of(a) == ["doing", "todo"], "a's second ingest waits for the first: the source's lock"
            assert feeds.requests["/a.rss"] == 1

            feeds.release.set()
            await until(lambda: status_of(a) == ["succeeded", "succeeded"])
            worker.cancel()
            with pytest.raises(asyncio.CancelledError):
                await worker

    asyncio.run(scenario())
    assert feeds.requests == Counter({"/a.rss": 2, "/b.rss": 2})
    assert feeds.most_at_once["/a.rss"] == 1
    with runtime.sessions() as session:
        assert session.scalar(select(func.count(Paper.id))) == 60, "the feed's papers, stored once"
    runtime.close()
