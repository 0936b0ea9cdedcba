"""Shared fixtures: real SQLite and PostgreSQL databases, a real SMTP server, the CLI in-process."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select

from newsletter.cli import main
from newsletter.db import migrate
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Subscriber

FIXTURES = Path(__file__).parent / "fixtures"
POSTGRES_ADMIN_URL = os.environ.get("NEWSLETTER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder with no NEWSLETTER_* from the developer's shell or .env."""
    for name in list(os.environ):
        if name.startswith("NEWSLETTER_") and name != "NEWSLETTER_TEST_POSTGRES":
            monkeypatch.delenv(name)
    # The semantic ranker is on by default; it embeds every new paper (a second or so each on a busy
    # machine). Tests about ranking turn it on; the rest rank lexically and stay fast.
    monkeypatch.setenv("NEWSLETTER_SEMANTIC", "false")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards. Skips only outside CI."""
    name = f"newsletter_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} in CI: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both databases the product supports, migrated to head."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path / 'test.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'test.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def sessions(sqlite_url: str):
    engine = make_engine(sqlite_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage


@dataclass
class SmtpSink:
    """Collects what a real aiosmtpd server receives."""

    host: str
    port: int
    received: list[Received] = field(default_factory=list)
    sessions: int = 0  # EHLO/HELO greetings: one per SMTP connection

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook
        message = message_from_bytes(envelope.original_content, policy=default)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[SmtpSink]:
    sink = SmtpSink("127.0.0.1", free_port())
    controller = Controller(sink, hostname=sink.host, port=sink.port)
    controller.start()
    yield sink
    controller.stop()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def send_hour_of_everyone(url: str | None = None) -> str | None:
    """An instant at which every active subscriber's next digest is due: the latest next send moment, plus a minute.

    Subscribers send at their own local hour, so a test that adds some and runs ``digest`` must say
    when it runs; this is the moment a daemon would have sent all of them (and nothing twice).
    """
    url = url or os.environ.get("NEWSLETTER_DATABASE_URL")
    if not url:
        return None
    try:
        engine = make_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    except Exception:  # a URL the command itself will refuse
        return None
    try:
        with engine.connect() as connection:
            latest = connection.scalar(select(func.max(Subscriber.next_send_at)).where(Subscriber.status == "active"))
    except Exception:  # an uninitialised or unreachable database: the command itself will say so
        return None
    finally:
        engine.dispose()
    return (latest + dt.timedelta(minutes=1)).isoformat() + "Z" if latest else None


_FIXED_CLOCKS: dict[str, str | None] = {}


def fixed_send_moment(url: str) -> str:
    """``send_hour_of_everyone`` for a database, fixed at the first call: every later run is "again, at that moment"."""
    if url not in _FIXED_CLOCKS:
        _FIXED_CLOCKS[url] = send_hour_of_everyone(url)
    return _FIXED_CLOCKS[url] or dt.datetime.now(dt.UTC).isoformat()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``newsletter ARGS`` in-process; returns the exit status and what it printed.

    ``digest`` and ``preview`` without ``--at`` (or --only, --dry-run, --date) run at the test's clock: the
    moment every subscriber added so far is due (``fixed_send_moment``), fixed at the first such
    call, so that running it again is "again, at the same moment".
    """

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        url = os.environ.get("NEWSLETTER_DATABASE_URL")
        if args and args[0] in ("digest", "preview") and url and not {"--at", "--only", "--dry-run", "--date"} & set(args):
            args = (*args, *(["--allow-future"] if args[0] == "digest" else []), "--at", fixed_send_moment(url))
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    """Set NEWSLETTER_* settings for the test: env(database_url=..., email_backend=...)."""

    def set_settings(**values: object) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"NEWSLETTER_{name.upper()}", str(value))

    return set_settings


@pytest.fixture
def configured(env, database_url: str, tmp_path: Path) -> str:
    """Settings for a working installation on either database; returns the database URL."""
    env(database_url=database_url, secret_key="test-secret-key-0123456789abcdefghij", from_address="digest@example.org",
        outbox_dir=tmp_path / "outbox", base_url="https://digest.example.org",
        allow_private_sources="true", host_interval_s=0)  # the feeds in tests are served on 127.0.0.1
    return database_url


SERVER_START_S = 30  # a loaded machine may take seconds to start uvicorn; longer means it failed


@contextlib.contextmanager
def serving(app: Any, *, port: int | None = None) -> Iterator[str]:
    """``app`` on a real uvicorn server in a thread (on a free port unless given); yields its base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium, driven by Playwright (its own browser download cannot work here)."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium")
    if executable is None:
        message = "Debian's chromium is not installed (apt-get install chromium); .ci/run installs it"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield launched
        launched.close()
