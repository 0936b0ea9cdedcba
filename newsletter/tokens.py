"""Signed tokens for links in emails: no login, no guessable ids.

Unsubscribe, preferences and "view in browser" links carry one token per subscriber and purpose
(``make_token``). A "more / less like this" link carries a timed token that names the subscriber
*and* the paper (``FeedbackSigner``): it cannot be used for another paper, and it expires.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import json

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, int_to_bytes, want_bytes

from newsletter.errors import InvalidInput

UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"
VIEW = "view"  # "view in browser": the subscriber's digest of a date
FEEDBACK = "feedback/paper"  # "more / less like this": [subscriber id, paper id], timed
CONFIRM = "confirm/subscription"  # double opt-in: [subscriber id, nonce], timed, usable once (see subscriptions)

NOT_VALID = "this link is not valid (it may have been cut off); open it again from the email"


class ExpiredLink(InvalidInput):
    """A signed link that was valid once and is too old now."""


MAX_ROW_ID = 2**63 - 1  # SQLite's (and PostgreSQL's BIGINT) largest integer


class PreparedSigner:
    """Signs values in itsdangerous's format with the key and the HMAC state prepared once.

    A serializer's ``dumps`` builds its signer, derives its key and starts its HMAC for every
    token (~30 µs); a digest needs three links per subscriber plus one per paper, so that was
    half its render time. Here a token costs a copy of the HMAC state and a base64 encoding
    (~3 µs). The tokens are exactly the serializer's (a test checks), and are read with it.
    """

    def __init__(self, serializer: URLSafeSerializer | URLSafeTimedSerializer) -> None:
        signer = serializer.make_signer()
        self._sep = want_bytes(signer.sep)
        self._mac = hmac.new(signer.derive_key(), digestmod=signer.digest_method)

    def sign(self, value: bytes) -> str:
        mac = self._mac.copy()
        mac.update(value)
        return (value + self._sep + base64_encode(mac.digest())).decode()

    def stamp(self, moment: dt.datetime) -> bytes:
        """What a ``TimestampSigner`` adds to a value signed at ``moment`` (naive means UTC)."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return self._sep + base64_encode(int_to_bytes(int(moment.timestamp())))


@functools.lru_cache(maxsize=16)
def _signer(secret_key: str, purpose: str) -> PreparedSigner:
    return PreparedSigner(URLSafeSerializer(secret_key, salt=purpose))


def make_token(*, secret_key: str, purpose: str, subscriber_id: int) -> str:
    """``URLSafeSerializer(secret_key, salt=purpose).dumps(subscriber_id)``, made quickly."""
    # A number's JSON is its digits, too short to be worth compressing.
    return _signer(secret_key, purpose).sign(base64_encode(str(int(subscriber_id)).encode()))


def read_token(token: str, *, secret_key: str, purpose: str) -> int:
    try:
        return _row_id(int(URLSafeSerializer(secret_key, salt=purpose).loads(token)))
    except (BadSignature, ValueError, TypeError):
        raise InvalidInput(NOT_VALID) from None


def _row_id(value: object) -> int:
    """A database id, or InvalidInput: beyond SQLite's largest INTEGER it names no row and cannot even be bound.
    (Only a holder of the secret key can sign one; it still gets "not valid", not a server error.)"""
    if type(value) is not int or not 0 < value <= MAX_ROW_ID:  # type, not isinstance: true is no id
        raise InvalidInput(NOT_VALID)
    return value


class FeedbackSigner:
    """Feedback tokens issued at one moment: ``URLSafeTimedSerializer`` tokens of ``[subscriber id, paper id]``."""

    def __init__(self, *, secret_key: str, issued_at: dt.datetime) -> None:
        self._signer = PreparedSigner(URLSafeTimedSerializer(secret_key, salt=FEEDBACK))
        self._stamp = self._signer.stamp(issued_at)

    def token(self, *, subscriber_id: int, paper_id: int) -> str:
        # itsdangerous's compact JSON of the pair; too short to be worth compressing.
        return self._signer.sign(base64_encode(f"[{int(subscriber_id)},{int(paper_id)}]".encode()) + self._stamp)


@functools.lru_cache(maxsize=8)
def feedback_signer(*, secret_key: str, issued_at: dt.datetime) -> FeedbackSigner:
    """The signer for one issue time, shared by every digest of a run."""
    return FeedbackSigner(secret_key=secret_key, issued_at=issued_at)


def _load_timed(token: str, *, secret_key: str, purpose: str, max_age: dt.timedelta, expired: str) -> object:
    """A timed token's value; ``ExpiredLink(expired)`` past ``max_age``, ``InvalidInput`` for anything forged,
    cut, or signed in the future (not one we made)."""
    try:
        return URLSafeTimedSerializer(secret_key, salt=purpose).loads(token, max_age=int(max_age.total_seconds()))
    except SignatureExpired as exc:
        if exc.date_signed is not None and exc.date_signed > dt.datetime.now(dt.UTC):
            raise InvalidInput(NOT_VALID) from None
        raise ExpiredLink(expired) from None
    except BadSignature:
        raise InvalidInput(NOT_VALID) from None


def read_feedback_token(token: str, *, secret_key: str, max_age: dt.timedelta) -> tuple[int, int]:
    """``(subscriber id, paper id)`` from a feedback token; ``ExpiredLink`` past ``max_age``."""
    days = max_age.days
    found = _load_timed(token, secret_key=secret_key, purpose=FEEDBACK, max_age=max_age,
                        expired=f"this link has expired (links work for {days} days); use the links in a newer digest")
    if not (isinstance(found, list) and len(found) == 2):
        raise InvalidInput(NOT_VALID)
    return _row_id(found[0]), _row_id(found[1])


def confirm_token(*, secret_key: str, subscriber_id: int, nonce: str, issued_at: dt.datetime) -> str:
    """A confirmation link's token: ``URLSafeTimedSerializer(secret_key, salt=CONFIRM)`` of ``[id, nonce]``.

    The nonce is the subscriber's ``token_nonce``, replaced when the link is used or a newer one is
    sent; that, not the token, makes the link work once (``subscriptions.confirm``).
    """
    signer = PreparedSigner(URLSafeTimedSerializer(secret_key, salt=CONFIRM))
    payload = json.dumps([int(subscriber_id), str(nonce)], separators=(",", ":")).encode()
    return signer.sign(base64_encode(payload) + signer.stamp(issued_at))


def read_confirm_token(token: str, *, secret_key: str, max_age: dt.timedelta) -> tuple[int, str]:
    """``(subscriber id, nonce)``; ``ExpiredLink`` past ``max_age``, ``InvalidInput`` for anything forged or cut."""
    hours = round(max_age.total_seconds() / 3600)
    found = _load_timed(token, secret_key=secret_key, purpose=CONFIRM, max_age=max_age,
                        expired=f"this confirmation link has expired (links work for {hours} hours); sign up again for a new one")
    if not (isinstance(found, list) and len(found) == 2 and isinstance(found[1], str)):
        raise InvalidInput(NOT_VALID)
    return _row_id(found[0]), found[1]


__all__ = ["CONFIRM", "FEEDBACK", "PREFERENCES", "UNSUBSCRIBE", "VIEW", "ExpiredLink", "FeedbackSigner", "PreparedSigner",
           "confirm_token", "feedback_signer", "make_token", "read_confirm_token", "read_feedback_token", "read_token"]
