"""CSRF protection for the web front's forms: a signed double-submit token bound to the form's path.

A browser gets a random id in a cookie (``HttpOnly``, ``SameSite=Strict``; ``__Host-`` and ``Secure``
over HTTPS) the first time it is shown a form. Each form carries a hidden ``csrf_token``: the form's
path signed with the secret key and that id, stamped with the time. A POST is accepted when

- it comes from this site: ``Sec-Fetch-Site`` (when sent) is ``same-origin``, and ``Origin`` (when
  sent and not ``null``, which is what our ``no-referrer`` policy makes browsers send) is this site's, and
- its token is one we signed, for this path, for the id in the browser's cookie, in the last day.

Another site can neither read the cookie nor make a token for it, so it cannot forge a POST, and
nothing is stored on the server. The RFC 8058 one-click POST is the one form without it: mail
providers send it from their servers, with no cookie (the signed unsubscribe token in its URL is
its authority). The "more / less like this" button keeps the same design (its URL is the capability).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from newsletter.web.pages import Refused

FIELD = "csrf_token"
COOKIE = "csrf"
SECURE_COOKIE = "__Host-csrf"  # the prefix makes browsers refuse it from a sibling subdomain or over plain HTTP
TOKEN_MAX_AGE = dt.timedelta(hours=24)  # a form left open overnight still sends
SALT = "web-form"
NOT_OURS = ("This form was not sent from this site's own page, or it is too old. "
            "Go back, reload the page and send it again (this site needs cookies to send forms).")


@dataclass(frozen=True, slots=True)
class FormToken:
    """What a page with a form needs: the hidden field's value, and the cookie to set if the browser had none."""

    value: str
    new_browser_id: str | None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class FormGuard:
    def __init__(self, *, secret_key: str, base_url: str) -> None:
        self.secret_key = secret_key
        self.site_origin = _origin(base_url)

    def _serializer(self, browser_id: str) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self.secret_key, salt=f"{SALT}:{browser_id}")

    @staticmethod
    def _cookie_name(request: Request) -> str:
        return SECURE_COOKIE if request.url.scheme == "https" else COOKIE

    def token(self, request: Request, *, action: str | None = None) -> FormToken:
        """The token for a form that posts to ``action`` (default: back to this request's path)."""
        browser_id = request.cookies.get(self._cookie_name(request))
        new = None
        if not browser_id or len(browser_id) > 64:
            browser_id = new = secrets.token_urlsafe(18)
        return FormToken(self._serializer(browser_id).dumps(action or request.url.path), new)

    def remember(self, request: Request, response: Response, token: FormToken) -> Response:
        """Set the browser's id cookie when the token was made for a new one."""
        if token.new_browser_id is not None:
            response.set_cookie(self._cookie_name(request), token.new_browser_id, path="/", httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        return response

    def check(self, request: Request, form: FormData) -> None:
        """Raise ``Refused`` (403) unless the POST comes from one of our pages in this browser."""
        fetch_site = request.headers.get("sec-fetch-site")
        origin = request.headers.get("origin")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            raise Refused(403, "Form not accepted", NOT_OURS)
        # Our own pages send "Origin: null": Referrer-Policy no-referrer hides it. Any other origin is not us.
        if origin not in (None, "null") and origin.lower() not in (self.site_origin, _origin(str(request.base_url))):
            raise Refused(403, "Form not accepted", NOT_OURS)
        browser_id = request.cookies.get(self._cookie_name(request))
        value = form.get(FIELD)
        if not browser_id or not isinstance(value, str) or len(value) > 500:
            raise Refused(403, "Form not accepted", NOT_OURS)
        try:
            path = self._serializer(browser_id).loads(value, max_age=int(TOKEN_MAX_AGE.total_seconds()))
        except BadSignature:
            raise Refused(403, "Form not accepted", NOT_OURS) from None
        if path != request.url.path:
            raise Refused(403, "Form not accepted", NOT_OURS)
