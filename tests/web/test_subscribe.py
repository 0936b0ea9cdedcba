"""Signing up: the form, "check your inbox" for every address alike, and the confirmation link (GET shows, POST acts)."""

from __future__ import annotations

import datetime as dt
import re

from newsletter import tokens
from newsletter.db.models import Subscriber
from tests.web.conftest import SECRET_KEY, SIGN_UP, Front


def test_the_form_has_a_label_for_every_field_and_one_heading(front: Front) -> None:
    page = front.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<html lang="en">' in html and html.count("<h1>") == 1
    ids = set(re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', html))
    assert {"email", "topics", "describe", "timezone", "send_hour", "max_papers", "weekday"} <= ids
    assert all(f'<label for="{field}">' in html for field in ids), "every field with an id has its label"
    for box in re.findall(r"<input type=\"(?:checkbox|radio)\"[^>]*>", html):
        assert re.search(re.escape(box) + r"<span>", html), "checkboxes and radios sit inside their label"
    assert '<option selected>UTC</option>' in html, "without JavaScript the zone is UTC"
    assert html.count("<option") > 400, "every IANA zone can be chosen"
    assert 'data-guess="yes"' in html and "Intl.DateTimeFormat().resolvedOptions().timeZone" in html


def test_the_front_page_is_the_sign_up_form(front: Front) -> None:
    answer = front.form("/subscribe", {**SIGN_UP, "email": "ada@example.org"}, form_page="/")
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    assert front.status_of("ada@example.org") == "pending"


def test_the_answer_is_the_same_for_a_new_pending_active_and_unsubscribed_address(front: Front) -> None:
    front.add_active("active@example.org", "sampling")
    front.subscribe("pending@example.org")
    gone = front.add_active("gone@example.org")
    front.client.post(front.path(tokens.UNSUBSCRIBE, gone), data={"List-Unsubscribe": "One-Click"})
    assert front.status_of("gone@example.org") == "unsubscribed"

    answers = {email: front.subscribe(email) for email in
               ("new@example.org", "pending@example.org", "active@example.org", "gone@example.org")}
    assert {answer.status_code for answer in answers.values()} == {200}
    bodies = {answer.text.replace(email, "ADDRESS") for email, answer in answers.items()}
    assert len(bodies) == 1, "one page for every address"
    assert "Check your inbox" in bodies.pop()
    assert all("set-cookie" not in answer.headers for answer in answers.values())

    assert front.status_of("active@example.org") == "active", "an active subscription is never knocked back to pending"
    assert front.status_of("gone@example.org") == "unsubscribed", "coming back needs a new confirmation"
    subjects = {(m["To"], m["Subject"]) for m in front.notices()}
    assert ("gone@example.org", "Confirm your subscription to Paper digest") in subjects
    assert ("active@example.org", "You are already subscribed to Paper digest") in subjects
    assert ("new@example.org", "Confirm your subscription to Paper digest") in subjects


def test_the_confirmation_email_carries_no_text_the_visitor_typed(front: Front) -> None:
    front.subscribe("ada@example.org", topics="Buy cheap watches at spam.example", describe="Visit spam.example now")
    [notice] = front.notices()
    body = notice.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "spam.example" not in body and "watches" not in body
    assert front.links_to("ada@example.org", "/confirm/")


def test_opening_the_link_shows_what_it_confirms_and_only_the_button_confirms(front: Front) -> None:
    front.subscribe("ada@example.org", topics="diffusion models^2\nimage generation", describe="I make <b>fast</b> samplers.")
    [link] = front.links_to("ada@example.org", "/confirm/")
    before = front.snapshot()
    for _ in range(3):  # a mail scanner, a link preview, the subscriber
        page = front.client.get(link)
        assert page.status_code == 200
        assert "diffusion models (×2.0); image generation" in page.text and "I make &lt;b&gt;fast&lt;/b&gt; samplers." in page.text
        assert "every day at 07:00 (Europe/Berlin)" in page.text and ">Confirm my subscription</button>" in page.text
        assert front.client.head(link).status_code == 200
    assert front.snapshot() == before, "a GET changes nothing"

    done = front.form(link)
    assert done.status_code == 200 and "ada@example.org</strong> is subscribed" in done.text
    assert front.status_of("ada@example.org") == "active"
    preferences = re.search(r'href="(/preferences/[^"]+)"', done.text)
    assert preferences and front.client.get(preferences.group(1)).status_code == 200


def test_a_used_link_and_an_older_link_are_gone(front: Front) -> None:
    front.subscribe("ada@example.org")
    front.subscribe("ada@example.org")
    older, latest = front.links_to("ada@example.org", "/confirm/")
    before = front.snapshot()
    replaced = front.client.get(older)
    assert replaced.status_code == 410 and "used already, or a newer one was sent" in replaced.text
    assert front.snapshot() == before
    form_token = front.token_for(latest)
    assert front.client.post(latest, data={"csrf_token": form_token}).status_code == 200
    after_use = front.snapshot()
    pressed_again = front.client.post(latest, data={"csrf_token": form_token})  # the back button, or a double click
    assert pressed_again.status_code == 410 and "Link already used" in pressed_again.text
    for link in (older, latest):
        page = front.client.get(link)
        assert page.status_code == 410 and "Link already used" in page.text
    assert front.snapshot() == after_use


def test_an_expired_link_says_to_sign_up_again(front: Front) -> None:
    front.subscribe("ada@example.org")
    with front.sessions() as session:
        row = session.query(Subscriber).one()
        expired = tokens.confirm_token(secret_key=SECRET_KEY, subscriber_id=row.id, nonce=row.token_nonce or "",
                                       issued_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=73))
    before = front.snapshot()
    token = front.token_for("/subscribe")  # a CSRF token of the browser; no use on another path
    for answer in (front.client.get(f"/confirm/{expired}"), front.client.post(f"/confirm/{expired}", data={"csrf_token": token})):
        assert answer.status_code in (403, 410)
    page = front.client.get(f"/confirm/{expired}")
    assert page.status_code == 410 and "Link expired" in page.text and "sign up again for a new one" in page.text
    assert front.snapshot() == before
    assert front.status_of("ada@example.org") == "pending"


def test_a_form_with_mistakes_comes_back_filled_in_and_changes_nothing(front: Front) -> None:
    before = front.snapshot()
    answer = front.subscribe("not an address", topics="diffusion models", timezone="Mars/Olympus", send_hour="25",
                             frequency="hourly", max_papers="0")
    assert answer.status_code == 400
    for message in ("Invalid email address", "Choose a time zone from the list", "Send hour 25 is out of range",
                    "Unknown frequency", "Choose from 1 to 100 papers"):
        assert message in answer.text, message
    assert 'value="not an address"' in answer.text and ">diffusion models</textarea>" in answer.text
    assert 'aria-invalid="true" aria-describedby="email-error"' in answer.text
    assert front.snapshot() == before and front.notices() == []


def test_sign_up_is_refused_politely_when_the_server_cannot_send_mail(front: Front, sqlite_url: str, tmp_path) -> None:
    from starlette.testclient import TestClient

    from newsletter.web.app import create_app
    from tests.web.conftest import front_settings

    settings = front_settings(sqlite_url, tmp_path / "outbox").model_copy(update={"from_address": None})
    with TestClient(create_app(settings=settings, sessions=front.sessions)) as client:
        token = CSRF_TOKEN.search(client.get("/subscribe").text)
        assert token
        answer = client.post("/subscribe", data={**SIGN_UP, "email": "ada@example.org", "csrf_token": token.group(1)})
    assert answer.status_code == 503 and "cannot confirm a sign-up" in answer.text
    assert front.status_of("ada@example.org") is None


CSRF_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def test_a_sign_up_with_no_interest_is_refused_and_says_why(front: Front) -> None:
    """Accepted, it was a subscription whose every day was quiet: no paper can match nothing."""
    before = front.snapshot()
    answer = front.subscribe("ada@example.org", topics="", describe="", authors="")
    assert answer.status_code == 400 and "Give at least one topic" in answer.text
    assert front.snapshot() == before and not front.notices()


def test_a_subscription_by_email_with_no_interest_yet_is_asked_for_them_not_promised_a_digest(front: Front) -> None:
    from sqlalchemy import select

    from newsletter.db import repo
    from newsletter.records import Preferences

    front.subscribe("ada@example.org")
    with front.sessions() as session:  # as a "subscribe" email leaves it: an address, no interests yet
        row = session.scalar(select(Subscriber).where(Subscriber.email == "ada@example.org"))
        row.pending_change = {**row.pending_change, "preferences": repo.preferences_row(Preferences())}
        session.commit()
    [link] = front.links_to("ada@example.org", "/confirm/")
    done = front.form(link)
    assert done.status_code == 200 and "ada@example.org</strong> is subscribed" in done.text
    assert "Your first digest comes" not in done.text and "until you give one, no digest comes" in done.text
    preferences = re.search(r'href="(/preferences/[^"]+)">Choose your topics', done.text)
    assert preferences and front.client.get(preferences.group(1)).status_code == 200


def test_a_confirmation_to_an_internationalised_address_has_a_well_formed_to_header(front: Front) -> None:
    """The stdlib put encoded words inside the address (``bob@=?utf-8?q?b=C3=BCcher?=.example``), which RFC 2047
    forbids and mail clients read as a broken address: the domain goes in IDNA form, as in the digests, and a
    local part that needs it in UTF-8 (RFC 6532; such an address is sent over SMTPUTF8)."""
    for email in ("bob@bücher.example", "jörg@example.org"):
        assert front.subscribe(email).status_code == 200
    raw = [path.read_bytes() for path in front.outbox.rglob("*.eml")]
    to_lines = sorted(line for data in raw for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if line.startswith(b"To:"))
    assert to_lines == [b"To: bob@xn--bcher-kva.example", "To: jörg@example.org".encode()]
    assert not next(m for m in front.notices() if "bob@" in str(m["To"]))["To"].defects


def test_a_weight_without_words_is_no_topic_and_is_refused(front: Front) -> None:
    """"^2" was stored as no topic at all: a pending subscription that could never match a paper."""
    answer = front.subscribe("ada@example.org", topics="^2")
    assert answer.status_code == 400 and "give the words before the weight" in answer.text
    assert front.status_of("ada@example.org") is None and front.notices() == []


def test_an_address_with_a_hidden_character_is_refused_not_changed_into_another(front: Front) -> None:
    """Stripping a NUL or a bidi override from "nul\\x00@…" sent the confirmation to another address."""
    for email in ("nul\x00@example.org", "\u202eevil@example.org", "zw\u200bsp@example.org"):
        answer = front.subscribe(email)
        assert answer.status_code == 400 and "Invalid email address" in answer.text
        assert "unsafe characters" in answer.text or "invalid characters before the @-sign: U+0000" in answer.text
        assert not re.search("[\x00\u202e\u200b]", answer.text), "the form gives the address back inert"
    assert front.notices() == [] and front.status_of("nul@example.org") is None and front.status_of("evil@example.org") is None


def test_the_notices_are_wrapped_for_a_plain_text_reader(front: Front) -> None:
    """Lines of up to ~190 characters came out with a long address or list name; a link stays whole."""
    front.subscribe("someone.with.a.rather.long.address@department.university.example.org")
    front.add_active("ada@example.org", "sampling")
    front.subscribe("ada@example.org")  # "already subscribed"
    notices = front.notices()
    assert len(notices) == 2
    for notice in notices:
        body = notice.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        long = [line for line in body.splitlines() if len(line) > 78 and not line.startswith("https://")]
        assert long == [], long
