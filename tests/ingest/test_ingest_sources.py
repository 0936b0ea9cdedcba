"""`newsletter ingest` over real HTTP: every source kind, merged into one paper per arXiv id."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
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


@pytest.fixture
def arxiv_here(env, httpserver: HTTPServer) -> HTTPServer:
    """The test server's host speaks for arXiv: it is the configured arXiv API's (NEWSLETTER_ARXIV_API_URL)."""
    env(arxiv_api_url=httpserver.url_for("/api/query"))
    return httpserver


def ingest(cli, *sources: str) -> list[dict]:
    result = cli("ingest", *sources, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_arxiv_api_queries_are_paged_three_seconds_apart(cli, db, arxiv_here: HTTPServer) -> None:
    arrived: list[float] = []
    finished: list[float] = []

    def api(request: Request) -> Response:
        arrived.append(time.monotonic())
        start, size = int(request.args["start"]), int(request.args["max_results"])
        page = atom_page(start, size).encode()

        def body():
            yield page[:-100]
            finished.append(time.monotonic())  # the last bytes leave after this: the client has them later still
            yield page[-100:]

        return Response(body(), content_type="application/atom+xml")

    # The kind is detected from the path, as for export.arxiv.org/api/query.
    arxiv_here.expect_request("/export.arxiv.org/api/query").respond_with_handler(api)
    url = arxiv_here.url_for("/export.arxiv.org/api/query") + "?search_query=cat%3Acs.LG&max_results=12"
    [report] = ingest(cli, url)
    assert report["fetched"] == 20 and report["new"] == 20
    starts = [int(r.args["start"]) for r, _ in arxiv_here.log]
    assert starts == [0, 12]
    # As the server sees it, from the end of one answer to the next request: never a hair under 3 s.
    assert arrived[1] - finished[0] >= 3.0, "the arXiv API allows one request every three seconds"
    with db() as session:
        assert len(session.scalars(select(Paper).where(Paper.arxiv_id.is_not(None))).all()) == 20


def test_trending_papers_bring_upvotes_summaries_links_and_merge_with_arxiv(cli, db, httpserver: HTTPServer) -> None:
    trending = json.loads((FIXTURES / "hf_daily.json").read_text())
    httpserver.expect_request("/api/daily_papers").respond_with_handler(lambda request: Response(
        json.dumps(trending), content_type="application/json"))  # serves the list as it is at request time
    ingest(cli, str(FIXTURES / "arxiv_cs_lg.rss"))  # arXiv's listing, from a file of the admin's
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


def test_a_local_trending_file_is_read_as_the_file(cli, db, env) -> None:
    """The demo's case: the hf-daily source is a file, so no ?date= is appended to its path."""
    env(hf_daily_url=str(FIXTURES / "hf_daily.json"))
    [report] = ingest(cli, "hf-daily")
    assert (report["source"], report["fetched"], report["new"]) == (str(FIXTURES / "hf_daily.json"), 15, 15)
    with db() as session:
        paper = session.scalar(select(Paper).where(Paper.key == "2611.10000"))
        assert (paper.upvotes, paper.arxiv_id) == (120, "2611.10000")
        assert paper.tldr and paper.keywords
        assert paper.links["code"] == "https://github.com/example-lab/paper-0"
        assert paper.links["project"] == "https://example-lab.github.io/paper-0/"
    dated = cli("ingest", "hf-daily:2026-11-27")
    assert dated.code == 1 and "is the file" in dated.err and "use plain hf-daily" in dated.err


def test_a_feed_from_another_host_cannot_rewrite_an_arxiv_paper(cli, db, env, httpserver: HTTPServer) -> None:
    """The attack: a feed not on arXiv's hosts claims arXiv papers, by a lookalike URL and by arXiv's own id shapes."""
    ingest(cli, str(FIXTURES / "arxiv_cs_lg.rss"))
    fields = (Paper.title, Paper.abstract, Paper.authors, Paper.version, Paper.categories, Paper.links, Paper.announce_type)

    def arxiv_papers() -> dict:
        with db() as session:
            return {row.key: tuple(row[1:]) for row in session.execute(select(Paper.key, *fields).where(Paper.arxiv_id.is_not(None)))}

    before = arxiv_papers()
    httpserver.expect_request("/feed.rss").respond_with_data((FIXTURES / "evil_claims.rss").read_bytes(),
                                                            content_type="application/rss+xml")
    [report] = ingest(cli, httpserver.url_for("/feed.rss"))
    assert (report["new"], report["updated"], report["unchanged"]) == (2, 0, 1)
    assert arxiv_papers() == before, "no title, abstract, author, version or category of an arXiv paper changed"
    with db() as session:
        lookalike = session.scalar(select(Paper).where(Paper.key == "https://evil.example/arxiv.org/abs/2611.10009v9"))
        assert (lookalike.arxiv_id, lookalike.title) == (None, "Pwned: a replacement title")  # its own paper
        unlisted = session.scalar(select(Paper).where(Paper.key == "https://arxiv.org/abs/2611.99999v1"))  # its own link
        assert unlisted.arxiv_id is None, "an arXiv id only arXiv's sources may claim"
        assert session.scalar(select(Paper).where(Paper.key == "2611.99999")) is None

    # The same bytes from a host that speaks for arXiv are arXiv's word: the decision is where, not what.
    env(arxiv_api_url=httpserver.url_for("/api/query"))
    [trusted] = ingest(cli, httpserver.url_for("/feed.rss"))
    assert (trusted["new"], trusted["updated"]) == (1, 1)
    with db() as session:
        revised = session.scalar(select(Paper).where(Paper.key == "2611.10003"))
        assert (revised.title, revised.version) == ("Pwned again", 9)
        assert session.scalar(select(Paper.arxiv_id).where(Paper.key == "2611.99999")) == "2611.99999"


def test_json_from_an_unnamed_url_is_read_as_trending_papers(cli, db, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/trending.json").respond_with_data((FIXTURES / "hf_daily.json").read_bytes(),
                                                                  content_type="application/json")
    ingest(cli, str(FIXTURES / "arxiv_cs_lg.rss"))
    [report] = ingest(cli, httpserver.url_for("/trending.json"))
    # Not the trending API, so only trusted to attach: upvotes go to the 10 papers arXiv listed, and the
    # 5 others are this source's own papers, keyed by their abs link rather than by the arXiv id they claim.
    assert (report["fetched"], report["new"], report["updated"]) == (15, 5, 10)
    with db() as session:
        assert session.scalar(select(Paper.upvotes).where(Paper.key == "2611.10000")) == 120
        own = session.scalars(select(Paper).where(Paper.key.like("https://arxiv.org/abs/%"))).all()
        assert len(own) == 5 and {p.arxiv_id for p in own} == {None} and all(p.upvotes for p in own)


def test_a_replaced_version_updates_the_paper_without_announcing_it_again(cli, db, arxiv_here: HTTPServer) -> None:
    httpserver = arxiv_here
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


def test_a_source_that_fails_in_any_way_is_reported_and_the_others_are_still_read(
        cli, db, httpserver: HTTPServer, tmp_path, monkeypatch, request) -> None:
    """Faults below the feed (a host name the resolver cannot even encode, a redirect to one, a symlink loop,
    a name too long for the file system) and one nothing foresaw: each a line of its own, the rest ingested."""
    import newsletter.ingest.run as run

    httpserver.expect_request("/good").respond_with_data((FIXTURES / "arxiv_cs_lg.rss").read_bytes())
    long_label = "a" * 64  # over DNS's 63: the resolver cannot even encode it

    class Moved(http.server.BaseHTTPRequestHandler):  # werkzeug would not send such a Location
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://{long_label}.example/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
            pass

    mover = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Moved)
    threading.Thread(target=mover.serve_forever, daemon=True).start()
    request.addfinalizer(mover.shutdown)
    httpserver.expect_request("/boom").respond_with_data((FIXTURES / "arxiv_weekend.rss").read_bytes())
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    sources = ["http://a..b/feed", f"http://127.0.0.1:{mover.server_port}/moved", str(tmp_path / "loop1"), str(tmp_path / ("a" * 300)),
               httpserver.url_for("/boom"), httpserver.url_for("/good")]
    for source in sources:
        assert cli("sources", "add", source, "--no-check").code == 0
    real_parse = run._parse

    def parse(fetched, spec):  # a bug that only this one source's bytes reach
        if spec.url.endswith("/boom"):
            raise ZeroDivisionError("division by zero")
        return real_parse(fetched, spec)

    monkeypatch.setattr(run, "_parse", parse)
    result = cli("ingest", "--json")
    assert result.code == 1 and "Traceback" not in result.err
    reports = json.loads(result.out)
    assert [r["new"] for r in reports] == [0, 0, 0, 0, 0, 60]
    bad_name, redirected, loop, too_long, boom, good = (r["error"] for r in reports)
    assert "cannot resolve host 'a..b' (not a valid host name" in bad_name
    assert f"cannot resolve host '{long_label}.example' (not a valid host name" in redirected
    assert "loop1" in loop and ("no such file" in loop or "cannot read it" in loop)
    assert "cannot read it (File name too long)" in too_long
    assert "unexpected error (ZeroDivisionError: division by zero); the log has the details" in boom and good is None
    with db() as session:
        recorded = {s.url: s.last_error for s in session.scalars(select(Source))}
        assert session.query(Paper).count() == 60
    assert [bool(recorded[r["source"]]) for r in reports] == [True] * 5 + [False], "status shows each failing source"
    assert all("\n" not in (r["error"] or "") for r in reports)


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
    for column in ("source", "fetched", "new", "updated", "unchanged", "outcome", "time"):
        assert column in header
    assert "errors" not in header  # a note ("no new papers", "same content as the last fetch") is not an error
    assert "no new papers" in result.out


def test_sources_add_refuses_a_private_address_unless_allowed(cli, env, ready, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/rss").respond_with_data((FIXTURES / "arxiv_cs_lg.rss").read_bytes())
    env(allow_private_sources="false")
    refused = cli("sources", "add", httpserver.url_for("/rss"))
    assert refused.code == 1 and "resolves to the non-public address 127.0.0.1" in refused.err
    assert "NEWSLETTER_ALLOW_PRIVATE_SOURCES" in refused.err
    env(allow_private_sources="true")
    added = cli("sources", "add", httpserver.url_for("/rss"))
    assert added.code == 0 and "it lists 60 papers now; 'newsletter ingest' stores them" in added.out


def test_feedparser_is_only_ever_given_bytes(cli, ready, httpserver: HTTPServer, monkeypatch) -> None:
    import feedparser

    given: list[type] = []
    real_parse = feedparser.parse
    monkeypatch.setattr(feedparser, "parse", lambda source, **kw: given.append(type(source)) or real_parse(source, **kw))
    httpserver.expect_request("/rss").respond_with_data((FIXTURES / "arxiv_cs_lg.rss").read_bytes())
    ingest(cli, httpserver.url_for("/rss"), str(FIXTURES / "arxiv_api.atom"))
    assert given == [bytes, bytes]


def test_a_file_source_is_stored_by_its_absolute_path_and_added_once(cli, db, tmp_path, monkeypatch) -> None:
    feeds, elsewhere = tmp_path / "feeds", tmp_path / "elsewhere"
    feeds.mkdir()
    elsewhere.mkdir()
    (feeds / "cs.rss").write_bytes((FIXTURES / "arxiv_cs_lg.rss").read_bytes())
    assert cli("sources", "add", "feeds/cs.rss").code == 0  # relative to the working directory, tmp_path
    [source] = json.loads(cli("sources", "list", "--json").out)
    assert source["url"] == str((feeds / "cs.rss").resolve())
    again = cli("sources", "add", "./elsewhere/../feeds//cs.rss")
    assert again.code == 1 and f"source {source['url']} is already configured" in again.err
    monkeypatch.chdir(elsewhere)
    [report] = ingest(cli)
    assert (report["source"], report["new"], report["error"]) == (source["url"], 60, None)
    assert cli("sources", "remove", "../feeds/cs.rss").code == 0
    assert json.loads(cli("sources", "list", "--json").out) == []


def test_ingest_takes_a_configured_source_by_its_id_or_name(cli, db, tmp_path, monkeypatch) -> None:
    """'sources list' shows ids and names; 'ingest 2' read a file called 2 in the working directory."""
    monkeypatch.chdir(tmp_path)
    assert cli("sources", "add", str(FIXTURES / "arxiv_weekend.rss"), "--name", "weekend listing").code == 0
    assert cli("sources", "add", str(FIXTURES / "arxiv_cs_lg.rss"), "--name", "cs.LG sample").code == 0
    listed = {s["name"]: s for s in json.loads(cli("sources", "list", "--json").out)}
    by_id = ingest(cli, str(listed["cs.LG sample"]["id"]))
    assert [(r["source"], r["new"]) for r in by_id] == [(listed["cs.LG sample"]["url"], 60)]
    by_name = ingest(cli, "weekend listing")
    assert [r["source"] for r in by_name] == [listed["weekend listing"]["url"]]
    unknown = cli("ingest", "2612")  # it said "2612: no such file", as if a file had been meant
    assert unknown.code == 1 and "no source with id 2612; 'newsletter sources list' shows the configured ones" in unknown.err
    (tmp_path / "2612").write_bytes((FIXTURES / "arxiv_weekend.rss").read_bytes())
    assert cli("ingest", "2612").code == 0, "a number that is no id but a file here is still read as that file"
    table = cli("ingest", "weekend listing").out
    assert "weekend listing" in table and "arxiv_weekend.rss" not in table, "the table names a source as it was named"
