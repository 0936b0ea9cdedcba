"""Signed link tokens: they round-trip, and a tampered or foreign one is refused."""

import pytest

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
