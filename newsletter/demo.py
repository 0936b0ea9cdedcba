"""``newsletter demo``: the whole pipeline, offline, on the embedded default.

It uses its own folder (``newsletter-demo/`` by default): a SQLite database, the bundled sample
arXiv RSS feed and trending data (real titles and abstracts, see ``scripts/make_feeds.py``), three
sample subscribers and the file backend.

The folder is the user's disk, so the demo is careful with it: it marks a folder it made with
``.newsletter-demo``, which lists every file the demo wrote there; it starts over only in a folder
that carries that mark (and then removes only the files listed), and refuses any other folder that
is not empty.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import default
from pathlib import Path, PurePosixPath

from newsletter.db import migrate, repo
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import utcnow
from newsletter.errors import NewsletterError
from newsletter.ingest.fetch import Fetcher, make_client
from newsletter.ingest.run import ingest_sources
from newsletter.ingest.sources import SourceSpec
from newsletter.paths import PACKAGE_DIR
from newsletter.pipeline import DigestRun, run_digest
from newsletter.plan import embed_new_papers
from newsletter.records import NewSubscriber, Preferences
from newsletter.runtime import Runtime
from newsletter.send.mailer import FileMailer
from newsletter.settings import Settings

SAMPLE_FEED = PACKAGE_DIR / "demo_data" / "arxiv_sample.rss"
SAMPLE_TRENDING = PACKAGE_DIR / "demo_data" / "hf_daily_sample.json"  # upvotes for 30 of the papers

SAMPLE_SUBSCRIBERS = (
    NewSubscriber(
        email="ada@example.org",
        preferences=Preferences.from_lists(
            topics=["diffusion models", "image generation"], exclude=["video"],
            describe="I work on making text-to-image generators faster to sample from.",
        ),
        timezone="Europe/London", send_hour=7, max_papers=5,
    ),
    NewSubscriber(
        email="grace@example.org",
        preferences=Preferences.from_lists(
            topics=["large language models", "reasoning", "retrieval-augmented generation"],
            exclude=["medical"], categories=["cs.CL", "cs.IR", "cs.LG"],
            describe="I build question-answering assistants that look things up before they answer.",
        ),
        timezone="America/New_York", send_hour=8, max_papers=5,
    ),
    NewSubscriber(
        email="alan@example.org",
        preferences=Preferences.from_lists(
            topics=["reinforcement learning", "robot manipulation"], authors=["Oriol Novak"],
            describe="Teaching robot arms to grasp new objects from a few demonstrations.",
        ),
        timezone="Asia/Tokyo", send_hour=6, max_papers=5,
    ),
)


@dataclass
class DemoResult:
    run: DigestRun
    papers: int
    outbox: Path
    emails: list[Path]
    html_path: Path


MARKER = ".newsletter-demo"  # says "the demo made this folder", and lists the files it wrote: a rerun removes those only
MARKER_HEADER = "made by 'newsletter demo'; run again, it removes the files listed below and nothing else"
DEMO_FILES = ("demo.db", "demo.db-wal", "demo.db-shm", "digest.html")  # what every run writes, besides its emails


def prepare_folder(folder: Path) -> None:
    """An empty folder of the demo's own: made, or cleared of the files a previous run wrote.

    Only the files its marker lists are removed (a user's own email in the outbox stays), and only
    from a folder carrying the marker; a folder that holds anything else is refused, so ``--dir ~``
    can never cost anyone a file.
    """
    if folder.exists() and not folder.is_dir():
        raise NewsletterError(f"{folder} is a file, not a folder: give --dir a new folder's name")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / MARKER).is_file():
            raise NewsletterError(f"{folder} is not empty and was not made by the demo: "
                                  "give --dir a new or empty folder (nothing was changed)")
        remove_own_files(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(MARKER_HEADER + "\n", encoding="utf-8")
    record_own_files(folder, [Path(name) for name in DEMO_FILES])


def record_own_files(folder: Path, written: list[Path]) -> None:
    """Add ``written`` (paths inside ``folder``, relative to it) to the marker's list."""
    with (folder / MARKER).open("a", encoding="utf-8") as marker:
        marker.writelines(f"{path.as_posix()}\n" for path in written)


def own_files(folder: Path) -> list[Path]:
    """The files the marker lists, and the fixed ones every run writes (a marker of an older demo lists
    nothing). A line leading out of the folder names no file of the demo's and is skipped."""
    lines = (folder / MARKER).read_text(encoding="utf-8", errors="replace").splitlines()[1:]
    relative = [PurePosixPath(line) for line in dict.fromkeys([*DEMO_FILES, *lines]) if line.strip()]
    return [folder.joinpath(*path.parts) for path in relative if not path.is_absolute() and ".." not in path.parts]


def remove_own_files(folder: Path) -> None:
    """Remove the files the demo wrote, and any folder inside ``folder`` that this leaves empty."""
    for path in own_files(folder):
        if not (path.is_file() or path.is_symlink()):
            continue  # gone already, or the user put a folder of that name there
        path.unlink()
        for parent in path.parents:
            if parent == folder or not parent.is_relative_to(folder) or any(parent.iterdir()):
                break
            parent.rmdir()


def run_demo(folder: Path, *, on_step: Callable[[str], object] = lambda _step: None) -> DemoResult:
    """``on_step(text)``: what it does now, for the user to see (embedding the papers takes about a minute)."""
    prepare_folder(folder)
    settings = Settings(
        database_url=f"sqlite:///{folder / 'demo.db'}",
        email_backend="file",
        outbox_dir=folder / "outbox",
        from_address="digest@demo.example.org",
        secret_key="demo-only-not-secret-0123456789abcdef",
        base_url="http://localhost:8000",
        list_name="Paper digest (demo)",
        _env_file=None,  # the demo is the same everywhere, whatever .env says
    )
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    sessions = make_sessionmaker(engine)
    on_step("ingesting the sample arXiv feed and trending data…")
    with make_client(timeout_s=settings.fetch_timeout_s) as client:
        reports = ingest_sources([SourceSpec(str(SAMPLE_FEED), "arxiv-rss"), SourceSpec(str(SAMPLE_TRENDING), "hf-daily")],
                                 sessions=sessions, fetcher=Fetcher.from_settings(settings, client), now=utcnow())
    failed = [r.error for r in reports if r.error]
    if failed:  # the demo's own data must load: a failure here is a bug, never something to hide
        engine.dispose()
        raise NewsletterError(f"the demo could not ingest its sample data: {'; '.join(failed)}")
    with sessions() as session:
        for subscriber in SAMPLE_SUBSCRIBERS:
            repo.add_subscriber(session, new=subscriber)
        session.commit()
    mailer = FileMailer(settings.outbox_dir)
    runtime = Runtime.build(settings, engine=engine, connect=lambda: mailer)
    if settings.semantic and runtime.semantic_model() is not None:  # as `newsletter ingest` does: once per paper, stored
        on_step(f"embedding the {reports[0].new + reports[1].new} new papers for the semantic ranker "
                "(once per paper; about a minute on a small machine)…")
        embed_new_papers(runtime, now=utcnow())
    on_step("scoring, rendering and writing the sample digests…")
    # Each sample subscriber's digest now, whatever their hour (as `digest --only` does): the daemon
    # would send them at 07:00 London, 08:00 New York and 06:00 Tokyo.
    now = dt.datetime.now(dt.UTC)
    run = DigestRun(now)
    try:
        for subscriber in SAMPLE_SUBSCRIBERS:
            one = asyncio.run(run_digest(runtime, now=now, only=subscriber.email))
            run.picks += one.picks
            run.due, run.served = run.due + one.due, run.served + one.served
            run.outcomes.update(one.outcomes)
            run.candidates = max(run.candidates, one.candidates)
    finally:  # even a run that failed halfway: what it wrote is the demo's to remove next time
        record_own_files(folder, [path.relative_to(folder) for path in mailer.written])
    engine.dispose()
    html_path = folder / "digest.html"
    html_path.write_text(html_part(mailer.written[0]), encoding="utf-8")
    return DemoResult(run, reports[0].new, settings.outbox_dir, mailer.written, html_path.resolve())


def html_part(eml: Path) -> str:
    message = email.message_from_bytes(eml.read_bytes(), policy=default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(preferencelist=("html",))
    return body.get_content() if body else ""
