"""The confirm page in headless Chromium: styled under its own CSP, and its button records the feedback."""

from __future__ import annotations

from typing import Any

from tests.web.conftest import Site


def test_the_button_records_and_the_policy_blocks_nothing_of_ours(browser: Any, server: str, site: Site) -> None:
    page = browser.new_page()
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text else None)
    page.goto(server + site.link(site.paper_ids[0], "down"))
    assert site.feedback() == [], "opening the page records nothing"
    assert page.evaluate("getComputedStyle(document.querySelector('main')).maxWidth") == "640px", "the page's own style applies"
    page.click("button")
    page.wait_for_load_state()
    assert "fewer papers like" in page.content()
    assert site.feedback() == [(site.subscriber_id, site.paper_ids[0], -1)]
    assert blocked == []
    page.close()
