""""More / less like this" links from emails.

Each link names one subscriber and one paper in a signed token that expires (``tokens``); the
direction is in the path. Mail scanners open every link in a message, so opening one (GET or
HEAD) only shows the paper and a button; pressing it (POST) stores the feedback.

No cookie and no CSRF token on that button: the signed token in the URL is the capability, and only
its subscriber has it. A forged cross-site POST needs the URL, and whoever has the URL can press the
button anyway; the POST is idempotent (the latest word counts).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter import subscriptions, tokens
from newsletter.db.models import Paper, Subscriber
from newsletter.errors import InvalidInput
from newsletter.web.pages import Refused, sentence
from newsletter.web.site import Site, page_and_form

DIRECTIONS = {"up": 1, "down": -1}  # the stored feedback value


@dataclass(frozen=True, slots=True)
class FeedbackLink:
    subscriber_id: int
    paper_id: int
    value: int  # +1 more like this, -1 less like this

    @property
    def up(self) -> bool:
        return self.value > 0


def read_link(request: Request, *, secret_key: str, max_age: dt.timedelta) -> FeedbackLink:
    """The link's path checked without the database: direction, paper id, token for that paper."""
    value = DIRECTIONS.get(request.path_params["direction"])
    paper_id: int = request.path_params["paper_id"]
    if value is None or not 0 < paper_id <= tokens.MAX_ROW_ID:
        raise Refused(404, "Not found", "This link is not one we sent.")
    try:
        subscriber_id, signed_paper_id = tokens.read_feedback_token(request.path_params["token"], secret_key=secret_key,
                                                                    max_age=max_age)
    except tokens.ExpiredLink as exc:
        raise Refused(410, "Link expired", sentence(str(exc))) from None
    except InvalidInput as exc:
        raise Refused(400, "Invalid link", sentence(str(exc))) from None
    if signed_paper_id != paper_id:  # a token is good for its own paper only
        raise Refused(400, "Invalid link", "This link is not valid for that paper; use the one under the paper in the email.")
    return FeedbackLink(subscriber_id, paper_id, value)


def paper_title(session: Session, link: FeedbackLink) -> str:
    if session.get(Subscriber, link.subscriber_id) is None:  # removed: ids are never reused, so the link is dead
        raise Refused(410, "Not subscribed", "This link belongs to a subscription that no longer exists.")
    paper = session.get(Paper, link.paper_id)
    if paper is None:
        raise Refused(404, "Not found", "That paper is no longer in our records.")
    return paper.title


class FeedbackPages:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.max_age = dt.timedelta(days=site.settings.feedback_link_days)

    def routes(self) -> list[Route]:
        path = "/feedback/{token}/{paper_id:int}/{direction}"
        return [page_and_form(path, get=self.confirm, post=self.feedback)]

    async def _answer(self, request: Request, work: Callable[[Session, FeedbackLink], str], page: str) -> Response:
        """Check the link, do ``work`` with it off the event loop (a locked SQLite stalls nobody else), show ``page``."""
        link = read_link(request, secret_key=self.site.settings.secret_key or "", max_age=self.max_age)
        title = await self.site.db(lambda session: work(session, link))
        return self.site.pages.render(page, title="More like this?" if link.up else "Less like this?",
                                      paper_title=title, up=link.up)

    async def confirm(self, request: Request) -> Response:
        """GET and HEAD: the paper and a button. Safe to prefetch: it changes nothing."""
        return await self._answer(request, paper_title, "feedback")

    async def feedback(self, request: Request) -> Response:
        """POST: store the feedback."""
        self.site.limiter.hit(request, "post")

        def record(session: Session, link: FeedbackLink) -> str:
            title = paper_title(session, link)
            subscriptions.record_feedback(session, subscriber_id=link.subscriber_id, paper_id=link.paper_id, value=link.value)
            session.commit()
            return title

        return await self._answer(request, record, "feedback-recorded")
