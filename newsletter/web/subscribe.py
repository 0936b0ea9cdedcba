"""Joining: the sign-up form, "check your inbox", and the confirmation link's page and button.

The answer to a sign-up is the same page with the same status for every address (new, pending,
active, unsubscribed, forgotten, or over its daily limit of confirmation emails): the service
decides in the database whether a notice goes out, and it is sent after the response.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter import subscriptions, tokens, validate
from newsletter.db import repo
from newsletter.db.models import aware
from newsletter.errors import InvalidInput
from newsletter.records import NewSubscriber
from newsletter.settings import Settings
from newsletter.subscriptions import Notice, PendingConfirmation, UsedLink, Via
from newsletter.web import forms
from newsletter.web.forms import FormErrors, FormValues
from newsletter.web.pages import Refused, sentence
from newsletter.web.site import Site, page_and_form


def form_context(values: FormValues, errors: dict[str, str] | None = None) -> dict[str, Any]:
    """What the shared preference fields (``_fields.html.j2``) need."""
    chosen = set(values.categories)
    common = {code for code, _ in forms.COMMON_CATEGORIES}
    categories = [(code, name, code in chosen) for code, name in forms.COMMON_CATEGORIES]
    categories += [(code, "", True) for code in values.categories if code not in common]
    return {"values": values, "errors": errors or {}, "categories": categories, "time_zones": forms.time_zones(),
            "weekdays": list(enumerate(forms.WEEKDAY_NAMES)), "frequencies": forms.FREQUENCY_LABELS,
            "max_papers": validate.MAX_PAPERS}


def refuse_link(exc: InvalidInput) -> Refused:
    if isinstance(exc, tokens.ExpiredLink):
        return Refused(410, "Link expired", sentence(str(exc)))
    if isinstance(exc, UsedLink):
        return Refused(410, "Link already used", sentence(str(exc)))
    return Refused(400, "Invalid link", sentence(str(exc)))


def schedule_text(new: NewSubscriber) -> str:
    at = f"{new.send_hour:02d}:{new.send_minute:02d}"
    if new.frequency == "weekly":
        return f"every {forms.WEEKDAY_NAMES[new.send_weekday]} at {at} ({new.timezone})"
    days = "Monday to Friday" if new.frequency == "weekdays" else "every day"
    return f"{days} at {at} ({new.timezone})"


class SubscribePages:
    def __init__(self, site: Site) -> None:
        self.site = site

    def routes(self) -> list[Route]:
        return [
            Route("/", self.form, methods=["GET"]),
            page_and_form("/subscribe", get=self.form, post=self.subscribe),
            page_and_form("/confirm/{token}", get=self.confirm_page, post=self.confirm),
        ]

    async def form(self, request: Request) -> Response:
        return self.site.form_page(request, "subscribe", action="/subscribe", **form_context(FormValues()))

    async def subscribe(self, request: Request) -> Response:
        site = self.site
        form = await site.posted_form(request, "subscribe")
        values = FormValues.from_form(form)
        try:
            wanted = values.parse()
        except FormErrors as exc:
            return site.form_page(request, "subscribe", status=400, action="/subscribe", **form_context(values, exc.errors))
        if not site.settings.from_address:
            raise Refused(503, "Signing up is closed", "This server cannot send email yet, so it cannot confirm a sign-up. "
                                                       "Please try again later.")

        def ask(session: Session) -> Notice | None:
            notice = subscriptions.request_subscription(session, site.settings, wanted, via=Via.WEB)
            session.commit()
            return notice

        notice = await site.db(ask)
        return site.pages.render("check-inbox", title="Check your inbox", email=wanted.email,
                                 hours=round(site.settings.confirm_link_hours),
                                 background=BackgroundTask(site.send_notices, [notice]))

    async def confirm_page(self, request: Request) -> Response:
        """GET: what the link would confirm, and the button. Changes nothing (mail scanners open links)."""
        token = request.path_params["token"]

        def look(session: Session) -> PendingConfirmation:
            return subscriptions.pending_confirmation(session, self.site.settings, token)

        try:
            pending = await self.site.db(look)
        except InvalidInput as exc:
            raise refuse_link(exc) from None
        return self.site.form_page(request, "confirm", title="Confirm your subscription" if not pending.subscribed
                                   else "Confirm the change", pending=pending,
                                   schedule=schedule_text(pending.change) if pending.change else None)

    async def confirm(self, request: Request) -> Response:
        site = self.site
        await site.posted_form(request)
        token = request.path_params["token"]

        def use(session: Session) -> tuple[int, str, str | None, bool]:
            row = subscriptions.confirm(session, site.settings, token)
            session.commit()
            return (row.id, row.email, when_text(row.next_send_at, row.timezone) if row.next_send_at else None,
                    repo.preferences_record(row.preferences).selects_nothing)

        try:
            subscriber_id, email, first_digest, selects_nothing = await site.db(use)
        except InvalidInput as exc:
            raise refuse_link(exc) from None
        # Subscribed by email ("subscribe"), with no interests yet: say so, rather than promise a digest.
        return site.pages.render("confirmed", title="You are subscribed", email=email,
                                 preferences_path=link_path(site.settings, tokens.PREFERENCES, subscriber_id),
                                 first_digest=None if selects_nothing else first_digest, needs_interests=selects_nothing)


def link_path(settings: Settings, purpose: str, subscriber_id: int) -> str:
    """The path of a subscriber's own page on this site (``/preferences/…``, ``/unsubscribe/…``)."""
    return f"/{purpose}/{tokens.make_token(secret_key=settings.secret_key or '', purpose=purpose, subscriber_id=subscriber_id)}"


def when_text(moment: dt.datetime, timezone: str) -> str:
    """A send moment (aware, or naive UTC) as the subscriber reads it: "Tuesday 2 December at 07:00 (Europe/Berlin)"."""
    local = aware(moment).astimezone(zoneinfo.ZoneInfo(timezone))
    return f"{local:%A} {local.day} {local:%B} at {local:%H:%M} ({timezone})"
