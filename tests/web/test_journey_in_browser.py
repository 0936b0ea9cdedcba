"""The subscriber's whole journey in headless Chromium, against a real SMTP server and the real pipeline.

Subscribe (the browser guesses the time zone) → the confirmation arrives over SMTP → open its link →
confirm → change preferences with the preview → receive a digest → one-click unsubscribe with the URL
in its List-Unsubscribe header → the next send skips them. Screenshots go to test-artifacts/web/.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import select

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, Subscriber
from newsletter.settings import load_settings
from newsletter.web.app import create_app
from tests.conftest import FIXTURES, SmtpSink, fixed_send_moment, free_port, serving

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
PHONE = {"width": 375, "height": 812}
T = TypeVar("T")
MAIL_WAIT_S = 15  # the notice is sent after the response, over a real SMTP connection


def wait_for_mail(sink: SmtpSink, count: int) -> None:
    deadline = time.monotonic() + MAIL_WAIT_S
    while len(sink.received) < count:
        assert time.monotonic() < deadline, f"{count} messages expected, {len(sink.received)} arrived"
        time.sleep(0.05)


def shoot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), f"{name}: no horizontal scroll"
    assert page.locator("h1").count() == 1, f"{name}: one h1"


def beside_the_browser(cli: Callable[..., T], *args: str) -> T:
    """Run a CLI command in its own thread: Playwright's sync API keeps an event loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(cli, *args).result()


def press(page: Any, selector: str) -> None:
    """Press a button or follow a link from the keyboard (as a keyboard user would), and wait for the next page.

    The keyboard, not a click: after a full-page screenshot headless Chromium may click beside the target.
    """
    with page.expect_navigation():
        page.focus(selector)
        page.keyboard.press("Enter")


def test_subscribe_confirm_tune_receive_and_leave(browser: Any, cli, env, sqlite_url: str, smtp_server: SmtpSink) -> None:
    port = free_port()
    env(database_url=sqlite_url, secret_key="journey-secret-key-0123456789abcdefgh", from_address="digest@example.org",
        base_url=f"http://127.0.0.1:{port}", email_backend="smtp", smtp_host=smtp_server.host, smtp_port=smtp_server.port,
        smtp_security="none", smtp_pool_size=1)
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)

    def ada() -> Subscriber | None:
        with sessions() as session:
            return session.scalar(select(Subscriber).where(Subscriber.email == "ada@example.org"))

    with serving(create_app(settings=load_settings(), sessions=sessions), port=port) as url:
        context = browser.new_context(viewport=PHONE, timezone_id="America/Sao_Paulo")
        page = context.new_page()
        policy_violations: list[str] = []
        page.on("console", lambda message: policy_violations.append(message.text)
                if "Content Security Policy" in message.text else None)

        # Subscribe: the script guessed the zone from the browser; without it the select would say UTC.
        page.goto(url + "/subscribe")
        assert page.input_value("#timezone") == "America/Sao_Paulo"
        page.fill("#email", "Ada@Example.org")
        page.fill("#topics", "diffusion models")
        page.check("input[name=categories][value='cs.LG']")
        page.select_option("#send_hour", "7")
        page.check("input[name=frequency][value=daily]")
        page.fill("#max_papers", "5")
        shoot(page, "1-subscribe")
        press(page, "button[type=submit]")
        assert page.locator("h1").inner_text() == "Check your inbox"
        shoot(page, "2-check-inbox")

        # The confirmation arrives at the real SMTP server; opening its link changes nothing.
        wait_for_mail(smtp_server, 1)
        [notice] = smtp_server.received
        assert notice.recipients == ["ada@example.org"] and notice.message["Auto-Submitted"] == "auto-generated"
        body = notice.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        confirm_link = re.search(rf"{re.escape(url)}/confirm/[\w.-]+", body)
        assert confirm_link and "diffusion" not in body, "the email carries the link and nothing the visitor typed"
        page.goto(confirm_link.group(0))
        assert "America/Sao_Paulo" in page.content() and (ada() or Subscriber()).status == "pending"
        shoot(page, "3-confirm")
        press(page, "text=Confirm my subscription")
        assert page.locator("h1").inner_text() == "You are subscribed"
        assert (ada() or Subscriber()).status == "active"
        shoot(page, "4-confirmed")

        # Preferences: preview first (nothing saved), then save.
        press(page, "text=Change your preferences")
        page.fill("#topics", "diffusion models\nimage generation")
        page.fill("#exclude", "video")
        press(page, "button[value=preview]")
        preview = page.locator("#preview")
        assert preview.locator("ol > li").count() >= 1, "the preview lists papers"
        assert "topic" in preview.inner_text().lower(), "with their reasons"
        assert page.input_value("#exclude") == "video", "the form keeps what was typed"
        assert ada().preferences.exclude == []  # type: ignore[union-attr]
        shoot(page, "5-preferences-preview")
        page.set_viewport_size({"width": 1024, "height": 900})
        shoot(page, "5-preferences-preview-wide")
        press(page, "button[value=save]")
        assert "Saved." in page.locator("p.notice").inner_text()
        assert ada().preferences.exclude == ["video"]  # type: ignore[union-attr]
        assert policy_violations == [], "the page's own style and script are allowed by the policy"

        # The digest: the pipeline at the subscriber's send moment, over the real SMTP server.
        sent = beside_the_browser(cli, "digest")
        assert sent.code == 0, sent.err
        wait_for_mail(smtp_server, 2)
        digest = smtp_server.received[1].message
        assert smtp_server.received[1].recipients == ["ada@example.org"]
        assert digest["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        one_click = re.search(r"<(http://[^>]+/unsubscribe/[^>]+)>", digest["List-Unsubscribe"])
        view = re.search(r'href="([^"]+/digest/\d{4}-\d{2}-\d{2}/[^"]+)"', digest.get_body(("html",)).get_content())  # type: ignore[union-attr]
        assert one_click and view
        page.set_viewport_size(PHONE)
        page.goto(view.group(1))
        assert "diffusion" in page.content().lower()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "6-archive.png"), full_page=True)
        context.close()

        # One-click unsubscribe, as a mail provider sends it: no cookie, no redirect.
        answer = httpx.post(one_click.group(1), data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)
        assert answer.status_code == 200 and "set-cookie" not in answer.headers
        assert (ada() or Subscriber()).status == "unsubscribed"

    # The next send skips them.
    tomorrow = (dt.datetime.fromisoformat(fixed_send_moment(sqlite_url).removesuffix("Z")) + dt.timedelta(days=1)).isoformat() + "Z"
    assert beside_the_browser(cli, "digest", "--allow-future", "--at", tomorrow).code == 0
    assert len(smtp_server.received) == 2, "nothing more was sent"
    with sessions() as session:
        assert len(session.scalars(select(Delivery)).all()) == 1
    engine.dispose()
