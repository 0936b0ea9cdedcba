"""The web app over a real, migrated database: a subscriber, two papers, links signed as emails sign them;
and the subscriber's side (``Front``): sign-up, confirmation, preferences, unsubscribe, with a file outbox."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from newsletter import subscriptions, tokens
from newsletter.db import migrate, repo
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Feedback, Paper, Subscriber
from newsletter.records import NewSubscriber, Preferences
from newsletter.settings import Settings
from newsletter.web.app import create_app
from newsletter.web.ratelimit import RateLimits
from tests.conftest import serving

SECRET_KEY = "web-test-secret-key-0123456789abcdef"


@dataclass
class Site:
    """What the tests click on: the database, the app's settings and a way to sign links."""

    sessions: sessionmaker[Session]
    settings: Settings
    subscriber_id: int
    paper_ids: list[int]

    def link(self, paper_id: int, direction: str = "up", *, subscriber_id: int | None = None,
             issued_at: dt.datetime | None = None, path_paper_id: int | None = None) -> str:
        signer = tokens.FeedbackSigner(secret_key=SECRET_KEY, issued_at=issued_at or dt.datetime.now(dt.UTC))
        token = signer.token(subscriber_id=subscriber_id or self.subscriber_id, paper_id=paper_id)
        return f"/feedback/{token}/{path_paper_id or paper_id}/{direction}"

    def feedback(self) -> list[tuple[int, int, int]]:
        with self.sessions() as session:
            return [(f.subscriber_id, f.paper_id, f.value) for f in session.scalars(select(Feedback).order_by(Feedback.id))]

    def add_subscriber(self, email: str) -> int:
        with self.sessions() as session:
            subscriber_id = repo.add_subscriber(session, new=NewSubscriber(email=email)).id
            session.commit()
        return subscriber_id

    def remove_subscriber(self, email: str) -> None:
        with self.sessions() as session:
            repo.remove_subscriber(session, email=email)
            session.commit()


def make_site(database_url: str, sessions: sessionmaker[Session], **settings: object) -> Site:
    with sessions() as session:
        papers = [Paper(key=f"2611.1000{n}", title=title, abstract="An abstract.")
                  for n, title in enumerate(["Fast Sampling for Diffusion Models", "<b>Attention</b> & Friends"])]
        session.add_all(papers)
        session.commit()
        paper_ids = [p.id for p in papers]
    site = Site(sessions, Settings(database_url=database_url, secret_key=SECRET_KEY, _env_file=None, **settings),  # type: ignore[arg-type]
                0, paper_ids)
    site.subscriber_id = site.add_subscriber("ada@example.org")
    return site


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite database migrated to head, copied by each test: migrating costs more than most web tests."""
    path = tmp_path_factory.mktemp("template") / "migrated.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def sqlite_url(migrated_template: Path, tmp_path: Path) -> str:
    """A fresh, migrated SQLite database for this test (overrides the suite's, which migrates every time)."""
    path = tmp_path / "test.db"
    shutil.copyfile(migrated_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def site(sqlite_url: str) -> Iterator[Site]:
    engine = make_engine(sqlite_url)
    yield make_site(sqlite_url, make_sessionmaker(engine))
    engine.dispose()


@pytest.fixture
def client(site: Site) -> Iterator[TestClient]:
    with TestClient(create_app(settings=site.settings, sessions=site.sessions), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def server(site: Site) -> Iterator[str]:
    """A real uvicorn server over the site; its base URL."""
    with serving(create_app(settings=site.settings, sessions=site.sessions)) as url:
        yield url


# --- the subscriber's side: sign-up, confirm, preferences, unsubscribe ---------------------------

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
TABLES = ("subscribers", "preferences", "subscription_events", "deliveries", "feedback", "forgotten_addresses")


@dataclass
class Front:
    """The web front over a real, migrated SQLite database, mailing notices to a file outbox.

    ``client`` is a browser without JavaScript: it keeps the CSRF cookie, and ``form`` reads a page's
    hidden token the way a browser submits it.
    """

    client: TestClient
    sessions: sessionmaker[Session]
    settings: Settings
    outbox: Path

    def token_for(self, path: str) -> str:
        page = self.client.get(path)
        assert page.status_code == 200, (path, page.status_code, page.text)
        match = CSRF_FIELD.search(page.text)
        assert match, f"no form on {path}"
        return match.group(1)

    def form(self, path: str, data: dict[str, object] | None = None, *, form_page: str | None = None,
             **kwargs: Any) -> httpx.Response:
        """POST ``data`` as the form on ``form_page`` (default: ``path`` itself) would, with its CSRF token."""
        token = self.token_for(form_page or path)
        return self.client.post(path, data={"csrf_token": token, **(data or {})}, **kwargs)

    def subscribe(self, email: str, **fields: object) -> httpx.Response:
        return self.form("/subscribe", {**SIGN_UP, "email": email, **fields})

    def notices(self) -> list[EmailMessage]:
        found = sorted(self.outbox.rglob("*.eml"), key=lambda path: path.stat().st_mtime_ns)
        return [message_from_bytes(path.read_bytes(), policy=default) for path in found]  # type: ignore[misc]

    def links_to(self, email: str, path: str) -> list[str]:
        """The paths of this site's ``path`` links (``/confirm/``, ``/preferences/``) in the notices sent to ``email``."""
        found = []
        for message in self.notices():
            if message["To"] == email:
                body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
                found += [m.group(1) for m in re.finditer(rf"https://digest\.example\.org({path}[\w.-]+)", body)]
        return found

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row that a subscriber-side request could change."""
        with self.sessions() as session:
            return {table: [tuple(row) for row in session.execute(text(f"SELECT * FROM {table} ORDER BY 1"))] for table in TABLES}

    def status_of(self, email: str) -> str | None:
        with self.sessions() as session:
            return session.scalar(select(Subscriber.status).where(Subscriber.email == email))

    def add_active(self, email: str, *topics: str) -> int:
        with self.sessions() as session:
            new = NewSubscriber(email=email, preferences=Preferences.from_lists(topics=list(topics)), timezone="Europe/Berlin")
            subscriber_id = subscriptions.add(session, self.settings, new).id
            session.commit()
        return subscriber_id

    def path(self, purpose: str, subscriber_id: int) -> str:
        return f"/{purpose}/{tokens.make_token(secret_key=SECRET_KEY, purpose=purpose, subscriber_id=subscriber_id)}"


SIGN_UP = {"topics": "diffusion models", "categories": ["cs.LG"], "describe": "", "timezone": "Europe/Berlin", "send_hour": "7",
           "frequency": "daily", "weekday": "0", "max_papers": "5"}


def front_settings(database_url: str, outbox: Path, **overrides: object) -> Settings:
    return Settings(database_url=database_url, secret_key=SECRET_KEY, from_address="digest@example.org",  # type: ignore[arg-type]
                    base_url="https://digest.example.org", email_backend="file", outbox_dir=outbox, _env_file=None, **overrides)


@pytest.fixture
def front(sqlite_url: str, tmp_path: Path) -> Iterator[Front]:
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    settings = front_settings(sqlite_url, tmp_path / "outbox")
    app = create_app(settings=settings, sessions=sessions, limits=RateLimits(subscribe_per_hour=1_000, posts_per_minute=1_000))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Front(client, sessions, settings, tmp_path / "outbox")
    engine.dispose()
