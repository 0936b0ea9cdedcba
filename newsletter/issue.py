"""One issue: the digest of one subscriber on one date, as sending, ``preview`` and the archive build it.

The picks come from the ledger (what was recorded when the digest was planned); the renderer of
the date carries that day's shared parts; ``digest_for`` adds the signed links; ``message_for``
turns it into the bytes handed to the relay, or the reason it cannot be built.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import jinja2
from sqlalchemy.orm import Session

from newsletter import tokens
from newsletter.db import ledger, repo
from newsletter.db.ledger import DueDelivery
from newsletter.db.models import utcnow
from newsletter.records import Digest, Envelope, Paper, RankedPaper
from newsletter.render.digest import DigestRenderer
from newsletter.render.mime import DkimKey, build_message
from newsletter.send.dispatch import OutboundMessage, one_line
from newsletter.send.mailer import crlf_only, wire_address
from newsletter.settings import Settings


def day_end(issue_date: dt.date) -> dt.datetime:
    return dt.datetime.combine(issue_date + dt.timedelta(days=1), dt.time())


def message_for(delivery: DueDelivery, *, settings: Settings, renderer: DigestRenderer,
         picks: Sequence[tuple[int, float, list[str]]], papers: dict[int, Paper], dkim: DkimKey | None,
         exclude: Sequence[str] = ()) -> OutboundMessage:
    """One delivery's message, or the reason it cannot be built. ``exclude``: the reader's excluded phrases."""
    recipient = settings.redirect_all_to or delivery.email
    sender = settings.from_address or ""
    try:
        email = renderer.render(digest_for(settings=settings, delivery=delivery, picks=recorded_picks(picks, papers),
                                            exclude=exclude))
        address, smtputf8 = wire_address(recipient)  # an IDN domain as xn--…; UTF-8 only before the @
        data = build_message(email, from_address=sender, list_name=settings.list_name, list_id=f"digest.{settings.from_domain}",
                             commands_address=settings.list_address,
                             date=utcnow(), to=recipient if smtputf8 else address, dkim_key=dkim)
    except Exception as exc:  # this digest fails alone, with the reason; the others go on
        return OutboundMessage(delivery.id, delivery.subscriber_id, Envelope(sender, recipient, delivery.message_id, b""),
                   failure=f"the message could not be built ({one_line(exc)})")
    return OutboundMessage(delivery.id, delivery.subscriber_id,
                           Envelope(sender, recipient, delivery.message_id, data, crlf_only=crlf_only(data)))


def day_trending(session: Session, *, settings: Settings, issue_date: dt.date) -> list[Paper]:
    """The "trending today" papers of an issue date, as of now: the most upvoted of its candidate window."""
    return repo.trending_papers(session, since=day_end(issue_date) - dt.timedelta(days=settings.candidate_window_days),
                                limit=settings.trending_count)


def day_renderer(session: Session, *, settings: Settings, templates: jinja2.Environment, issue_date: dt.date,
                 trending: Sequence[Paper] | None = None) -> DigestRenderer:
    """The renderer of one issue date, with that day's "trending today" papers (as of now unless given)."""
    if trending is None:
        trending = day_trending(session, settings=settings, issue_date=issue_date)
    return DigestRenderer(env=templates, list_name=settings.list_name, issue_date=issue_date, trending=trending)


def archived_html(session: Session, *, settings: Settings, templates: jinja2.Environment, subscriber_id: int,
                  issue_date: dt.date) -> str | None:
    """"View in browser": the HTML of the digest sent to this subscriber on this date, or None if none was sent.

    The same picks and reasons (recorded when it was planned), the same "trending today" section
    (recorded when it was built for sending; a digest sent before that was recorded shows the date's
    trending as of now) and the same links.
    """
    sent = ledger.sent_delivery(session, subscriber_id=subscriber_id, issue_date=issue_date)
    if sent is None:
        return None
    delivery = sent.delivery
    items = ledger.delivery_items(session, delivery_ids=[delivery.id])[delivery.id]
    papers = repo.papers_by_id(session, ids={paper_id for paper_id, _, _ in items} | set(sent.trending_ids or ()))
    if sent.sent_at is not None and papers:  # the upvotes the email showed, not today's
        then = repo.upvotes_as_of(session, paper_ids=papers, moment=sent.sent_at)
        papers = {paper_id: dataclasses.replace(paper, upvotes=then.get(paper_id)) for paper_id, paper in papers.items()}
    trending = None if sent.trending_ids is None else [papers[i] for i in sent.trending_ids if i in papers]
    renderer = day_renderer(session, settings=settings, templates=templates, issue_date=issue_date, trending=trending)
    # Recorded: as it was shown. Not recorded: the date's trending as of now, less what the reader excludes now.
    exclude = () if trending is not None else repo.exclusions_of(session, subscriber_ids=[subscriber_id]).get(subscriber_id, ())
    return renderer.render(digest_for(settings=settings, delivery=delivery, picks=recorded_picks(items, papers),
                                      exclude=exclude)).html


def recorded_picks(items: Sequence[tuple[int, float, list[str]]], papers: dict[int, Paper]) -> tuple[RankedPaper, ...]:
    """A delivery's picks as recorded in the ledger: (paper id, score, reasons) → RankedPaper."""
    return tuple(RankedPaper(papers[paper_id], score, tuple(reasons)) for paper_id, score, reasons in items)


def digest_for(*, settings: Settings, delivery: DueDelivery, picks: Sequence[RankedPaper],
               now: dt.datetime | None = None, exclude: Sequence[str] = ()) -> Digest:
    """One delivery's digest with its signed links.

    Each paper's "more / less like this" link names the subscriber and that paper, issued at the
    start (UTC) of the day before the issue date, or at ``now`` (aware UTC) while that is still
    ahead. A local issue date never starts more than a day after UTC's (UTC+14), so when a digest is
    sent that moment has passed: the email, a resend and the archive carry the same links, and they
    expire ``feedback_link_days`` after that.
    """
    secret = settings.secret_key or ""
    base = settings.base_url.rstrip("/")

    def token(purpose: str) -> str:
        return tokens.make_token(secret_key=secret, purpose=purpose, subscriber_id=delivery.subscriber_id)

    day_before = dt.datetime.combine(delivery.issue_date - dt.timedelta(days=1), dt.time(), dt.UTC)
    feedback = tokens.feedback_signer(secret_key=secret, issued_at=min(day_before, now or dt.datetime.now(dt.UTC)))

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
        exclude=tuple(exclude),
    )
