"""One issue: the digest of one subscriber on one date, as sending, ``preview`` and the archive build it.

The picks come from the ledger (what was recorded when the digest was planned); the renderer of
the date carries that day's shared parts; ``digest_for`` adds the signed links; ``message_for``
turns it into the bytes handed to the relay, or the reason it cannot be built.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import jinja2
from sqlalchemy.orm import Session

from newsletter import tokens
from newsletter.db import repo
from newsletter.db.ledger import DueDelivery
from newsletter.db.models import utcnow
from newsletter.records import Digest, Envelope, Paper, RankedPaper
from newsletter.render.digest import DigestRenderer
from newsletter.render.mime import DkimKey, build_message
from newsletter.send.dispatch import OutboundMessage, one_line
from newsletter.send.mailer import wire_address
from newsletter.settings import Settings


def day_end(issue_date: dt.date) -> dt.datetime:
    return dt.datetime.combine(issue_date + dt.timedelta(days=1), dt.time())


def message_for(delivery: DueDelivery, *, settings: Settings, renderer: DigestRenderer,
         picks: Sequence[tuple[int, float, list[str]]], papers: dict[int, Paper], dkim: DkimKey | None) -> OutboundMessage:
    """One delivery's message, or the reason it cannot be built."""
    recipient = settings.redirect_all_to or delivery.email
    sender = settings.from_address or ""
    try:
        email = renderer.render(digest_for(settings=settings, delivery=delivery, picks=recorded_picks(picks, papers)))
        address, smtputf8 = wire_address(recipient)  # an IDN domain as xn--…; UTF-8 only before the @
        data = build_message(email, from_address=sender, list_name=settings.list_name, list_id=f"digest.{settings.from_domain}",
                             date=utcnow(), to=recipient if smtputf8 else address, dkim_key=dkim)
    except Exception as exc:  # this digest fails alone, with the reason; the others go on
        return OutboundMessage(delivery.id, delivery.subscriber_id, Envelope(sender, recipient, delivery.message_id, b""),
                   failure=f"the message could not be built ({one_line(exc)})")
    return OutboundMessage(delivery.id, delivery.subscriber_id, Envelope(sender, recipient, delivery.message_id, data))


def day_renderer(session: Session, *, settings: Settings, templates: jinja2.Environment, issue_date: dt.date) -> DigestRenderer:
    """The renderer of one issue date, with that day's "trending today" papers."""
    trending = repo.trending_papers(session, since=day_end(issue_date) - dt.timedelta(days=settings.candidate_window_days),
                                    limit=settings.trending_count)
    return DigestRenderer(env=templates, list_name=settings.list_name, issue_date=issue_date, trending=trending)


def recorded_picks(items: Sequence[tuple[int, float, list[str]]], papers: dict[int, Paper]) -> tuple[RankedPaper, ...]:
    """A delivery's picks as recorded in the ledger: (paper id, score, reasons) → RankedPaper."""
    return tuple(RankedPaper(papers[paper_id], score, tuple(reasons)) for paper_id, score, reasons in items)


def digest_for(*, settings: Settings, delivery: DueDelivery, picks: Sequence[RankedPaper],
               now: dt.datetime | None = None) -> Digest:
    """One delivery's digest with its signed links.

    Each paper's "more / less like this" link names the subscriber and that paper, issued at the
    start of the issue date (UTC), or at ``now`` (aware UTC) while that is still ahead: every render
    of a delivery carries the same links, and they expire ``feedback_link_days`` after its date.
    """
    secret = settings.secret_key or ""
    base = settings.base_url.rstrip("/")

    def token(purpose: str) -> str:
        return tokens.make_token(secret_key=secret, purpose=purpose, subscriber_id=delivery.subscriber_id)

    day_start = dt.datetime.combine(delivery.issue_date, dt.time(), dt.UTC)
    feedback = tokens.feedback_signer(secret_key=secret, issued_at=min(day_start, now or dt.datetime.now(dt.UTC)))

    def feedback_url(paper: Paper) -> str:
        if paper.id is None:  # not stored: nothing a link could name
            return ""
        return f"{base}/feedback/{feedback.token(subscriber_id=delivery.subscriber_id, paper_id=paper.id)}/{paper.id}"

    return Digest(
        email=delivery.email,
        issue_date=delivery.issue_date,
        papers=tuple(picks),
        unsubscribe_url=f"{base}/unsubscribe/{token(tokens.UNSUBSCRIBE)}",
        preferences_url=f"{base}/preferences/{token(tokens.PREFERENCES)}",
        view_url=f"{base}/digest/{delivery.issue_date.isoformat()}/{token(tokens.VIEW)}",
        message_id=delivery.message_id,
        feedback_urls=tuple(feedback_url(pick.paper) for pick in picks),
    )
