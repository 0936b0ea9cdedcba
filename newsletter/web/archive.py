"""The archive ("view in browser"): the digest a subscriber was sent on a date, as it was sent.

``GET /digest/{YYYY-MM-DD}/{token}`` with the subscriber's VIEW token from that digest. The page is
the email's own HTML (``issue.archived_html``), so it gets a policy of its own: inline styles (an
email's CSS is inlined into ``style`` attributes) and nothing else, in a sandbox (no scripts, no forms).
"""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from newsletter import issue, tokens
from newsletter.web.pages import Refused
from newsletter.web.preferences import subscriber_id_of
from newsletter.web.site import Site

ISSUE_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
ARCHIVE_POLICY = "; ".join([
    "default-src 'none'",
    "style-src 'unsafe-inline'",  # styles only: the email's inlined CSS; scripts stay forbidden by default-src
    "img-src https: data:",
    "form-action 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
    "sandbox allow-popups allow-popups-to-escape-sandbox allow-top-navigation-by-user-activation",
])


def issue_date_of(request: Request) -> dt.date:
    text = request.path_params["issue_date"]
    try:
        if not ISSUE_DATE.fullmatch(text):
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        raise Refused(404, "Not found", "There is no digest of that date: the link may have been cut off.") from None


class ArchivePages:
    def __init__(self, site: Site) -> None:
        self.site = site

    def routes(self) -> list[Route]:
        return [Route("/digest/{issue_date}/{token}", self.page, methods=["GET"])]

    async def page(self, request: Request) -> Response:
        site = self.site
        issue_date = issue_date_of(request)
        subscriber_id = subscriber_id_of(request, secret_key=site.settings.secret_key or "", purpose=tokens.VIEW)

        def find(session: Session) -> str | None:
            return issue.archived_html(session, settings=site.settings, templates=site.runtime.templates,
                                       subscriber_id=subscriber_id, issue_date=issue_date)

        html = await site.db(find)
        if html is None:
            raise Refused(404, "No digest that day", f"No digest was sent to you on {issue_date:%A %-d %B %Y}.")
        return HTMLResponse(html, headers={"Content-Security-Policy": ARCHIVE_POLICY})
