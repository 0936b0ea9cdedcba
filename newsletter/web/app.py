"""The minimal web app: "more / less like this" links from emails. ``newsletter serve`` runs it.

The link carries a token signed for the subscriber (one per digest) plus the paper and the
direction; a click stores the feedback and answers a one-line page. No login, no cookies.
"""

from __future__ import annotations

from html import escape

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from newsletter import tokens
from newsletter.db import repo
from newsletter.db.models import Paper
from newsletter.errors import InvalidInput
from newsletter.settings import Settings

PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title></head><body style="font-family:sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem">
<p>{body}</p></body></html>"""


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title=escape(title), body=body), status_code=status)


def create_app(*, settings: Settings, sessions: sessionmaker[Session]) -> Starlette:
    settings.require("secret_key", purpose="checking the links in emails")

    async def feedback(request: Request) -> HTMLResponse:
        direction = request.path_params["direction"]
        if direction not in ("up", "down"):
            return page("Not found", "This link is not one we sent.", 404)
        try:
            subscriber_id = tokens.read_token(request.path_params["token"], secret_key=settings.secret_key or "",
                                              purpose=tokens.FEEDBACK)
        except InvalidInput as exc:
            return page("Invalid link", escape(str(exc)), 400)
        with sessions() as session:
            paper = session.get(Paper, request.path_params["paper_id"])
            if paper is None:
                return page("Not found", "That paper is no longer in our records.", 404)
            repo.record_feedback(session, subscriber_id=subscriber_id, paper_id=paper.id, value=1 if direction == "up" else -1)
            session.commit()
            title = paper.title
        more = "more" if direction == "up" else "fewer"
        return page("Thanks", f"Thanks: your next digests will have {more} papers like “{escape(title)}”.")

    return Starlette(routes=[Route("/feedback/{token}/{paper_id:int}/{direction}", feedback)])
