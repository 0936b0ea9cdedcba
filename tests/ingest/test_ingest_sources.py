"""`newsletter ingest` over real HTTP: every source kind, merged into one paper per arXiv id."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from werkzeug import Request, Response

from newsletter.db import repo
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Paper, Source
from tests.conftest import FIXTURES

ATOM = (FIXTURES / "arxiv_api.atom").read_text()
HEAD, _, REST = ATOM.partition("  <entry>")
ENTRIES = ["  <entry>" + e for e in ("  <entry>" + REST).split("  <entry>") if e.strip()]
ENTRIES[-1] = ENTRIES[-1].replace("</feed>\n", "")


def atom_page(start: int, size: int) -> str:
    return HEAD + "".join(ENTRIES[start : start + size]) + "</feed>\n"


@pytest.fixture
def ready(cli, configured) -> str:
    assert cli("init").code == 0
    return configured


@pytest.fixture
def db(ready):
    engine = make_engine(ready)
    yield make_sessionmaker(engine)
    engine.dispose()


def ingest(cli, *sources: str) -> list[dict]:
    result = cli("ingest", *sources, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_arxiv_api_queries_are_paged_three_seconds_apart(cli, db, httpserver: HTTPServer) -> None:
    stamps: list[float] = []

    def api(request: Request) -> Response:
        stamps.append(time.monotonic())
        start, size = int(request.args["start"]), int(request.args["max_results"])
        return Response(atom_page(start, size), content_type="application/atom+xml")

    # The kind is detected from the path, as for export.arxiv.org/api/query.
    httpserver.expect_request("/export.arxiv.org/api/query").respond_with_handler(api)
    url = httpserver.url_for("/export.arxiv.org/api/query") + "?search_query=cat%3Acs.LG&max_results=12"
    [report] = ingest(cli, url)
    assert report["fetched"] == 20 and report["new"] == 20
    starts = [int(r.args["start"]) for r, _ in httpserver.log]
    assert starts == [0, 12]
    assert stamps[1] - stamps[0] >= 3.0, "the arXiv API allows one request every three seconds"
    with db() as session:
        assert len(session.scalars(select(Paper)).all()) == 20


def test_trending_papers_bring_upvotes_summaries_links_and_merge_with_arxiv(cli, db, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/rss").respond_with_data((FIXTURES / "arxiv_cs_lg.rss").read_bytes(),
                                                        content_type="application/rss+xml")
    trending = json.loads((FIXTURES / "hf_daily.json").read_text())
    httpserver.expect_request("/api/daily_papers").respond_with_handler(lambda request: Response(
        json.dumps(trending), content_type="application/json"))  # serves the list as it is at request time
    ingest(cli, httpserver.url_for("/rss"))
    [report] = ingest(cli, httpserver.url_for("/api/daily_papers"))
    assert (report["fetched"], report["new"], report["updated"]) == (15, 5, 10)  # 10 already listed by arXiv
    assert httpserver.log[-1][0].args["date"] == dt.datetime.now(dt.UTC).date().isoformat()
    with db() as session:
        paper = session.scalar(select(Paper).where(Paper.key == "2611.10000"))
        assert paper.upvotes == 120 and paper.tldr and paper.keywords
        assert paper.links["code"] == "https://github.com/example-lab/paper-0"
        assert paper.links["project"] == "https://example-lab.github.io/paper-0/"
        assert paper.categories and paper.authors  # what arXiv said is kept
        assert session.query(Paper).count() == 65

    for element in trending:
        element["paper"]["upvotes"] += 30
    [again] = ingest(cli, httpserver.url_for("/api/daily_papers"))
    assert again["updated"] == 15
    with db() as session:
        assert [votes for _, votes in repo.upvote_history(session, key="2611.10000")] == [120, 150]


def test_json_from_an_unnamed_url_is_read_as_trending_papers(cli, db, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/trending.json").respond_with_data((FIXTURES / "hf_daily.json").read_bytes(),
                                                                  content_type="application/json")
    [report] = ingest(cli, httpserver.url_for("/trending.json"))
    assert report["new"] == 15


def test_a_replaced_version_updates_the_paper_without_announcing_it_again(cli, db, httpserver: HTTPServer) -> None:
    original = (FIXTURES / "arxiv_cs_lg.rss").read_text()
    start = original.index("<link>https://arxiv.org/abs/2611.10003</link>")
    end = original.index("</item>", start)
    item = (original[start:end].replace("2611.10003v1 Announce Type: new", "2611.10003v2 Announce Type: replace")
            .replace("oai:arXiv.org:2611.10003v1", "oai:arXiv.org:2611.10003v2")
            .replace("<arxiv:announce_type>new<", "<arxiv:announce_type>replace<")
            .replace("Foundation models are redefining", "Foundation models now redefine"))
    replaced = original[:start] + item + original[end:]
    httpserver.expect_ordered_request("/rss").respond_with_data(original, content_type="application/rss+xml")
    httpserver.expect_ordered_request("/rss").respond_with_data(replaced, content_type="application/rss+xml")
    ingest(cli, httpserver.url_for("/rss"))
    with db() as session:
        first_seen = session.scalar(select(Paper.first_seen_at).where(Paper.key == "2611.10003"))
    [report] = ingest(cli, httpserver.url_for("/rss"))
    assert (report["new"], report["updated"], report["unchanged"]) == (0, 1, 59)
    with db() as session:
        paper = session.scalar(select(Paper).where(Paper.key == "2611.10003"))
        assert (paper.version, paper.announce_type, paper.updated_fields) == (2, "replace", ["abstract"])
        assert paper.first_seen_at == first_seen and paper.version_updated_at is not None


def test_one_broken_source_does_not_stop_the_others(cli, db, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/good").respond_with_data((FIXTURES / "arxiv_cs_lg.rss").read_bytes())
    httpserver.expect_request("/broken").respond_with_data("<html><body>gone</body></html>", content_type="text/html")
    httpserver.expect_request("/weekend").respond_with_data((FIXTURES / "arxiv_weekend.rss").read_bytes())
    for path in ("/good", "/broken", "/weekend"):
        assert cli("sources", "add", httpserver.url_for(path), "--no-check").code == 0
    result = cli("ingest", "--json")
    assert result.code == 1
    good, broken, weekend = json.loads(result.out)
    assert (good["new"], good["error"]) == (60, None)
    assert "not a feed, it is an HTML page" in broken["error"] and broken["new"] == 0
    assert (weekend["error"], weekend["note"]) == (None, "no new papers (normal on weekends and holidays)")
    with db() as session:
        assert session.query(Paper).count() == 60
        errors = {s.url.rsplit("/", 1)[1]: s.last_error for s in session.scalars(select(Source))}
    assert errors["good"] is None and "HTML page" in errors["broken"] and errors["weekend"] is None


def test_configured_sources_use_conditional_get_and_skip_identical_bytes(cli, db, httpserver: HTTPServer) -> None:
    body = (FIXTURES / "arxiv_cs_lg.rss").read_bytes()

    def with_etag(request: Request) -> Response:
        if request.headers.get("If-None-Match") == '"abc"':
            return Response(status=304)
        return Response(body, headers={"ETag": '"abc"'}, content_type="application/rss+xml")

    httpserver.expect_request("/etag").respond_with_handler(with_etag)
    httpserver.expect_request("/plain").respond_with_data(body, content_type="application/rss+xml")
    cli("sources", "add", httpserver.url_for("/etag"), "--no-check")
    cli("sources", "add", httpserver.url_for("/plain"), "--no-check")
    ingest(cli)
    etag, plain = ingest(cli)
    assert etag["note"] == "not modified since the last fetch" and etag["fetched"] == 0
    assert plain["note"] == "same content as the last fetch" and plain["fetched"] == 0


def test_ingest_prints_a_table_of_sources(cli, ready) -> None:
    result = cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"), str(FIXTURES / "arxiv_weekend.rss"))
    assert result.code == 0
    header = next(line for line in result.out.splitlines() if "source" in line)
    for column in ("source", "fetched", "new", "updated", "unchanged", "errors", "time"):
        assert column in header
    assert "no new papers" in result.out


def test_sources_add_refuses_a_private_address_unless_allowed(cli, env, ready, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/rss").respond_with_data((FIXTURES / "arxiv_cs_lg.rss").read_bytes())
    env(allow_private_sources="false")
    refused = cli("sources", "add", httpserver.url_for("/rss"))
    assert refused.code == 1 and "resolves to the non-public address 127.0.0.1" in refused.err
    assert "NEWSLETTER_ALLOW_PRIVATE_SOURCES" in refused.err
    env(allow_private_sources="true")
    added = cli("sources", "add", httpserver.url_for("/rss"))
    assert added.code == 0 and "60 papers now" in added.out


def test_feedparser_is_only_ever_given_bytes(cli, ready, httpserver: HTTPServer, monkeypatch) -> None:
    import feedparser

    given: list[type] = []
    real_parse = feedparser.parse
    monkeypatch.setattr(feedparser, "parse", lambda source, **kw: given.append(type(source)) or real_parse(source, **kw))
    httpserver.expect_request("/rss").respond_with_data((FIXTURES / "arxiv_cs_lg.rss").read_bytes())
    ingest(cli, httpserver.url_for("/rss"), str(FIXTURES / "arxiv_api.atom"))
    assert given == [bytes, bytes]
