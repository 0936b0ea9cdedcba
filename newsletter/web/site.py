"""What every page handler of the web front shares: the runtime, the pages, the form guard, the rate limits."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter import notices
from newsletter.runtime import Runtime
from newsletter.settings import Settings
from newsletter.subscriptions import Notice
from newsletter.web.csrf import FIELD, FormGuard
from newsletter.web.pages import Pages
from newsletter.web.ratelimit import RateLimiter

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_FORM_FIELDS = 200  # the preferences form has ~45 (categories are one field each)


@dataclass(frozen=True)

class Site:
    runtime: Runtime
    pages: Pages
    guard: FormGuard
    limiter: RateLimiter

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    async def db(self, work: Callable[[Session], T]) -> T:
        """``work(session)`` in a new session, in the thread pool: a locked SQLite holds up this request, not the event loop."""

        def run() -> T:
            with self.runtime.sessions() as session:
                return work(session)

        return await run_in_threadpool(run)

    def form_page(self, request: Request, name: str, *, status: int = 200, action: str | None = None, **context: Any) -> Response:
        """A page with a form that posts to ``action`` (default: back to this page), with its CSRF token (and cookie)."""
        token = self.guard.token(request, action=action)
        response = self.pages.render(name, status=status, action=action or request.url.path, csrf_field=FIELD,
                                     csrf_token=token.value, **context)
        return self.guard.remember(request, response, token)

    async def posted_form(self, request: Request, *buckets: str) -> FormData:
        """A POSTed form, counted against the rate limits first and checked against CSRF."""
        self.limiter.hit(request, "post", *buckets)
        form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
        self.guard.check(request, form)
        return form

    async def send_notices(self, found: Sequence[Notice | None]) -> None:
        """Send notices after the response has gone (a background task): the answer's timing tells nothing."""
        try:
            await notices.send_notices(self.runtime, found)
        except Exception:  # the visitor has their answer already; the admin has the log
            log.exception("a notice could not be sent")


Endpoint = Callable[[Request], Awaitable[Response]]


def page_and_form(path: str, *, get: Endpoint, post: Endpoint) -> Route:
    """One route for a page (GET, HEAD) and the form it posts (POST): two routes for one path answered any
    other method with the first one's ``Allow``, which left out POST."""

    async def endpoint(request: Request) -> Response:
        return await (post if request.method == "POST" else get)(request)

    return Route(path, endpoint, methods=["GET", "POST"])
