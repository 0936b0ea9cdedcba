"""The confirm page in headless Chromium: styled under its own CSP, and its button records the feedback."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.web.conftest import Site


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium")
    if executable is None:
        message = "Debian's chromium is not installed (apt-get install chromium); .ci/run installs it"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


def test_the_button_records_and_the_policy_blocks_nothing_of_ours(browser: Any, server: str, site: Site) -> None:
    page = browser.new_page()
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text else None)
    page.goto(server + site.link(site.paper_ids[0], "down"))
    assert site.feedback() == [], "opening the page records nothing"
    assert page.evaluate("getComputedStyle(document.body).maxWidth") == "576px", "the page's own style applies"
    page.click("button")
    page.wait_for_load_state()
    assert "fewer papers like" in page.content()
    assert site.feedback() == [(site.subscriber_id, site.paper_ids[0], -1)]
    assert blocked == []
    page.close()
