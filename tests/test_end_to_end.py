"""The whole product: a feed served over HTTP → ingest → subscribers → digest → a real SMTP server."""

from __future__ import annotations

import json

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, Paper
from tests.conftest import FIXTURES


@pytest.fixture
def feed_url(httpserver: HTTPServer) -> str:
    body = (FIXTURES / "arxiv_cs_lg.rss").read_bytes()
    httpserver.expect_request("/rss/cs.LG").respond_with_data(body, content_type="application/rss+xml; charset=utf-8")
    return httpserver.url_for("/rss/cs.LG")


def test_digest_reaches_each_subscriber_once_over_smtp(cli, env, configured, smtp_server, feed_url, httpserver) -> None:
    # The local server stands in for arXiv: its host is the configured arXiv API host, so its listing is trusted.
    env(email_backend="smtp", smtp_host=smtp_server.host, smtp_port=smtp_server.port, smtp_security="none",
        smtp_pool_size=1, arxiv_api_url=httpserver.url_for("/api/query"))
    assert cli("init").code == 0
    assert cli("sources", "add", feed_url).code == 0
    assert cli("subscribers", "add", "Ada@Example.org", "--topic", "diffusion models", "--topic", "image generation").code == 0
    assert cli("subscribers", "add", "grace@example.org", "--topic", "large language models",
               "--describe", "I build assistants that retrieve documents before answering").code == 0
    assert cli("subscribers", "add", "nobody@example.org", "--topic", "marine biology of coral reefs").code == 0

    ingest = cli("ingest", "--json")
    assert ingest.code == 0, ingest.err
    [report] = json.loads(ingest.out)
    assert (report["fetched"], report["new"], report["error"]) == (60, 60, None)

    first = cli("digest")
    assert first.code == 0, first.err
    by_recipient = {r.recipients[0]: r for r in smtp_server.received}
    # The coral-reef subscriber had nothing above the threshold: a quiet day sends no email.
    assert sorted(by_recipient) == ["ada@example.org", "grace@example.org"]
    assert smtp_server.sessions == 1, "one SMTP connection carries all of a run's messages"
    for address, received in by_recipient.items():
        message = received.message
        assert received.sender == "digest@example.org"
        assert message["To"] == address
        assert message.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "https://digest.example.org/unsubscribe/" in message["List-Unsubscribe"]
        html = message.get_body(("html",)).get_content()
        assert "https://arxiv.org/abs/2611." in html and "/unsubscribe/" in html
    ada_text = by_recipient["ada@example.org"].message.get_body(("plain",)).get_content()
    assert "diffusion" in ada_text.lower() and "Why: topic:" in ada_text

    second = cli("digest")
    assert second.code == 0
    assert len(smtp_server.received) == 2, "a second run the same day must send nothing"

    engine = make_engine(configured)
    with make_sessionmaker(engine)() as session:
        statuses = sorted(session.scalars(select(Delivery.status)))
        assert statuses == ["empty", "sent", "sent"]
        assert session.query(Paper).count() == 60
    engine.dispose()


def test_dry_run_json_lists_ranked_picks_and_sends_nothing(cli, env, configured, smtp_server) -> None:
    env(email_backend="smtp", smtp_host=smtp_server.host, smtp_port=smtp_server.port, smtp_security="none")
    cli("init")
    cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models", "--max-papers", "3")
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0

    result = cli("digest", "--dry-run", "--json")
    assert result.code == 0, result.err
    [entry] = json.loads(result.out)
    assert entry["email"] == "ada@example.org"
    scores = [p["score"] for p in entry["papers"]]
    assert 1 <= len(scores) <= 3 and scores == sorted(scores, reverse=True)
    assert all(p["arxiv_id"].startswith("2611.") and p["title"] and p["reasons"] for p in entry["papers"])
    assert smtp_server.received == []
    engine = make_engine(configured)
    with make_sessionmaker(engine)() as session:
        assert session.scalars(select(Delivery)).all() == []
    engine.dispose()
