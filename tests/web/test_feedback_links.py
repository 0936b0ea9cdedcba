""""More / less like this" links: safe to prefetch, one paper per link, expiring, clear about bad input."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from starlette.testclient import TestClient

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.ledger import DueDelivery
from newsletter.issue import digest_for
from newsletter.records import Paper, RankedPaper
from newsletter.render.digest import make_environment
from newsletter.web.app import create_app
from newsletter.web.headers import content_hash
from newsletter.web.pages import Pages
from tests.web.conftest import Site

DAY = dt.timedelta(days=1)


def test_opening_a_link_records_nothing_and_only_the_button_does(client: TestClient, site: Site) -> None:
    more = site.link(site.paper_ids[0], "up")
    for _ in range(3):  # a mail scanner, a link preview, the subscriber
        shown = client.get(more)
        assert shown.status_code == 200
        assert "Fast Sampling for Diffusion Models" in shown.text
        assert re.search(r'<form method="post"><button type="submit">More papers like this</button></form>', shown.text)
        assert client.head(more).status_code == 200
    assert site.feedback() == []

    done = client.post(more)
    assert done.status_code == 200 and "more papers like “Fast Sampling for Diffusion Models”" in done.text
    assert site.feedback() == [(site.subscriber_id, site.paper_ids[0], 1)]
    assert "Fewer papers like this" in client.get(site.link(site.paper_ids[0], "down")).text
    assert client.post(site.link(site.paper_ids[0], "down")).status_code == 200
    assert site.feedback() == [(site.subscriber_id, site.paper_ids[0], -1)], "the latest word counts"


def test_a_paper_title_on_the_page_is_escaped(client: TestClient, site: Site) -> None:
    shown = client.get(site.link(site.paper_ids[1]))
    assert "“&lt;b&gt;Attention&lt;/b&gt; &amp; Friends”" in shown.text and "<b>" not in shown.text


def test_a_link_for_one_paper_cannot_act_on_another(client: TestClient, site: Site) -> None:
    first, second = site.paper_ids
    borrowed = site.link(first, path_paper_id=second)
    for answer in (client.get(borrowed), client.post(borrowed)):
        assert answer.status_code == 400
        assert "not valid for that paper" in answer.text
    assert site.feedback() == []


def test_a_link_expires_after_the_configured_days(site: Site) -> None:
    paper = site.paper_ids[0]
    with TestClient(create_app(settings=site.settings, sessions=site.sessions)) as client:  # 60 days
        assert client.get(site.link(paper, issued_at=dt.datetime.now(dt.UTC) - 59 * DAY)).status_code == 200
        old = site.link(paper, issued_at=dt.datetime.now(dt.UTC) - 61 * DAY)
        for answer in (client.get(old), client.post(old)):
            assert answer.status_code == 410
            assert "This link has expired (links work for 60 days)" in answer.text
    week = site.settings.model_copy(update={"feedback_link_days": 7})
    with TestClient(create_app(settings=week, sessions=site.sessions)) as client:
        assert client.post(site.link(paper, issued_at=dt.datetime.now(dt.UTC) - 8 * DAY)).status_code == 410
    assert site.feedback() == []


@pytest.mark.parametrize(("path", "status", "says"), [
    ("/feedback/forged-token/{paper}/up", 400, "This link is not valid"),
    ("/feedback/{token}/{paper}/sideways", 404, "This link is not one we sent"),
    ("/feedback/{token}/" + str(10**30) + "/up", 404, "This link is not one we sent"),
    ("/feedback/{token}/" + str(2**63) + "/down", 404, "This link is not one we sent"),
    ("/feedback/{token}/0/up", 404, "This link is not one we sent"),
    ("/feedback/{token}/-5/up", 404, "There is no such page"),
    ("/feedback/{token}/{paper}", 404, "There is no such page"),
    ("/nothing-here", 404, "There is no such page"),
])
def test_bad_links_answer_a_clear_page_and_change_nothing(client: TestClient, site: Site, path: str, status: int,
                                                          says: str) -> None:
    paper = site.paper_ids[0]
    url = path.format(token=site.link(paper).split("/")[2], paper=paper)
    for method in ("GET", "POST"):
        answer = client.request(method, url)
        assert answer.status_code == status, (method, answer.text)
        assert answer.headers["content-type"].startswith("text/html") and says in answer.text
    assert site.feedback() == []


def test_a_link_to_a_paper_no_longer_stored_is_not_found(client: TestClient, site: Site) -> None:
    gone = client.post(site.link(999_999))
    assert gone.status_code == 404 and "no longer in our records" in gone.text
    assert site.feedback() == []


@pytest.mark.parametrize("huge", [2**63, 10**30])
def test_a_huge_paper_id_is_not_found_even_when_signed(client: TestClient, site: Site, huge: int) -> None:
    """Past SQLite's INTEGER the id cannot even be bound: it must never reach the database."""
    for method in ("GET", "POST"):
        answer = client.request(method, site.link(huge))
        assert answer.status_code == 404 and "This link is not one we sent" in answer.text
    assert site.feedback() == []


def test_other_methods_are_refused(client: TestClient, site: Site) -> None:
    answer = client.put(site.link(site.paper_ids[0]))
    assert answer.status_code == 405 and {m.strip() for m in answer.headers["allow"].split(",")} == {"GET", "HEAD", "POST"}


def test_every_response_carries_the_security_headers(client: TestClient, site: Site) -> None:
    site_pages = Pages(templates=make_environment(), list_name="x")
    stylesheet, script = site_pages.css, site_pages.script
    link = site.link(site.paper_ids[0])
    answers = [client.get(link), client.head(link), client.post(link), client.get("/feedback/x/1/up"),
               client.get("/nowhere"), client.put(link),
               client.get(site.link(site.paper_ids[0], issued_at=dt.datetime.now(dt.UTC) - 90 * DAY))]
    assert [a.status_code for a in answers] == [200, 200, 200, 400, 404, 405, 410]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["cache-control"] == "no-store"
        policy = dict(part.strip().split(" ", 1) for part in answer.headers["content-security-policy"].split(";"))
        assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
        assert policy["form-action"] == "'self'" and policy["base-uri"] == "'none'"
        assert policy["style-src"] == content_hash(stylesheet), "only the page's own <style> element"
        assert policy["script-src"] == content_hash(script), "only the page's own <script> element"
    assert f"<style>{stylesheet}</style>" in answers[0].text, "the allowed style is the one the page has"


# Links are issued at the start (UTC) of the day before the issue date: a digest 60 days old has dead ones.
@pytest.mark.parametrize(("days_ago", "status"), [(61, 410), (60, 410), (58, 200), (0, 200), (-1, 200)])
def test_links_in_a_digest_expire_counting_from_its_issue_date(client: TestClient, site: Site, days_ago: int,
                                                               status: int) -> None:
    """A digest rendered ahead of its date (a subscriber east of UTC) has links that work at once."""
    issue_date = dt.datetime.now(dt.UTC).date() - days_ago * DAY
    papers = [RankedPaper(Paper(key=str(n), title="t", abstract="a", id=n), 1.0, ()) for n in site.paper_ids]
    delivery = DueDelivery(1, site.subscriber_id, "ada@example.org", "<m@example.org>", issue_date)
    digest = digest_for(settings=site.settings, delivery=delivery, picks=papers)
    assert [url.rsplit("/", 1)[1] for url in digest.feedback_urls] == [str(n) for n in site.paper_ids]
    assert client.post(digest.feedback_urls[1].removeprefix(site.settings.base_url) + "/down").status_code == status
    assert site.feedback() == ([(site.subscriber_id, site.paper_ids[1], -1)] if status == 200 else [])


def test_even_a_server_error_carries_the_security_headers(site: Site, tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")  # never migrated
    with TestClient(create_app(settings=site.settings, sessions=make_sessionmaker(engine)),
                    raise_server_exceptions=False) as client:
        answer = client.get(site.link(site.paper_ids[0]))
    engine.dispose()
    assert answer.status_code == 500 and "Traceback" not in answer.text
    assert answer.headers["referrer-policy"] == "no-referrer" and answer.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in answer.headers["content-security-policy"]
