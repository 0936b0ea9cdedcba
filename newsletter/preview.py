"""``newsletter preview``: the digest one subscriber would get, rendered, with nothing sent or recorded.

If the subscriber has a delivery for the date (by default their local date now), its recorded picks
are shown: what was or will be sent. Otherwise their papers are scored now, as their next digest would be.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from newsletter.db import ledger, repo
from newsletter.db.ledger import DueDelivery
from newsletter.issue import day_renderer, digest_for, recorded_picks
from newsletter.plan import preview_next
from newsletter.records import OutgoingEmail, RankedPaper
from newsletter.runtime import Runtime
from newsletter.schedule import local_date


def preview_digest(runtime: Runtime, *, email: str, issue_date: dt.date | None, now: dt.datetime) -> OutgoingEmail:
    """``issue_date`` None: today's digest (their local date at ``now``, aware UTC) if recorded, else their next one."""
    settings = runtime.settings
    settings.require("secret_key", purpose="rendering links in a digest")
    recorded = None
    with runtime.sessions() as session:
        subscriber = repo.get_subscriber(session, email=email)
        exclude = repo.preferences_record(subscriber.preferences).exclude
        recorded = repo.deliveries_on(session, issue_date=issue_date or local_date(subscriber.timezone, now)).get(subscriber.id)
        if recorded is not None:
            issue_date = recorded.issue_date
        picks: Sequence[RankedPaper]
        if recorded is not None:
            items = ledger.delivery_items(session, delivery_ids=[recorded.id])[recorded.id]
            picks = recorded_picks(items, repo.papers_by_id(session, ids=[paper_id for paper_id, _, _ in items]))
            message_id = recorded.message_id
    if recorded is None:
        [pick] = preview_next(runtime, now=now, email=email).picks
        picks, issue_date = pick.papers, issue_date or pick.issue_date
        message_id = f"<preview.{issue_date:%Y%m%d}.{subscriber.id}@{settings.from_domain}>"
    assert issue_date is not None
    with runtime.sessions() as session:
        renderer = day_renderer(session, settings=settings, templates=runtime.templates, issue_date=issue_date)
    delivery = DueDelivery(recorded.id if recorded else 0, subscriber.id, subscriber.email, message_id, issue_date)
    return renderer.render(digest_for(settings=settings, delivery=delivery, picks=picks, now=now,
                                      exclude=exclude))


__all__ = ["preview_digest"]
