"""Databases with due digests, fast: the fixture feed ingested, subscribers bulk-imported, every digest planned."""

from __future__ import annotations

import datetime as dt
import random

from sqlalchemy import func, select

from newsletter.db import repo
from newsletter.db.models import Delivery, DeliveryStatus, Subscriber
from newsletter.ingest.fetch import Fetcher, make_client
from newsletter.ingest.run import ingest_sources
from newsletter.ingest.sources import SourceSpec
from newsletter.plan import plan_due
from newsletter.records import NewSubscriber, Preferences
from newsletter.runtime import Runtime
from newsletter.settings import Settings
from tests.conftest import FIXTURES

SECRET = "test-secret-key-0123456789abcdefghij"
TOPICS = ["diffusion models", "language models", "reinforcement learning", "graph neural networks", "transformers",
          "optimization", "federated learning", "robustness"]


def settings_for(database_url: str, **extra: object) -> Settings:
    """Settings for a sending installation; every subscriber gets an email (quiet days too), so counts are exact."""
    values: dict[str, object] = dict(database_url=database_url, secret_key=SECRET, from_address="digest@example.org",
                                     send_empty_digest=True, base_url="https://digest.example.org", _env_file=None)
    return Settings(**{**values, **extra})  # type: ignore[arg-type]


def seed(runtime: Runtime, subscribers: int) -> None:
    """The fixture arXiv feed and ``subscribers`` readers (reader00000@example.org …), all due at ``due_moment``."""
    with make_client(timeout_s=5) as client:
        ingest_sources([SourceSpec(str(FIXTURES / "arxiv_cs_lg.rss"), "arxiv-rss")], sessions=runtime.sessions,
                       fetcher=Fetcher(client=client, max_bytes=50_000_000), now=dt.datetime.now(dt.UTC).replace(tzinfo=None))
    rng = random.Random(12)
    people = [NewSubscriber(email=reader(i), max_papers=3, preferences=Preferences.from_lists(topics=rng.sample(TOPICS, 2)))
              for i in range(subscribers)]
    with runtime.sessions() as session:
        repo.import_subscribers(session, subscribers=people)
        session.commit()


def reader(number: int) -> str:
    return f"reader{number:05d}@example.org"


def due_moment(runtime: Runtime) -> dt.datetime:
    with runtime.sessions() as session:
        latest = session.scalar(select(func.max(Subscriber.next_send_at)))
    assert latest is not None
    return (latest + dt.timedelta(minutes=1)).replace(tzinfo=dt.UTC)


def plan_everyone(runtime: Runtime) -> list[tuple[int, dt.date]]:
    """Plan every digest; returns the pending deliveries as (id, issue date)."""
    plan_due(runtime, now=due_moment(runtime))
    with runtime.sessions() as session:
        return [(i, d) for i, d in session.execute(select(Delivery.id, Delivery.issue_date)
                                                   .where(Delivery.status == DeliveryStatus.PENDING).order_by(Delivery.id))]
