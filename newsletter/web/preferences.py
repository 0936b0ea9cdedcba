"""The preferences page behind the magic link in every digest: everything editable, a preview, then save.

No password: the untimed, per-subscriber PREFERENCES token in the link is the authority (it arrived
in the subscriber's inbox). "Preview" re-renders the page with the papers the next digest would
carry with the settings on the form, and their reasons; "Save" stores them. Both are POSTs with
the form's CSRF token; only "Save" changes anything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter import subscriptions, tokens
from newsletter.db.models import Subscriber, SubscriberStatus
from newsletter.errors import InvalidInput, NotFound
from newsletter.records import NewSubscriber, RankedPaper
from newsletter.render.digest import outside_text_made_inert
from newsletter.subscriptions import Via
from newsletter.web import live_preview
from newsletter.web.forms import FormErrors, FormValues
from newsletter.web.pages import Refused, sentence
from newsletter.web.site import Site, page_and_form
from newsletter.web.subscribe import form_context, link_path, schedule_text, when_text

EDITABLE = (SubscriberStatus.ACTIVE, SubscriberStatus.PAUSED)


@dataclass(frozen=True, slots=True)
class PreviewShown:
    """The preview as the page shows it."""

    when: str
    candidates: int
    papers: tuple[RankedPaper, ...]  # their text without control characters, links only when http(s)


def subscriber_id_of(request: Request, *, secret_key: str, purpose: str) -> int:
    try:
        return tokens.read_token(request.path_params["token"], secret_key=secret_key, purpose=purpose)
    except InvalidInput as exc:
        raise Refused(400, "Invalid link", sentence(str(exc))) from None


def editable(session: Session, subscriber_id: int) -> Subscriber:
    try:
        row = subscriptions.subscriber(session, subscriber_id)
    except NotFound as exc:
        raise Refused(410, "Not subscribed", sentence(str(exc))) from None
    if row.status not in EDITABLE:
        raise Refused(410, "Not subscribed", "This address is not subscribed now, so there is nothing to change. "
                                             "To subscribe again, sign up on the front page (a new confirmation is needed).")
    return row


class PreferencesPages:
    def __init__(self, site: Site) -> None:
        self.site = site

    def routes(self) -> list[Route]:
        path = "/preferences/{token}"
        return [page_and_form(path, get=self.page, post=self.post)]

    def _id(self, request: Request) -> int:
        return subscriber_id_of(request, secret_key=self.site.settings.secret_key or "", purpose=tokens.PREFERENCES)

    def _render(self, request: Request, row_id: int, email: str, values: FormValues, *, status: int = 200,
                errors: dict[str, str] | None = None, preview: PreviewShown | None = None, saved: str | None = None) -> Response:
        settings = self.site.settings
        return self.site.form_page(request, "preferences", status=status, title="Your preferences", email=email,
                                   preview=preview, saved=saved,
                                   unsubscribe_path=link_path(settings, tokens.UNSUBSCRIBE, row_id),
                                   **form_context(values, errors))

    async def page(self, request: Request) -> Response:
        subscriber_id = self._id(request)

        def load(session: Session) -> tuple[str, NewSubscriber]:
            row = editable(session, subscriber_id)
            return row.email, subscriptions.as_new_subscriber(row)

        email, current = await self.site.db(load)
        return self._render(request, subscriber_id, email, FormValues.from_subscription(current))

    async def post(self, request: Request) -> Response:
        site = self.site
        subscriber_id = self._id(request)  # a forged link is refused before the form is even read
        form = await site.posted_form(request)
        values = FormValues.from_form(form)
        saving = form.get("action") == "save"

        def work(session: Session) -> tuple[str, PreviewShown | str]:
            row = editable(session, subscriber_id)
            wanted = values.parse(email=row.email, keep=subscriptions.as_new_subscriber(row))
            if saving:
                subscriptions.update_preferences(session, site.settings, row.id, wanted, via=Via.WEB)
                session.commit()
                return row.email, f"Saved. Your digest comes {schedule_text(wanted)}."
            found = live_preview.preview(site.runtime, session, row=row, wanted=wanted, now=dt.datetime.now(dt.UTC))
            shown = tuple(dataclasses.replace(pick, paper=outside_text_made_inert(pick.paper)) for pick in found.papers)
            return row.email, PreviewShown(when_text(found.send_at, wanted.timezone), found.candidates, shown)

        try:
            email, outcome = await site.db(work)
        except FormErrors as exc:
            email = await site.db(lambda session: editable(session, subscriber_id).email)
            return self._render(request, subscriber_id, email, values, status=400, errors=exc.errors)
        if isinstance(outcome, str):
            return self._render(request, subscriber_id, email, values, saved=outcome)
        return self._render(request, subscriber_id, email, values, preview=outcome)
