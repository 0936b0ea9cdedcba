"""Signed tokens for links in emails (unsubscribe, preferences): no login, no guessable ids."""

from __future__ import annotations

from itsdangerous import BadSignature, URLSafeSerializer

from newsletter.errors import InvalidInput

UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"
VIEW = "view"  # "view in browser": the subscriber's digest of a date
FEEDBACK = "feedback"  # "more / less like this" on the papers of their digests


def make_token(*, secret_key: str, purpose: str, subscriber_id: int) -> str:
    return URLSafeSerializer(secret_key, salt=purpose).dumps(subscriber_id)


def read_token(token: str, *, secret_key: str, purpose: str) -> int:
    try:
        return int(URLSafeSerializer(secret_key, salt=purpose).loads(token))
    except (BadSignature, ValueError, TypeError):
        raise InvalidInput("this link is not valid (it may have been cut off); open it again from the email") from None
