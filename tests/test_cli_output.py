"""What the CLI prints: text from outside printed as it is, a daily command's output sized for a daily job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from newsletter.wording import inert, plural, shorten
from tests.conftest import FIXTURES

HOSTILE_TITLE = "Diffusion models [/] [link=https://evil.example]go[/link] [bold]now"  # fits the 70-column cut


@pytest.fixture
def hostile_feed(tmp_path: Path) -> Path:
    """The recorded cs.LG feed whose first paper's title carries Rich markup."""
    feed = (FIXTURES / "arxiv_cs_lg.rss").read_text(encoding="utf-8")
    first = feed.index("<title>", feed.index("<item>"))
    end = feed.index("</title>", first)
    path = tmp_path / "hostile.rss"
    path.write_text(feed[:first] + "<title>" + HOSTILE_TITLE + feed[end:], encoding="utf-8")
    return path


@pytest.fixture
def ready(cli, configured) -> str:
    assert cli("init").code == 0
    return configured


def test_markup_in_a_title_is_printed_as_it_is(cli, ready, hostile_feed: Path) -> None:
    assert cli("ingest", str(hostile_feed)).code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models", "--max-papers", "3").code == 0
    sent = cli("digest", "--only", "ada@example.org")
    assert sent.code == 0, sent.err
    flat = "".join(char for char in sent.out if char not in "│┃ \n")  # the table wraps titles at the terminal's width
    assert "[/]" in flat and "[link=https://evil.example]go[/link][bold]now" in flat
    arxiv_id = json.loads(cli("digest", "--dry-run", "--json").out)[0]["papers"][0]["arxiv_id"]
    liked = cli("feedback", "ada@example.org", arxiv_id, "up")
    assert liked.code == 0, liked.err
    assert "noted: more papers like" in liked.out


def test_the_daily_command_prints_a_summary_and_the_detail_on_request(cli, ready) -> None:
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    for name, topic in (("ada", "diffusion models"), ("grace", "language models"), ("alan", "reinforcement learning")):
        assert cli("subscribers", "add", f"{name}@example.org", "--topic", topic).code == 0
    result = cli("digest")
    assert result.code == 0, result.err
    assert "3 subscribers due, scored against" in result.out
    assert "deliveries: sent 3" in result.out and "emails/s" in result.out
    assert "ada@example.org" not in result.out, "no per-subscriber table without --verbose"
    assert len(result.out.splitlines()) <= 3
    verbose = cli("digest", "--dry-run", "--verbose")
    assert verbose.code == 0 and all(f"{n}@example.org" in verbose.out for n in ("ada", "grace", "alan"))
    [summary] = [line for line in verbose.out.splitlines() if line.startswith("digest at ")]
    assert "the next digests of 3 subscribers, scored against" in summary and " due" not in summary


def test_dry_run_json_is_in_email_order_and_says_why_a_paper_sits_above_better_ones(cli, ready) -> None:
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models",
               "--author", "Oriol Novak").code == 0  # the author of the recorded feed's first paper
    [digest] = json.loads(cli("digest", "--dry-run", "--json").out)
    papers = digest["papers"]
    assert papers[0]["order"] == "followed author: always placed first"
    assert any(p["score"] > papers[0]["score"] for p in papers[1:]), "the followed author's paper is not the best scored"
    for position, paper in enumerate(papers[1:], start=1):
        if "order" not in paper:
            assert all(p["score"] >= paper["score"] for p in papers[1:position])


def test_wording_helpers() -> None:
    assert plural(1, "seed paper") == "1 seed paper" and plural(2, "invalid row") == "2 invalid rows"
    assert plural(1_200, "subscriber") == "1,200 subscribers"
    cut = shorten("Attention is all you need for long-term series forecasting", 30)
    assert cut == "Attention is all you need for…" and len(cut) <= 30
    assert shorten("short", 30) == "short"
    assert inert("a\x1b]0;pwned\x07b\u202ec\u200bd\ne") == "abcd e"  # an escape sequence goes whole
    assert inert("a\x1b[2Jb\tc\u2066d") == "ab cd" and inert("plain text") == "plain text"


def test_a_digest_run_reprs_as_a_summary_not_its_picks() -> None:
    """asyncio.run() reprs the main task's result (CPython 3.11): a full repr of 100,000 subscribers' picks
    once cost more than scoring them."""
    import datetime as dt

    from newsletter.pipeline import DigestRun, Pick

    run = DigestRun(dt.datetime(2026, 12, 1, 7, tzinfo=dt.UTC), candidates=211, due=10_000,
                    picks=[Pick(f"r{n}@example.org", [], dt.date(2026, 12, 1)) for n in range(10_000)])
    assert repr(run) == ("DigestRun(now=2026-12-01T07:00:00+00:00, candidates=211, due=10000, missed=0, outcomes={}, "
                         "errors=0)")


def test_a_long_json_list_is_printed_in_chunks_as_the_same_bytes_as_at_once(capsysbinary, monkeypatch) -> None:
    """A dry run's JSON for 100,000 subscribers is written a chunk at a time (memory), byte for byte what
    one ``orjson.dumps`` of the whole list gives, compact into a pipe and indented at a terminal."""
    import sys

    import orjson

    from newsletter.cli import _print_json_list

    items = [{"email": f"r{i}@example.org", "reasons": ("topic: “graphs”",), "n": i} for i in range(7)]
    for tty in (False, True):
        monkeypatch.setattr(sys.stdout, "isatty", lambda tty=tty: tty)
        for count in (0, 1, 2, 7):
            _print_json_list(items[:count], dict, chunk=2)
            option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if tty else 0)
            assert capsysbinary.readouterr().out == orjson.dumps(items[:count], option=option) + b"\n"
