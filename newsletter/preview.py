"""``newsletter preview``: the digest one subscriber would get, rendered, with nothing sent or recorded.

If the subscriber already has a delivery for the date, its recorded picks are shown (what was or
will be sent); otherwise their papers are scored now, as the next run would.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import jinja2
from sqlalchemy.orm import Session, sessionmaker

from newsletter.db import repo
from newsletter.pipeline import day_renderer, digest_for, recorded_picks, score_subscribers
from newsletter.records import OutgoingEmail, RankedPaper
from newsletter.settings import Settings


def preview_digest(
    *, settings: Settings, sessions: sessionmaker[Session], templates: jinja2.Environment, email: str, issue_date: dt.date
) -> OutgoingEmail:
    settings.require("secret_key", purpose="rendering links in a digest")
    with sessions() as session:
        subscriber = repo.get_subscriber(session, email=email)
        recorded = repo.deliveries_on(session, issue_date=issue_date).get(subscriber.id)
        if recorded is not None:
            items = repo.delivery_items(session, delivery_ids=[recorded.id])[recorded.id]
            picks: Sequence[RankedPaper] = recorded_picks(items, repo.papers_by_id(session, ids=[paper_id for paper_id, _, _ in items]))
            message_id = recorded.message_id
        else:
            _, [picks] = score_subscribers(session, settings=settings, subscribers=[subscriber], issue_date=issue_date)
            message_id = f"<preview.{issue_date:%Y%m%d}.{subscriber.id}@{settings.from_domain}>"
        renderer = day_renderer(session, settings=settings, templates=templates, issue_date=issue_date)
    delivery = repo.DueDelivery(recorded.id if recorded else 0, subscriber.id, subscriber.email, message_id, issue_date)
    return renderer.render(digest_for(settings=settings, delivery=delivery, picks=picks))


__all__ = ["preview_digest"]
