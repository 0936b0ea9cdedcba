"""Signed link tokens: they round-trip, and a tampered, foreign or expired one is refused."""

import datetime as dt

import pytest
from itsdangerous import TimestampSigner, URLSafeSerializer, URLSafeTimedSerializer

from newsletter import tokens
from newsletter.errors import InvalidInput


def test_a_token_names_its_subscriber_for_its_purpose_only() -> None:
    token = tokens.make_token(secret_key="k", purpose=tokens.UNSUBSCRIBE, subscriber_id=42)
    assert tokens.read_token(token, secret_key="k", purpose=tokens.UNSUBSCRIBE) == 42
    for bad in (token[:-2] + "xx", token + "0"):
        with pytest.raises(InvalidInput, match="this link is not valid"):
            tokens.read_token(bad, secret_key="k", purpose=tokens.UNSUBSCRIBE)
    with pytest.raises(InvalidInput):
        tokens.read_token(token, secret_key="k", purpose=tokens.PREFERENCES)
    with pytest.raises(InvalidInput):
        tokens.read_token(token, secret_key="other", purpose=tokens.UNSUBSCRIBE)


KEY = "test-secret-key-0123456789abcdefghij"
NOW = dt.datetime.now(dt.UTC)
SIXTY_DAYS = dt.timedelta(days=60)


def feedback_token(subscriber_id: int = 7, paper_id: int = 10, *, issued_at: dt.datetime = NOW, key: str = KEY) -> str:
    return tokens.FeedbackSigner(secret_key=key, issued_at=issued_at).token(subscriber_id=subscriber_id, paper_id=paper_id)


def test_a_feedback_token_names_the_subscriber_and_the_paper() -> None:
    assert tokens.read_feedback_token(feedback_token(7, 10), secret_key=KEY, max_age=SIXTY_DAYS) == (7, 10)
    assert tokens.read_feedback_token(feedback_token(7, 200), secret_key=KEY, max_age=SIXTY_DAYS) == (7, 200)
    assert feedback_token(7, 10) != feedback_token(7, 200) != feedback_token(8, 200)


@pytest.mark.parametrize("subscriber_id", [0, 1, 42, 123_456_789, 2**63 - 1])
@pytest.mark.parametrize("purpose", [tokens.UNSUBSCRIBE, tokens.PREFERENCES, tokens.VIEW])
def test_make_token_makes_exactly_the_serializers_token(purpose: str, subscriber_id: int) -> None:
    assert tokens.make_token(secret_key=KEY, purpose=purpose, subscriber_id=subscriber_id) == \
        URLSafeSerializer(KEY, salt=purpose).dumps(subscriber_id)


def test_the_feedback_signer_makes_exactly_the_serializers_token() -> None:
    issued = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)

    class SignedThen(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(issued.timestamp())

    stock = URLSafeTimedSerializer(KEY, salt=tokens.FEEDBACK, signer=SignedThen).dumps([123456, 789])
    assert feedback_token(123456, 789, issued_at=issued) == stock
    assert feedback_token(123456, 789, issued_at=issued.replace(tzinfo=None)) == stock, "naive means UTC"
    assert tokens.feedback_signer(secret_key=KEY, issued_at=issued) is tokens.feedback_signer(secret_key=KEY, issued_at=issued)


def test_a_feedback_token_expires() -> None:
    fresh = feedback_token(issued_at=NOW - dt.timedelta(days=59))
    assert tokens.read_feedback_token(fresh, secret_key=KEY, max_age=SIXTY_DAYS) == (7, 10)
    old = feedback_token(issued_at=NOW - dt.timedelta(days=61))
    with pytest.raises(tokens.ExpiredLink, match="expired .links work for 60 days"):
        tokens.read_feedback_token(old, secret_key=KEY, max_age=SIXTY_DAYS)
    with pytest.raises(tokens.ExpiredLink):
        tokens.read_feedback_token(fresh, secret_key=KEY, max_age=dt.timedelta(days=7))


@pytest.mark.parametrize("bad", [
    feedback_token(key="another-secret-key-0123456789abcdefghij"),
    feedback_token()[:-2] + ("AA" if not feedback_token().endswith("AA") else "BB"),
    feedback_token(issued_at=NOW + dt.timedelta(days=3)),  # not made by us: we never sign ahead of time
    tokens.make_token(secret_key=KEY, purpose=tokens.UNSUBSCRIBE, subscriber_id=7),
    tokens.make_token(secret_key=KEY, purpose=tokens.FEEDBACK, subscriber_id=7),  # untimed, as links were before
    URLSafeTimedSerializer(KEY, salt=tokens.UNSUBSCRIBE).dumps([7, 10]),  # another purpose
    URLSafeTimedSerializer(KEY, salt=tokens.FEEDBACK).dumps([7, "10"]),
    URLSafeTimedSerializer(KEY, salt=tokens.FEEDBACK).dumps([True, 10]),
    URLSafeTimedSerializer(KEY, salt=tokens.FEEDBACK).dumps([7, 10, 1]),
    URLSafeTimedSerializer(KEY, salt=tokens.FEEDBACK).dumps(7),
    URLSafeTimedSerializer(KEY, salt=tokens.FEEDBACK).dumps([2**63, 10]),  # no database id: was a server error
    URLSafeTimedSerializer(KEY, salt=tokens.FEEDBACK).dumps([7, -10]),
    "", "x", "W10.a.b",
])
def test_a_foreign_or_tampered_feedback_token_is_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="this link is not valid") as refused:
        tokens.read_feedback_token(bad, secret_key=KEY, max_age=SIXTY_DAYS)
    assert not isinstance(refused.value, tokens.ExpiredLink)


@pytest.mark.parametrize("subscriber_id", [2**63, 10**30, 0, -1])
def test_a_signed_token_for_an_id_no_row_can_have_is_not_valid(subscriber_id: int) -> None:
    """Only a holder of the key can sign one, but it must still be "not valid", not a server error at the lookup."""
    with pytest.raises(InvalidInput, match="this link is not valid"):
        tokens.read_token(URLSafeSerializer(KEY, salt=tokens.UNSUBSCRIBE).dumps(subscriber_id), secret_key=KEY,
                          purpose=tokens.UNSUBSCRIBE)
    confirm = URLSafeTimedSerializer(KEY, salt=tokens.CONFIRM).dumps([subscriber_id, "nonce"])
    with pytest.raises(InvalidInput, match="this link is not valid"):
        tokens.read_confirm_token(confirm, secret_key=KEY, max_age=SIXTY_DAYS)
