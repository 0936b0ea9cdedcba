"""The web app over a real, migrated database: a subscriber, two papers, links signed as emails sign them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from newsletter import tokens
from newsletter.db import repo
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Feedback, Paper
from newsletter.records import NewSubscriber
from newsletter.settings import Settings
from newsletter.web.app import create_app
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
