""""View in browser" shows the email that was sent: same papers, reasons, links and trending section."""

from __future__ import annotations

import datetime as dt
from email import message_from_bytes
from email.policy import default
from pathlib import Path

from sqlalchemy import select, update

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, Paper, Subscriber
from newsletter.issue import archived_html
from newsletter.render.digest import make_environment
from newsletter.settings import load_settings
from tests.conftest import FIXTURES


def test_the_archive_is_the_sent_email_even_after_trending_moved_on(cli, configured, tmp_path: Path) -> None:
    assert cli("init").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"), str(FIXTURES / "hf_daily.json")).code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models", "--topic", "language models").code == 0
    sent = cli("digest")
    assert sent.code == 0, sent.err
    [eml] = (tmp_path / "outbox").rglob("*.eml")
    sent_html = message_from_bytes(eml.read_bytes(), policy=default).get_body(("html",)).get_content()

    engine = make_engine(configured)
    sessions = make_sessionmaker(engine)
    settings = load_settings()
    with sessions.begin() as session:
        delivery = session.scalar(select(Delivery))
        assert delivery.status == "sent" and delivery.trending_ids, "the trending section was recorded"
        trending_titles = [session.get(Paper, i).title for i in delivery.trending_ids]
        # A day later other papers trend: the archive must not show them.
        session.execute(update(Paper).values(upvotes=None))
        newcomer = session.scalar(select(Paper).where(Paper.id.not_in(delivery.trending_ids)).limit(1))
        newcomer.upvotes = 10_000
        subscriber_id, issue_date = delivery.subscriber_id, delivery.issue_date
    with sessions() as session:
        archived = archived_html(session, settings=settings, templates=make_environment(), subscriber_id=subscriber_id,
                                 issue_date=issue_date)
        nothing = archived_html(session, settings=settings, templates=make_environment(), subscriber_id=subscriber_id,
                                issue_date=issue_date - dt.timedelta(days=1))
        assert session.scalar(select(Subscriber.email)) == "ada@example.org"
    engine.dispose()
    # The email carries its HTML as 7bit, other characters as character references (render.mime.html_part).
    assert archived is not None
    assert archived.encode("ascii", "xmlcharrefreplace").decode().replace("\r\n", "\n") == sent_html.replace("\r\n", "\n")
    assert any(title[:40] in archived for title in trending_titles)
    assert newcomer.title[:40] not in archived or newcomer.title[:40] in sent_html
    assert nothing is None


def test_the_sent_email_the_archive_and_the_preview_leave_out_trending_papers_the_reader_excludes(
        cli, configured, tmp_path: Path) -> None:
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"), str(FIXTURES / "hf_daily.json")).code == 0
    engine = make_engine(configured)
    with make_sessionmaker(engine)() as session:
        top = session.scalar(select(Paper).where(Paper.upvotes.is_not(None)).order_by(Paper.upvotes.desc()).limit(1))
    engine.dispose()
    # Excluding the trending paper's own first title words: whatever the fixture's top paper is about.
    phrase = " ".join(top.title.split()[:3])
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models", "--exclude", phrase).code == 0
    assert cli("subscribers", "add", "bob@example.org", "--topic", "diffusion models").code == 0
    preview = cli("preview", "ada@example.org", "--out", str(tmp_path / "preview.html"))
    assert preview.code == 0, preview.err
    assert cli("digest").code == 0
    emails = {eml.parent.name: message_from_bytes(eml.read_bytes(), policy=default) for eml in (tmp_path / "outbox").rglob("*.eml")}
    text = {who: m.get_body(("plain",)).get_content() for who, m in emails.items()}
    ada, bob = text["ada_example.org"], text["bob_example.org"]
    assert top.title[:30] in bob.split("TRENDING TODAY", 1)[1], "the fixture's top paper trends for a reader who keeps it"
    assert top.title[:30] not in ada
    assert top.title[:30] not in (tmp_path / "preview.html").read_text(encoding="utf-8")
    settings = load_settings()
    with make_sessionmaker(make_engine(configured))() as session:
        delivery = session.scalar(select(Delivery).join(Subscriber).where(Subscriber.email == "ada@example.org"))
        assert delivery.trending_ids is not None and top.id not in delivery.trending_ids
        archived = archived_html(session, settings=settings, templates=make_environment(), subscriber_id=delivery.subscriber_id,
                                 issue_date=delivery.issue_date)
    assert archived is not None and top.title[:30] not in archived
