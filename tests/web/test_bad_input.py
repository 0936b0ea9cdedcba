"""Bad input, each case answered with a clear page and a 4xx, and nothing changed.

Malformed and forged tokens, forms without their CSRF token or from another site, 10,000 sign-ups
from one address, a 1 MB form field, HTML in every field.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from itsdangerous import URLSafeSerializer
from sqlalchemy import func, select
from starlette.testclient import TestClient

from newsletter import tokens
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import SubscriptionEvent
from newsletter.web.app import create_app
from tests.web.conftest import CSRF_FIELD, SIGN_UP, Front, front_settings

MEGABYTE = 1024 * 1024


def other_key_token(purpose: str) -> str:
    return URLSafeSerializer("another-secret-key-0123456789abcdefgh", salt=purpose).dumps(1)


@pytest.mark.parametrize("path", [
    "/confirm/{forged}", "/confirm/MQ", "/confirm/" + "A" * 2000,
    "/preferences/{forged}", "/preferences/{other_key}", "/unsubscribe/{forged}", "/unsubscribe/{preferences_token}",
    "/digest/2026-11-23/{forged}", "/digest/2026-11-23/{preferences_token}",
])
def test_a_forged_or_malformed_token_gets_a_clear_400_and_changes_nothing(front: Front, path: str) -> None:
    subscriber_id = front.add_active("ada@example.org")
    url = path.format(forged="WzEsImFiYyJd.forged.signature", other_key=other_key_token(tokens.PREFERENCES),
                      preferences_token=front.path(tokens.PREFERENCES, subscriber_id).split("/")[2])
    token = front.token_for("/subscribe")
    before = front.snapshot()
    for answer in (front.client.get(url), front.client.post(url, data={"csrf_token": token, "action": "save", **SIGN_UP})):
        assert answer.status_code in (400, 403, 405), (url, answer.status_code)
        assert answer.headers["content-type"].startswith("text/html") and "<h1>" in answer.text
    page = front.client.get(url)
    assert page.status_code == 400 and "This link is not valid (it may have been cut off)" in page.text
    assert front.snapshot() == before


def test_every_form_needs_its_csrf_token_and_this_sites_origin(front: Front) -> None:
    subscriber_id = front.add_active("ada@example.org")
    front.subscribe("bob@example.org")
    [confirm] = front.links_to("bob@example.org", "/confirm/")
    forms = {"/subscribe": {**SIGN_UP, "email": "eve@example.org"}, confirm: {},
             front.path(tokens.PREFERENCES, subscriber_id): {**SIGN_UP, "action": "save", "topics": "changed"},
             front.path(tokens.UNSUBSCRIBE, subscriber_id): {}}
    before = front.snapshot()
    for path, data in forms.items():
        good = front.token_for(path)
        wrong_path = front.token_for("/subscribe" if path != "/subscribe" else confirm)
        for attempt, headers in [({}, {}), ({"csrf_token": ""}, {}), ({"csrf_token": "x" * 600}, {}),
                                 ({"csrf_token": wrong_path}, {}),
                                 ({"csrf_token": good}, {"Origin": "https://evil.example"}),
                                 ({"csrf_token": good}, {"Sec-Fetch-Site": "cross-site"})]:
            answer = front.client.post(path, data={**data, **attempt}, headers=headers)
            assert answer.status_code == 403, (path, attempt, headers)
            assert "This form was not sent from this site" in answer.text
        cookies = dict(front.client.cookies)
        front.client.cookies.clear()  # another browser, holding a stolen form but not its cookie
        assert front.client.post(path, data={**data, "csrf_token": good}).status_code == 403
        front.client.cookies.update(cookies)
    assert front.snapshot() == before
    same_site = front.client.post("/subscribe", data={**SIGN_UP, "email": "eve@example.org", "csrf_token": front.token_for("/subscribe")},
                                  headers={"Origin": "https://digest.example.org", "Sec-Fetch-Site": "same-origin"})
    assert same_site.status_code == 200, "from the site's own origin the form is accepted"


@pytest.fixture
def limited(sqlite_url: str, tmp_path: Path) -> Iterator[Front]:
    """The front with the configured limits (20 sign-ups per IP per hour), and behind a trusted proxy."""
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    settings = front_settings(sqlite_url, tmp_path / "outbox", trusted_proxy="10.0.0.1")
    with TestClient(create_app(settings=settings, sessions=sessions), client=("10.0.0.1", 40000)) as client:
        yield Front(client, sessions, settings, tmp_path / "outbox")
    engine.dispose()


def test_ten_thousand_sign_ups_from_one_address_send_three_emails(limited: Front) -> None:
    token = limited.token_for("/subscribe")
    form = {**SIGN_UP, "email": "victim@example.org", "csrf_token": token}
    app = limited.client.app

    body = str(httpx.QueryParams(form)).encode()
    cookie = "; ".join(f"{name}={value}" for name, value in limited.client.cookies.items())

    async def post() -> tuple[int, dict[str, str], str]:
        """One POST straight into the app, as uvicorn hands it over (httpx costs more than the app)."""
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/subscribe", "raw_path": b"/subscribe", "query_string": b"", "root_path": "",
                 "server": ("testserver", 80), "client": ("10.0.0.1", 40000),
                 "headers": [(b"host", b"testserver"), (b"content-type", b"application/x-www-form-urlencoded"),
                             (b"content-length", str(len(body)).encode()), (b"cookie", cookie.encode()),
                             (b"x-forwarded-for", b"203.0.113.9")]}
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)  # type: ignore[arg-type]
        headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
        return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:]).decode()

    async def flood() -> list[tuple[int, dict[str, str], str]]:
        return [await post() for _ in range(10_000)]

    answers = asyncio.run(flood())
    statuses = [status for status, _, _ in answers]
    assert statuses[:20] == [200] * 20 and set(statuses[20:]) == {429}
    _, headers, text = answers[-1]
    assert "Too many requests" in text and "Please try again in" in text
    assert 0 < int(headers["retry-after"]) <= 3600
    assert len(limited.notices()) == 3, "at most three confirmation emails to one address a day"
    with limited.sessions() as session:
        # Three requests answered with a confirmation email (a request and a sent event each); the 17 refused
        # for the address and the 9,980 refused for the IP address wrote nothing: a flood cannot grow the table.
        assert session.scalar(select(func.count()).select_from(SubscriptionEvent)) == 3 + 3, "refused requests left no trace"

    other_visitor = limited.client.post("/subscribe", data={**form, "email": "other@example.org"},
                                        headers={"X-Forwarded-For": "203.0.113.10"})
    assert other_visitor.status_code == 200, "the proxy's other visitors are not limited"


def test_x_forwarded_for_is_believed_only_from_the_trusted_proxy(front: Front, sqlite_url: str, tmp_path: Path) -> None:
    settings = front_settings(sqlite_url, tmp_path / "outbox", subscribe_per_ip_per_hour=2)
    with TestClient(create_app(settings=settings, sessions=front.sessions), client=("198.51.100.7", 40000)) as client:
        token = CSRF_FIELD.search(client.get("/subscribe").text)
        assert token
        statuses = [client.post("/subscribe", data={**SIGN_UP, "email": f"n{n}@example.org", "csrf_token": token.group(1)},
                                headers={"X-Forwarded-For": f"203.0.113.{n}"}).status_code for n in range(4)]
    assert statuses == [200, 200, 429, 429], "a client cannot pick its own address by sending the header"


@pytest.mark.parametrize("chunked", [False, True])
def test_a_megabyte_form_field_is_refused_with_413(front: Front, chunked: bool) -> None:
    subscriber_id = front.add_active("ada@example.org")
    pages = ["/subscribe", front.path(tokens.PREFERENCES, subscriber_id), front.path(tokens.UNSUBSCRIBE, subscriber_id)]
    tokens_by_page = {page: front.token_for(page) for page in pages}
    before = front.snapshot()
    for page in pages:
        body = httpx.QueryParams({**SIGN_UP, "email": "ada@example.org", "action": "save", "List-Unsubscribe": "One-Click",
                                  "csrf_token": tokens_by_page[page], "describe": "x" * MEGABYTE}).__str__().encode()
        content = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
        answer = front.client.post(page, content=content, headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert answer.status_code == 413, (page, answer.status_code)
        if not chunked:
            assert "too large for this form" in answer.text or answer.text == "Content Too Large"
        else:
            assert "too large for this form" in answer.text
    assert front.snapshot() == before


def test_html_in_every_field_is_never_reflected_as_markup(front: Front) -> None:
    markup = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    fields = {name: markup for name in ("topics", "describe", "timezone", "send_hour", "frequency", "weekday", "max_papers")}
    for email in (markup, f"ada+{markup}@example.org", "ada@example.org"):
        answer = front.subscribe(email, categories=[markup], **fields)
        assert answer.status_code == 400
        assert "<script>alert" not in answer.text and "<img" not in answer.text
        assert answer.text.count("<script>") == 1, "only the page's own script"
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in answer.text
    ok = front.subscribe("ada@example.org", topics=markup, describe=markup)
    assert ok.status_code == 200
    [link] = front.links_to("ada@example.org", "/confirm/")
    page = front.client.get(link)
    assert "<script>alert" not in page.text and "<img" not in page.text and "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert not re.search(r"<script>(?!\(function)", page.text)


def test_every_forwarded_for_line_counts_the_last_entry_wins(front: Front, sqlite_url: str, tmp_path: Path) -> None:
    """A proxy that adds its own X-Forwarded-For line after the client's forged one: the limit sees the proxy's entry."""
    settings = front_settings(sqlite_url, tmp_path / "outbox", subscribe_per_ip_per_hour=2, trusted_proxy="198.51.100.7")
    with TestClient(create_app(settings=settings, sessions=front.sessions), client=("198.51.100.7", 40000)) as client:
        token = CSRF_FIELD.search(client.get("/subscribe").text)
        assert token
        statuses = []
        for n in range(4):
            headers = [("x-forwarded-for", f"10.9.9.{n}"), ("x-forwarded-for", "203.0.113.50")]  # forged, then the proxy's
            statuses.append(client.post("/subscribe", data={**SIGN_UP, "email": f"m{n}@example.org", "csrf_token": token.group(1)},
                                        headers=headers).status_code)
    assert statuses == [200, 200, 429, 429]


@pytest.mark.parametrize("path", ["/subscribe", "/confirm/{token}", "/preferences/{token}", "/unsubscribe/{token}"])
def test_another_method_is_refused_with_the_methods_the_page_takes(front: Front, path: str) -> None:
    """Each of these pages is a GET and its form a POST: a PUT is told both (two routes told only the first's)."""
    url = path.format(token="WzEsImFiYyJd.forged.signature")
    for method in ("PUT", "DELETE", "PATCH"):
        answer = front.client.request(method, url)
        assert answer.status_code == 405, (method, url)
        assert {m.strip() for m in answer.headers["allow"].split(",")} == {"GET", "HEAD", "POST"}
