"""Leaving: the footer link's page and button, and RFC 8058 one-click unsubscribe.

``GET /unsubscribe/{token}`` shows a button (mail scanners open links: a GET changes nothing).
``POST /unsubscribe/{token}`` with the body ``List-Unsubscribe=One-Click`` (form-encoded or
multipart, as RFC 8058 allows) is the mail provider's one-click request: no cookie, no CSRF token,
answered 200 with a short body and no redirect. Any other POST is the button, CSRF-checked.
Either takes effect before the very next send (the send path re-checks the status).
"""

from __future__ import annotations

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from newsletter import subscriptions, tokens
from newsletter.db.models import SubscriberStatus
from newsletter.errors import InvalidInput, NotFound
from newsletter.subscriptions import Via
from newsletter.web.pages import Refused, sentence
from newsletter.web.preferences import subscriber_id_of
from newsletter.web.site import MAX_FORM_FIELDS, Site, page_and_form
from newsletter.web.subscribe import link_path

ONE_CLICK_FIELD, ONE_CLICK_VALUE = "List-Unsubscribe", "One-Click"
GONE = "This link belongs to a subscription that no longer exists."


class UnsubscribePages:
    def __init__(self, site: Site) -> None:
        self.site = site

    def routes(self) -> list[Route]:
        path = "/unsubscribe/{token}"
        return [page_and_form(path, get=self.page, post=self.post)]

    def _id(self, request: Request) -> int:
        return subscriber_id_of(request, secret_key=self.site.settings.secret_key or "", purpose=tokens.UNSUBSCRIBE)

    async def page(self, request: Request) -> Response:
        subscriber_id = self._id(request)

        def look(session: Session) -> tuple[str, str]:
            try:
                row = subscriptions.subscriber(session, subscriber_id)
            except NotFound:
                raise Refused(410, "Not subscribed", GONE) from None
            return row.email, row.status

        email, status = await self.site.db(look)
        if status == SubscriberStatus.UNSUBSCRIBED:
            return self.site.pages.render("unsubscribed", title="You are unsubscribed", email=email, already=True)
        return self.site.form_page(request, "unsubscribe", title="Unsubscribe?", email=email,
                                   preferences_path=link_path(self.site.settings, tokens.PREFERENCES, subscriber_id))

    async def post(self, request: Request) -> Response:
        site = self.site
        token = request.path_params["token"]
        form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
        if form.get(ONE_CLICK_FIELD) == ONE_CLICK_VALUE:
            return await self.one_click(request, token)
        site.limiter.hit(request, "post")
        subscriber_id = self._id(request)
        site.guard.check(request, form)

        def leave(session: Session) -> str:
            try:
                row = subscriptions.subscriber(session, subscriber_id)
            except NotFound:
                raise Refused(410, "Not subscribed", GONE) from None
            subscriptions.unsubscribe(session, site.settings, subscriber_id, via=Via.WEB)
            session.commit()
            return row.email

        email = await site.db(leave)
        return site.pages.render("unsubscribed", title="You are unsubscribed", email=email, already=False)

    async def one_click(self, request: Request, token: str) -> Response:
        """RFC 8058: the provider needs a 2xx and nothing else; the body is for a person reading logs."""
        site = self.site
        try:
            site.limiter.hit(request, "one-click")
        except Refused as refused:
            return PlainTextResponse("Too many requests.\n", status_code=429, headers=refused.headers)

        def leave(session: Session) -> None:
            subscriptions.unsubscribe_by_token(session, site.settings, token, via=Via.ONE_CLICK)
            session.commit()

        try:
            await site.db(leave)
        except InvalidInput as exc:
            return PlainTextResponse(sentence(str(exc)) + "\n", status_code=400)
        return PlainTextResponse("Unsubscribed.\n")
