"""Look at it: a digest in headless Chromium at phone and desktop width. Screenshots go to test-artifacts/."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest

from newsletter.ingest.feeds import parse_feed
from newsletter.ingest.trending import parse_trending
from newsletter.paths import PACKAGE_DIR
from newsletter.records import Digest, RankedPaper
from newsletter.render.digest import make_environment, render_digest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"




@pytest.fixture(scope="module")
def digest_html(tmp_path_factory) -> Path:
    papers = parse_feed((PACKAGE_DIR / "demo_data" / "arxiv_sample.rss").read_bytes(), source="sample").papers
    trending = parse_trending((PACKAGE_DIR / "demo_data" / "hf_daily_sample.json").read_bytes(), source="trending").papers
    votes = {p.key: replace(p, id=2000 + i) for i, p in enumerate(trending)}
    papers = [replace(p, id=1000 + i) for i, p in enumerate(papers)]
    picks = [RankedPaper(votes.get(p.key, p), 9.0 - i, ("topic: “diffusion models”", "in cs.LG"))
             for i, p in enumerate(papers[3:9])]
    long_word = replace(papers[10], title="Supercalifragilistic" * 8 + " with an unbreakable title")
    picks.append(RankedPaper(long_word, 1.0, ("matches “" + "x" * 120 + "”: “" + "y" * 40 + "”",)))
    digest = Digest(email="ada@example.org", issue_date=dt.date(2026, 11, 23), papers=tuple(picks),
                    unsubscribe_url="https://digest.example.org/unsubscribe/t", preferences_url="https://digest.example.org/preferences/t",
                    view_url="https://digest.example.org/digest/2026-11-23/t", message_id="<m@example.org>",
                    feedback_urls=tuple(f"https://digest.example.org/feedback/t{p.paper.id}/{p.paper.id}" for p in picks))
    top = sorted(trending, key=lambda p: -(p.upvotes or 0))[:5]
    email = render_digest(digest, env=make_environment(), list_name="Paper digest", trending=top)
    path = tmp_path_factory.mktemp("digest") / "digest.html"
    path.write_text(email.html, encoding="utf-8")
    return path


@pytest.mark.parametrize(("name", "width"), [("phone", 375), ("desktop", 1280)])
def test_the_digest_fits_the_screen_and_every_link_is_absolute(browser, digest_html: Path, name: str, width: int) -> None:
    page = browser.new_page(viewport={"width": width, "height": 800})
    page.goto(digest_html.as_uri())
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{overflow}px of horizontal scrolling at {width}px"
    wide = page.evaluate(f"""[...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > {width} + 1).map(e => e.tagName + '.' + e.className)""")
    assert wide == [], f"elements past the right edge: {wide[:5]}"
    links = page.evaluate("[...document.querySelectorAll('a')].map(a => a.getAttribute('href'))")
    assert len(links) >= 20
    assert all(href.startswith(("https://", "http://")) for href in links), [h for h in links if not h.startswith("http")]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"digest-{name}.png"), full_page=True)
    assert (ARTIFACTS / f"digest-{name}.png").stat().st_size > 10_000
    page.close()


def test_dark_mode_changes_the_colours(browser, digest_html: Path) -> None:
    page = browser.new_page(viewport={"width": 375, "height": 800}, color_scheme="dark")
    page.goto(digest_html.as_uri())
    background = page.evaluate("getComputedStyle(document.querySelector('.card')).backgroundColor")
    assert background == "rgb(39, 39, 42)"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "digest-phone-dark.png"))
    page.close()
