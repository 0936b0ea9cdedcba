"""The minimal web app: "more / less like this" links from emails. ``newsletter serve`` runs it.

Each link names one subscriber and one paper in a signed token that expires (``tokens``); the
direction is in the path. Mail scanners open every link in a message, so opening one (GET or
HEAD) only shows the paper and a button; pressing it (POST) stores the feedback. No login, no
cookies. Database work runs in the thread pool: a locked SQLite holds up the request that waits
for it, never the event loop and every other request.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from newsletter import tokens
from newsletter.db import repo
from newsletter.db.models import Paper, Subscriber
from newsletter.errors import InvalidInput
from newsletter.settings import Settings
from newsletter.web import pages
from newsletter.web.headers import SecurityHeaders, security_headers, style_hash

MAX_ROW_ID = 2**63 - 1  # SQLite's largest INTEGER: a larger id names no row and cannot even be bound
DIRECTIONS = {"up": 1, "down": -1}  # the stored feedback value


class Refused(Exception):
    """A link that cannot act, with the page that says why."""

    def __init__(self, status: int, title: str, text: str) -> None:
        super().__init__(text)
        self.status, self.title, self.text = status, title, text

    def page(self) -> HTMLResponse:
        return pages.message(self.title, self.text, self.status)


@dataclass(frozen=True, slots=True)
class FeedbackLink:
    subscriber_id: int
    paper_id: int
    value: int  # +1 more like this, -1 less like this

    @property
    def up(self) -> bool:
        return self.value > 0


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def read_link(request: Request, *, secret_key: str, max_age: dt.timedelta) -> FeedbackLink:
    """The link's path checked without the database: direction, paper id, token for that paper."""
    value = DIRECTIONS.get(request.path_params["direction"])
    paper_id: int = request.path_params["paper_id"]
    if value is None or not 0 < paper_id <= MAX_ROW_ID:
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


class WebApp(Starlette):
    """Starlette with the security headers outside everything, so that even a 500 page has them."""

    def __init__(self, *, headers: dict[str, str], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.security_headers = headers

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack(), headers=self.security_headers)


def create_app(*, settings: Settings, sessions: sessionmaker[Session]) -> Starlette:
    settings.require("secret_key", purpose="checking the links in emails")
    secret_key, max_age = settings.secret_key or "", dt.timedelta(days=settings.feedback_link_days)

    def look_up(link: FeedbackLink) -> str:
        with sessions() as session:
            return paper_title(session, link)

    def record(link: FeedbackLink) -> str:
        with sessions() as session:
            title = paper_title(session, link)
            repo.record_feedback(session, subscriber_id=link.subscriber_id, paper_id=link.paper_id, value=link.value)
            session.commit()
        return title

    async def answer(request: Request, work: Callable[[FeedbackLink], str], page: Callable[..., Response]) -> Response:
        """Check the link, do ``work`` with it off the event loop (a locked SQLite stalls nobody else), show ``page``."""
        try:
            link = read_link(request, secret_key=secret_key, max_age=max_age)
            title = await run_in_threadpool(work, link)
        except Refused as refused:
            return refused.page()
        return page(paper_title=title, up=link.up)

    async def confirm(request: Request) -> Response:
        """GET and HEAD: the paper and a button. Safe to prefetch: it changes nothing."""
        return await answer(request, look_up, pages.confirm_feedback)

    async def feedback(request: Request) -> Response:
        """POST: store the feedback.

        No cookie and no CSRF token: the signed token in the URL is the capability, and only its
        subscriber has it. A forged cross-site POST needs the URL, and whoever has the URL can
        press the button anyway.
        """
        return await answer(request, record, pages.feedback_recorded)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        text = "There is no such page." if exc.status_code == 404 else "This page does not answer that request."
        return pages.page(exc.detail, f"<p>{text}</p>", exc.status_code, headers=exc.headers)

    path = "/feedback/{token}/{paper_id:int}/{direction}"
    return WebApp(
        routes=[Route(path, confirm, methods=["GET"]), Route(path, feedback, methods=["POST"])],
        exception_handlers={HTTPException: http_error},
        headers=security_headers(style_sources=style_hash(pages.CSS)),
    )
