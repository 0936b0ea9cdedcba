"""The web front: the subscriber's side of the list. ``newsletter serve`` runs it under uvicorn.

Pages: sign up (``/``, ``/subscribe``), "check your inbox", confirm (``/confirm/{token}``),
preferences with a preview (``/preferences/{token}``), unsubscribe and RFC 8058 one-click
(``/unsubscribe/{token}``), the archive (``/digest/{date}/{token}``), "more / less like this"
(``/feedback/…``) and ``/healthz``. Every page works without JavaScript.

Rules every handler keeps: a GET never changes anything (mail scanners open every link); every form
is CSRF-checked (``csrf``) except the one-click POST and the feedback button, whose URLs are their
authority; POSTs are rate-limited per IP (``ratelimit``); request bodies are capped
(``MAX_BODY_BYTES``); database work runs in the thread pool; a refusal is a page that says why,
with a 4xx status; every response carries the security headers (``headers``).
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from newsletter.render.digest import make_environment
from newsletter.runtime import Runtime, dkim_key
from newsletter.send.mailer import mailer_factory
from newsletter.settings import Settings
from newsletter.web.archive import ArchivePages
from newsletter.web.csrf import FormGuard
from newsletter.web.feedback import FeedbackPages
from newsletter.web.headers import SecurityHeaders, security_headers
from newsletter.web.pages import Pages, Refused
from newsletter.web.preferences import PreferencesPages
from newsletter.web.ratelimit import RateLimiter, RateLimits
from newsletter.web.site import Site
from newsletter.web.subscribe import SubscribePages
from newsletter.web.unsubscribe import UnsubscribePages

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024  # the largest honest form (preferences, every list full) is ~20 KB
HTTP_ERRORS = {
    400: ("Bad request", "This page could not read what was sent. Go back and try again."),
    404: ("Not found", "There is no such page."),
    405: ("Not allowed", "This page does not answer that request."),
    413: ("Too much", "What was sent is too large for this form. Shorten it and send it again."),
}


class WebApp(Starlette):
    """Starlette with the security headers outside everything, so that even a 500 page has them."""

    def __init__(self, *, headers: dict[str, str], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.security_headers = headers

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack(), headers=self.security_headers)


def runtime_for(settings: Settings, sessions: sessionmaker[Session]) -> Runtime:
    """The web process's runtime over the caller's sessions (``newsletter serve`` passes its own)."""
    return Runtime(settings=settings, engine=sessions.kw["bind"], sessions=sessions, templates=make_environment(),
                   connect=mailer_factory(settings), dkim=dkim_key(settings))


def create_app(*, settings: Settings, sessions: sessionmaker[Session], limits: RateLimits | None = None) -> Starlette:
    settings.require("secret_key", purpose="checking the links in emails")
    runtime = runtime_for(settings, sessions)
    pages = Pages(templates=runtime.templates, list_name=settings.list_name)
    site = Site(runtime=runtime, pages=pages, guard=FormGuard(secret_key=settings.secret_key or "", base_url=settings.base_url),
                limiter=RateLimiter(limits or RateLimits(subscribe_per_hour=settings.subscribe_per_ip_per_hour),
                                    trusted_proxy=settings.trusted_proxy))

    async def healthz(request: Request) -> Response:
        def ping(session: Session) -> None:
            session.execute(text("SELECT 1"))

        try:
            await site.db(ping)
        except Exception as exc:  # any failure of the database is "not healthy", said in the log
            log.warning("health check: the database does not answer: %s", exc)
            return JSONResponse({"status": "error", "database": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        return pages.refused(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        title, words = HTTP_ERRORS.get(exc.status_code, (exc.detail, "This page does not answer that request."))
        return pages.message(title, words, status=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        return pages.message("Something went wrong", "This page failed on our side. Please try again in a few minutes.",
                             status=500)

    routes = [Route("/healthz", healthz, methods=["GET"])]
    for group in (SubscribePages, PreferencesPages, UnsubscribePages, ArchivePages, FeedbackPages):
        routes += group(site).routes()
    return WebApp(
        routes=routes,
        exception_handlers={Refused: refused, HTTPException: http_error, Exception: server_error},
        headers=security_headers(style_sources=pages.style_source, script_sources=pages.script_source),
        max_body_size=MAX_BODY_BYTES,
    )
