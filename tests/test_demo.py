"""``newsletter demo``: the whole product offline, careful with the user's folders."""

from __future__ import annotations

import html
import json
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

from newsletter.demo import MARKER, SAMPLE_TRENDING


def emails(folder: Path) -> list[EmailMessage]:
    found = []
    for path in sorted((folder / "outbox").glob("*/*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=default)
        assert isinstance(message, EmailMessage)
        found.append(message)
    return found


def html_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("html",))
    assert body is not None
    return body.get_content()


def test_the_demo_email_shows_the_whole_product(cli, tmp_path: Path) -> None:
    result = cli("demo", "--dir", str(tmp_path / "demo"))
    assert result.code == 0, result.err
    # Each step is said (a line each, outside a terminal); the tests run without the semantic ranker,
    # so no embedding step here (test_the_demo_says_it_is_embedding has it).
    steps = result.err.splitlines()
    assert [s.split(" ")[1] for s in steps] == ["ingesting", "scoring,"], steps
    sent = emails(tmp_path / "demo")
    assert len(sent) == 3
    trending = {item["paper"]["id"]: item["paper"] for item in json.loads(SAMPLE_TRENDING.read_text())}
    with_summary = {i: p for i, p in trending.items() if p.get("ai_summary")}
    with_code = {i: p for i, p in trending.items() if p.get("githubRepo")}
    shown_summaries = shown_code = 0
    for message in sent:
        page = html_of(message)
        assert "Trending today" in page
        assert "upvotes" in page
        shown_summaries += sum(html.escape(p["ai_summary"], quote=False) in page for p in with_summary.values())
        shown_code += sum(p["githubRepo"] in page for p in with_code.values())
    assert shown_summaries >= 1, "no TL;DR from the trending data in any demo email"
    assert shown_code >= 1, "no code link in any demo email"


def test_the_demo_refuses_a_folder_it_did_not_make_and_touches_nothing(cli, tmp_path: Path) -> None:
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("years of work")
    (folder / "outbox").mkdir()
    (folder / "outbox" / "draft.eml").write_text("keep me")
    result = cli("demo", "--dir", str(folder))
    assert result.code == 1
    assert "is not empty and was not made by the demo" in result.err
    assert result.err.strip().count("\n") == 0
    assert sorted(p.name for p in folder.rglob("*")) == ["chapter1.tex", "draft.eml", "outbox"]
    assert (folder / "chapter1.tex").read_text() == "years of work"


def test_the_demo_runs_again_in_its_own_folder_and_removes_only_its_own_files(cli, tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    assert cli("demo", "--dir", str(folder)).code == 0
    assert (folder / MARKER).is_file()
    (folder / "notes.txt").write_text("mine")  # the user puts something in the demo's folder
    again = cli("demo", "--dir", str(folder))
    assert again.code == 0, again.err
    assert (folder / "notes.txt").read_text() == "mine"
    assert len(emails(folder)) == 3  # the previous run's emails were cleared, not added to


def test_a_rerun_keeps_the_users_files_in_the_outbox_even_emails_it_did_not_write(cli, tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    assert cli("demo", "--dir", str(folder)).code == 0
    first_run = sorted((folder / "outbox").glob("*/*.eml"))
    (folder / "outbox" / "ada_example.org" / "note.eml").write_text("mine")  # beside the demo's own email to Ada
    (folder / "outbox" / "mine2.txt").write_text("mine too")
    (folder / "outbox" / "drafts").mkdir()
    (folder / "outbox" / "drafts" / "letter.eml").write_text("and mine")
    again = cli("demo", "--dir", str(folder))
    assert again.code == 0, again.err
    assert [(folder / "outbox" / name).read_text() for name in ("ada_example.org/note.eml", "mine2.txt", "drafts/letter.eml")] == [
        "mine", "mine too", "and mine"]
    assert not any(path.exists() for path in first_run), "the first run's emails are the demo's own: cleared"
    assert len(emails(folder)) == 5  # this run's three, the user's two


def test_the_demo_refuses_a_file_and_an_empty_folder_is_fine(cli, tmp_path: Path) -> None:
    file = tmp_path / "report.pdf"
    file.write_bytes(b"%PDF")
    refused = cli("demo", "--dir", str(file))
    assert refused.code == 1 and "is a file, not a folder" in refused.err
    assert file.read_bytes() == b"%PDF"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("demo", "--dir", str(empty)).code == 0


def test_the_demo_says_it_is_embedding_rather_than_going_silent_for_a_minute(cli, env, tmp_path: Path, monkeypatch) -> None:
    import newsletter.demo as demo

    embedded: list[int] = []
    monkeypatch.setattr(demo, "embed_new_papers", lambda runtime, now: embedded.append(1) or 0)  # the minute itself
    monkeypatch.setattr("newsletter.plan.embed_for_ranking", lambda *args, **kwargs: None)  # and scoring's own (lexical)
    env(semantic="true")
    result = cli("demo", "--dir", str(tmp_path / "demo"))
    assert result.code == 0, result.err
    steps = result.err.splitlines()
    assert [s.split(" ")[1] for s in steps] == ["ingesting", "embedding", "scoring,"], steps
    assert "211 new papers" in steps[1] and embedded == [1]
