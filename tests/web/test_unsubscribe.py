"""Leaving: the footer link (a page, then a button) and RFC 8058 one-click, which needs no cookie and no CSRF token."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from newsletter import tokens
from newsletter.db.models import Subscriber, SubscriptionEvent
from tests.web.conftest import Front


def events(front: Front) -> list[tuple[str, str]]:
    with front.sessions() as session:
        return [(e.kind, e.via) for e in session.scalars(select(SubscriptionEvent).order_by(SubscriptionEvent.id))]


def test_the_footer_link_shows_a_button_and_only_the_button_unsubscribes(front: Front) -> None:
    link = front.path(tokens.UNSUBSCRIBE, front.add_active("ada@example.org"))
    before = front.snapshot()
    for _ in range(3):
        page = front.client.get(link)
        assert page.status_code == 200 and "Stop sending Paper digest to <strong>ada@example.org</strong>?" in page.text
        assert ">Unsubscribe</button>" in page.text and 'href="/preferences/' in page.text
    assert front.snapshot() == before
    done = front.form(link)
    assert done.status_code == 200 and "no more digests will be sent to <strong>ada@example.org</strong>" in done.text
    assert front.status_of("ada@example.org") == "unsubscribed"
    assert events(front)[-1] == ("unsubscribed", "web")
    again = front.client.get(link)
    assert again.status_code == 200 and "was unsubscribed already" in again.text


@pytest.mark.parametrize("encoding", ["form", "multipart"])
def test_one_click_needs_no_cookie_or_csrf_and_answers_200_without_a_redirect(front: Front, encoding: str) -> None:
    link = front.path(tokens.UNSUBSCRIBE, front.add_active("ada@example.org"))
    front.client.cookies.clear()
    body = {"data": {"List-Unsubscribe": "One-Click"}} if encoding == "form" else {"files": {"List-Unsubscribe": (None, "One-Click")}}
    answer = front.client.post(link, follow_redirects=False, **body)  # type: ignore[arg-type]
    assert answer.status_code == 200 and answer.text == "Unsubscribed.\n"
    assert "set-cookie" not in answer.headers and "location" not in answer.headers
    assert front.status_of("ada@example.org") == "unsubscribed"
    with front.sessions() as session:
        assert session.scalars(select(Subscriber.unsubscribed_at)).one() is not None, "when is recorded"
    assert events(front)[-1] == ("unsubscribed", "one-click")
    assert front.client.post(link, data={"List-Unsubscribe": "One-Click"}).status_code == 200, "again: still 200"


def test_one_click_with_a_forged_token_changes_nothing(front: Front) -> None:
    link = front.path(tokens.UNSUBSCRIBE, front.add_active("ada@example.org"))
    preferences_token = front.path(tokens.PREFERENCES, 1).split("/")[2]
    before = front.snapshot()
    for forged in ("/unsubscribe/MQ.forged", f"/unsubscribe/{preferences_token}", link + "x"):
        answer = front.client.post(forged, data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 400 and "This link is not valid" in answer.text
    assert front.snapshot() == before


def test_the_button_without_its_csrf_token_changes_nothing(front: Front) -> None:
    link = front.path(tokens.UNSUBSCRIBE, front.add_active("ada@example.org"))
    front.client.get(link)  # the browser has its cookie
    before = front.snapshot()
    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": front.token_for("/subscribe")}, {"List-Unsubscribe": "Two-Clicks"}):
        answer = front.client.post(link, data=data)
        assert answer.status_code == 403 and "This form was not sent from this site" in answer.text
    assert front.snapshot() == before
