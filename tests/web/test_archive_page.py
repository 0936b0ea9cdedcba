""""View in browser" on the web: the digest as sent, only to the holder of that subscriber's VIEW token."""

from __future__ import annotations

import datetime as dt
import re
from email import message_from_bytes
from email.policy import default
from pathlib import Path

from sqlalchemy import select
from starlette.testclient import TestClient

from newsletter import tokens
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Subscriber
from newsletter.settings import load_settings
from newsletter.web.app import create_app
from tests.conftest import FIXTURES


def test_the_archive_shows_the_sent_digest_to_its_token_only(cli, env, sqlite_url: str, tmp_path: Path) -> None:
    env(database_url=sqlite_url, secret_key="archive-test-secret-0123456789abcdef", from_address="digest@example.org",
        outbox_dir=tmp_path / "outbox", base_url="https://digest.example.org")
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    for email in ("ada@example.org", "bob@example.org"):
        assert cli("subscribers", "add", email, "--topic", "diffusion models").code == 0
    assert cli("digest").code == 0
    emails = {}
    for eml in (tmp_path / "outbox").rglob("*.eml"):
        message = message_from_bytes(eml.read_bytes(), policy=default)
        emails[message["To"]] = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    view = re.search(r'href="https://digest\.example\.org(/digest/(\d{4}-\d{2}-\d{2})/[\w.-]+)"', emails["ada@example.org"])
    assert view, "the email has its view-in-browser link"
    path, issue_date = view.group(1), dt.date.fromisoformat(view.group(2))
    settings = load_settings()
    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as session:
        bob_id = session.scalar(select(Subscriber.id).where(Subscriber.email == "bob@example.org"))
    bob_view = tokens.make_token(secret_key=settings.secret_key or "", purpose=tokens.VIEW, subscriber_id=bob_id or 0)
    ada_unsubscribe = re.search(r"/unsubscribe/([\w.-]+)", emails["ada@example.org"])
    assert ada_unsubscribe

    with TestClient(create_app(settings=settings, sessions=make_sessionmaker(engine))) as client:
        page = client.get(path)
        assert page.status_code == 200
        # The page in UTF-8; the email's HTML as 7bit, other characters as character references.
        as_mailed = page.text.encode("ascii", "xmlcharrefreplace").decode().replace("\r\n", "\n")
        assert as_mailed == emails["ada@example.org"].replace("\r\n", "\n"), "the email as it was sent"
        policy = page.headers["content-security-policy"]
        assert "sandbox" in policy and "script-src" not in policy and "default-src 'none'" in policy
        other_day = client.get(path.replace(issue_date.isoformat(), (issue_date - dt.timedelta(days=1)).isoformat()))
        assert other_day.status_code == 404 and "No digest was sent to you on" in other_day.text
        bobs = client.get(f"/digest/{issue_date}/{bob_view}")
        assert bobs.status_code == 200 and "bob@example.org" in bobs.text and "ada@example.org" not in bobs.text
        for wrong, status, says in [(f"/digest/{issue_date}/{ada_unsubscribe.group(1)}", 400, "This link is not valid"),
                                    (f"/digest/{issue_date}/forged", 400, "This link is not valid"),
                                    (path.replace(issue_date.isoformat(), "2026-02-30"), 404, "There is no digest of that date"),
                                    (path.replace(issue_date.isoformat(), "yesterday"), 404, "There is no digest of that date")]:
            answer = client.get(wrong)
            assert answer.status_code == status and says in answer.text, wrong
            assert "sandbox" not in answer.headers["content-security-policy"], "error pages keep the site's policy"
    engine.dispose()
