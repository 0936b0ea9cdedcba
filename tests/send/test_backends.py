"""The file and console backends, quiet days, and `newsletter preview`."""

from __future__ import annotations

import json
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery
from tests.conftest import FIXTURES, fixed_send_moment


@pytest.fixture
def ready(cli, configured) -> str:
    assert cli("init").code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models", "--max-papers", "3").code == 0
    assert cli("subscribers", "add", "reef@example.org", "--topic", "coral reef ecology").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"), str(FIXTURES / "hf_daily.json")).code == 0
    return configured


def delivery_count(url: str) -> int:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        count = session.scalar(select(func.count()).select_from(Delivery))
    engine.dispose()
    return count or 0


def test_the_file_backend_writes_one_eml_per_message(cli, ready, tmp_path: Path) -> None:
    assert cli("digest").code == 0
    [eml] = list((tmp_path / "outbox").rglob("*.eml"))
    message = message_from_bytes(eml.read_bytes(), policy=default)
    assert message["To"] == "ada@example.org" and message.get_content_type() == "multipart/alternative"
    assert "Trending today" in message.get_body(("html",)).get_content()
    assert not list((tmp_path / "outbox").rglob("*.tmp"))


def test_the_console_backend_prints_the_messages(cli, env, ready) -> None:
    env(email_backend="console")
    result = cli("digest")
    assert result.code == 0
    assert "--- message for ada@example.org (from digest@example.org) ---" in result.out
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in result.out


def test_quiet_days_send_nothing_unless_asked_to(cli, env, ready, tmp_path: Path) -> None:
    cli("digest")
    assert not (tmp_path / "outbox" / "reef_example.org").exists()
    cli("subscribers", "remove", "reef@example.org", "--yes")
    cli("subscribers", "add", "reef2@example.org", "--topic", "coral reef ecology")
    env(send_empty_digest="true")
    cli("digest")
    [eml] = list((tmp_path / "outbox" / "reef2_example.org").glob("*.eml"))
    assert "nothing new for you today" in message_from_bytes(eml.read_bytes(), policy=default)["Subject"]


def test_preview_writes_the_digest_without_sending_or_recording(cli, ready, tmp_path: Path) -> None:
    out = tmp_path / "ada.html"
    result = cli("preview", "ada@example.org", "--out", str(out))
    assert result.code == 0, result.err
    html = out.read_text()
    assert "diffusion" in html.lower() and "/unsubscribe/" in html and "Trending today" in html
    assert delivery_count(ready) == 0 and not (tmp_path / "outbox").exists()
    cli("digest")
    sent = next((tmp_path / "outbox" / "ada_example.org").glob("*.eml"))
    sent_html = message_from_bytes(sent.read_bytes(), policy=default).get_body(("html",)).get_content()
    again = cli("preview", "ada@example.org", "--out", str(out))
    assert again.code == 0
    titles = [t for t in json.loads(cli("digest", "--dry-run", "--json").out)[0]["papers"]]
    assert all(t["title"] not in out.read_text() for t in titles), "after sending, preview shows what was sent"
    assert out.read_text().count("paper-title") == sent_html.count("paper-title")


def test_preview_replaces_an_earlier_preview_but_no_other_file(cli, ready, tmp_path: Path) -> None:
    """Run as root, "preview … --out /etc/passwd" replaced the system's password file with HTML."""
    precious = tmp_path / "passwd"
    precious.write_text("root:x:0:0:root:/root:/bin/bash\n")
    refused = cli("preview", "ada@example.org", "--out", str(precious))
    assert refused.code == 1 and "exists and is not an HTML page, so it is not overwritten" in refused.err
    assert precious.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
    link = tmp_path / "link.html"
    link.symlink_to(precious)
    assert cli("preview", "ada@example.org", "--out", str(link)).code == 1, "not through a link either"
    page = tmp_path / "page.html"
    assert cli("preview", "ada@example.org", "--out", str(page)).code == 0
    assert cli("preview", "ada@example.org", "--out", str(page)).code == 0, "its own earlier page is replaced"


def test_preview_of_an_unknown_subscriber_is_one_line(cli, ready) -> None:
    result = cli("preview", "ghost@example.org")
    assert result.code == 1 and "no subscriber 'ghost@example.org'" in result.err


def test_no_paper_is_sent_twice_across_days(cli, ready) -> None:
    import datetime as dt

    cli("subscribers", "add", "lm@example.org", "--topic", "language models", "--max-papers", "4")
    first_at = dt.datetime.fromisoformat(fixed_send_moment(ready).replace("Z", "+00:00"))
    today, tomorrow = first_at.date(), first_at.date() + dt.timedelta(days=1)  # local dates: the subscriber is on UTC
    cli("digest", "--allow-future", "--at", first_at.isoformat())
    cli("digest", "--allow-future", "--at", (first_at + dt.timedelta(days=1)).isoformat())
    first = cli("preview", "lm@example.org", "--date", today.isoformat(), "--out", "a.html")
    second = cli("preview", "lm@example.org", "--date", tomorrow.isoformat(), "--out", "b.html")
    assert first.code == second.code == 0
    import re
    from pathlib import Path

    titles = [set(re.findall(r'class="paper-title"[^>]*>([^<]+)<', Path(name).read_text())) for name in ("a.html", "b.html")]
    assert len(titles[0]) == len(titles[1]) == 4 and not titles[0] & titles[1]
