"""Seeds, weights and feedback from the subscriber's side: CLI, a local arXiv API, the web link in an email."""

from __future__ import annotations

import json
import re
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import httpx
import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from werkzeug import Request, Response

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Feedback, Paper
from newsletter.seeds import arxiv_ids_from_bibtex
from newsletter.settings import load_settings
from newsletter.web.app import create_app
from tests.conftest import FIXTURES, free_port, serving

ATOM = (FIXTURES / "arxiv_api.atom").read_text()
HEAD, _, REST = ATOM.partition("  <entry>")
ENTRIES = {re.search(r"abs/(\d{4}\.\d{5})", e).group(1): "  <entry>" + e.replace("</feed>\n", "")
           for e in ("  <entry>" + REST).split("  <entry>") if e.strip()}


@pytest.fixture
def ready(cli, configured) -> str:
    assert cli("init").code == 0
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    return configured


@pytest.fixture
def arxiv_api(env, httpserver: HTTPServer) -> HTTPServer:
    def answer(request: Request) -> Response:
        wanted = request.args["id_list"].split(",")
        return Response(HEAD + "".join(ENTRIES[i] for i in wanted if i in ENTRIES) + "</feed>\n",
                        content_type="application/atom+xml")

    httpserver.expect_request("/api/query").respond_with_handler(answer)
    env(arxiv_api_url=httpserver.url_for("/api/query"))
    return httpserver


def rows(url: str, model) -> list:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        found = list(session.scalars(select(model)))
    engine.dispose()
    return found


def test_weights_seeds_and_minimum_score_are_kept(cli, ready, arxiv_api) -> None:
    added = cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models^2", "--topic", "sampling",
                "--seed", "2611.10061v2", "--seed", "arXiv:2611.10065", "--min-score", "3.5")
    assert added.code == 0, added.err
    shown = json.loads(cli("subscribers", "show", "ada@example.org", "--json").out)
    assert shown["topics"] == ["diffusion models^2", "sampling"]
    assert shown["seed_papers"] == ["2611.10061", "2611.10065"] and shown["min_score"] == 3.5
    seeds = {p.key: p for p in rows(ready, Paper) if p.key in ("2611.10061", "2611.10065")}
    assert set(seeds) == {"2611.10061", "2611.10065"}, "seeds that were not ingested are fetched from the arXiv API"
    assert all(p.first_seen_at.year == 2026 and p.first_seen_at.month == 11 and p.first_seen_at.day == 23 for p in seeds.values())
    assert [r.args["id_list"] for r, _ in arxiv_api.log] == ["2611.10061,2611.10065"]
    picks = json.loads(cli("digest", "--dry-run", "--json").out)[0]["papers"]
    assert picks and all(p["score"] >= 3.5 for p in picks)
    assert not {"2611.10061", "2611.10065"} & {p["arxiv_id"] for p in picks}, "a seed is never announced as new"


def test_bad_seeds_and_weights_are_refused(cli, ready, arxiv_api) -> None:
    assert "is not an arXiv id" in cli("subscribers", "add", "a@example.org", "--seed", "not-an-id").err
    assert "arXiv does not know the seed paper(s) 2611.00001" in cli("subscribers", "add", "b@example.org", "--seed", "2611.00001").err
    assert "weight after ^ must be a number" in cli("subscribers", "add", "c@example.org", "--topic", "graphs^lots").err
    assert "give the words before the weight" in cli("subscribers", "add", "d@example.org", "--topic", "^2").err  # was no topic
    assert json.loads(cli("subscribers", "list", "--json").out) == []


def test_seeds_the_api_cannot_give_now_and_bibtex_files_with_none_say_so(cli, env, ready, tmp_path: Path) -> None:
    """Offline, --seed 2611.99999 said "https://export.arxiv.org/api/query?...: cannot connect ... check the URL" (the
    user gave an id, not a URL); a file of random bytes as --seed-bibtex was taken as no seeds, without a word."""
    env(arxiv_api_url=f"http://127.0.0.1:{free_port()}/api/query", fetch_timeout_s=5)
    offline = cli("subscribers", "add", "ada@example.org", "--topic", "graphs", "--seed", "2611.99999")
    assert offline.code == 1 and "cannot fetch the seed paper(s) 2611.99999 from the arXiv API (" in offline.err
    assert "nothing was changed" in offline.err and json.loads(cli("subscribers", "list", "--json").out) == []
    noise = tmp_path / "noise.bib"
    noise.write_bytes(bytes(range(256)) * 8)
    journal_only = tmp_path / "journal.bib"
    journal_only.write_text("@article{a, title={Not on arXiv}, journal={Nature}}\n")
    for path in (noise, journal_only):
        refused = cli("subscribers", "add", "ada@example.org", "--seed-bibtex", str(path))
        assert refused.code == 1 and f"{path}: " in refused.err and "no entry with an arXiv id" in refused.err, refused.err
    device = cli("subscribers", "add", "ada@example.org", "--seed-bibtex", "/dev/zero")
    assert device.code == 1 and "/dev/zero: not a regular file" in device.err


def test_seeds_come_from_a_bibtex_file(cli, ready, arxiv_api, tmp_path: Path) -> None:
    bib = tmp_path / "mine.bib"
    bib.write_text("""
@article{a, title={One}, author={X}, eprint={2611.10051}, archivePrefix={arXiv}}
@misc{b, title={Two}, url={https://arxiv.org/abs/2611.10052v3}}
@article{c, title={Three}, doi={10.48550/arXiv.2611.10053}}
@article{d, title={Four}, journal={arXiv preprint arXiv:2611.10054}}
@inproceedings{e, title={Not on arXiv}, booktitle={Proceedings}}
""")
    assert arxiv_ids_from_bibtex(bib.read_text()) == ["2611.10051", "2611.10052", "2611.10053", "2611.10054"]
    assert cli("subscribers", "add", "ada@example.org", "--seed-bibtex", str(bib)).code == 0
    assert json.loads(cli("subscribers", "show", "ada@example.org", "--json").out)["seed_papers"] == [
        "2611.10051", "2611.10052", "2611.10053", "2611.10054"]


def test_feedback_from_the_cli_changes_the_next_ranking(cli, ready) -> None:
    cli("subscribers", "add", "ada@example.org", "--topic", "time series", "--max-papers", "5")
    before = [p["arxiv_id"] for p in json.loads(cli("digest", "--dry-run", "--json").out)[0]["papers"]]
    assert cli("feedback", "ada@example.org", before[0], "down").code == 0
    after = [p["arxiv_id"] for p in json.loads(cli("digest", "--dry-run", "--json").out)[0]["papers"]]
    assert after != before and (before[0] not in after or after.index(before[0]) > 0)
    assert "no paper '2611.99999'" in cli("feedback", "ada@example.org", "2611.99999", "up").err
    assert "say up (more like this) or down" in cli("feedback", "ada@example.org", before[0], "sideways").err
    [row] = rows(ready, Feedback)
    assert row.value == -1


def test_a_paper_rated_before_it_was_sent_is_not_sent_as_news(cli, ready) -> None:
    """Rated "up" from the command line, a paper the reader had not been sent came back as their top pick,
    "similar to a paper you liked" itself: whatever they rated, they have seen."""
    cli("subscribers", "add", "ada@example.org", "--topic", "time series", "--max-papers", "5")
    before = [p["arxiv_id"] for p in json.loads(cli("digest", "--dry-run", "--json").out)[0]["papers"]]
    liked = before[-1]
    assert cli("feedback", "ada@example.org", liked, "up").code == 0
    after = json.loads(cli("digest", "--dry-run", "--json").out)[0]["papers"]
    assert liked not in [p["arxiv_id"] for p in after] and len(after) == 5
    assert any(r.startswith("similar to a paper you liked") for p in after for r in p["reasons"])


@pytest.fixture
def web(env, ready):
    port = free_port()
    env(base_url=f"http://127.0.0.1:{port}")
    settings = load_settings()
    engine = make_engine(ready)
    with serving(create_app(settings=settings, sessions=make_sessionmaker(engine)), port=port) as url:
        yield url
    engine.dispose()


def test_the_links_in_an_email_record_feedback(cli, ready, web, tmp_path: Path) -> None:
    cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models", "--max-papers", "3")
    assert cli("digest").code == 0
    eml = next((tmp_path / "outbox").rglob("*.eml"))
    html = message_from_bytes(eml.read_bytes(), policy=default).get_body(("html",)).get_content()
    more = re.findall(r'href="([^"]+/up)"[^>]*>More like this', html)
    less = re.findall(r'href="([^"]+/down)"[^>]*>Less like this', html)
    assert len(more) == len(less) == 3 and all(link.startswith(web + "/feedback/") for link in more + less)
    assert len({link.split("/")[-3] for link in more}) == 3, "each paper's links carry a token of their own"
    for link in (more[0], less[1]):  # what a mail scanner does
        page = httpx.get(link)
        assert page.status_code == 200 and '<form method="post">' in page.text
        assert httpx.head(link).status_code == 200
    assert rows(ready, Feedback) == [], "opening a link records nothing"
    answer = httpx.post(more[0])
    assert answer.status_code == 200 and "more papers like" in answer.text
    assert httpx.post(less[1]).status_code == 200
    values = sorted(f.value for f in rows(ready, Feedback))
    assert values == [-1, 1]
    forged = re.sub(r"/feedback/[^/]+/", "/feedback/forged-token/", more[0])
    assert httpx.post(forged).status_code == 400
    other_paper = less[2].split("/")[-2]
    assert httpx.post(re.sub(r"/\d+/up$", f"/{other_paper}/up", more[0])).status_code == 400
    assert len(rows(ready, Feedback)) == 2
