"""A corpus of malformed and hostile inputs, each served over HTTP and ingested: every outcome asserted.

An input that is refused leaves the database as it was and names the source and the reason; an
input that is accepted is stored as safe plain text.
"""

from __future__ import annotations

import json

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Paper
from newsletter.ingest.feeds import MAX_TITLE
from tests.conftest import FIXTURES

HOSTILE = FIXTURES / "hostile"

REFUSED = {
    "billion_laughs.xml": "refused, the feed declares XML entities",
    "quadratic_blowup.xml": "refused, the feed declares XML entities",
    "xxe_local_file.xml": "refused, the feed declares XML entities",
    "xxe_parameter_entity.xml": "refused, the feed declares XML entities",
    "utf16_entity_bomb.xml": "refused, the feed declares XML entities",
    "html_page.xml": "not a feed, it is an HTML page",
    "truncated.xml": "malformed feed",
    "not_xml_binary.xml": "not a feed, it is not RSS or Atom",
    "empty.xml": "not a feed",
    "json_instead_of_xml.xml": "expected a JSON list of papers, got a dict",
    "hf_html_page.json": "answered with an HTML page instead of JSON",
    "hf_changed_shape.json": "expected a JSON list of papers, got a dict; the API changed shape",
    "hf_missing_fields.json": "element 0 has no paper.id and title",
    "hf_truncated.json": "not valid JSON",
    "hf_huge_integer.json": "not valid JSON (Exceeds the limit (4300 digits)",
}


def stored(database_url: str) -> list[Paper]:
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        rows = list(session.scalars(select(Paper).order_by(Paper.id)))
    engine.dispose()
    return rows


def serve(httpserver: HTTPServer, name: str) -> str:
    """Feeds at /NAME; trending-API answers at /NAME/api/daily_papers, where the kind is detected from the URL."""
    path, content_type = f"/{name}", "application/rss+xml"
    if name.startswith("hf_"):
        path, content_type = f"/{name}/api/daily_papers", "text/html" if "html" in name else "application/json"
    httpserver.expect_request(path).respond_with_data((HOSTILE / name).read_bytes(), content_type=content_type)
    return httpserver.url_for(path)


@pytest.fixture
def ready(cli, configured) -> str:
    assert cli("init").code == 0
    return configured


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_inputs_name_the_source_and_store_nothing(cli, ready, httpserver, name) -> None:
    url = serve(httpserver, name)
    result = cli("ingest", url, "--json")
    assert result.code == 1
    [report] = json.loads(result.out)
    assert report["error"].startswith(f"{url}: ") and REFUSED[name] in report["error"], report["error"]
    assert f"error: {url}: " in result.err
    assert stored(ready) == []


def ingest_one(cli, httpserver, name: str) -> dict:
    result = cli("ingest", serve(httpserver, name), "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)[0]


def test_script_and_markup_in_titles_and_abstracts_become_plain_text(cli, ready, httpserver) -> None:
    assert ingest_one(cli, httpserver, "script_in_abstract.xml")["new"] == 1
    [paper] = stored(ready)
    assert paper.title == "Robust Sampling"
    assert paper.abstract == "We sample. Fast."


def test_a_javascript_link_is_dropped_and_the_guid_keys_the_paper(cli, ready, httpserver) -> None:
    ingest_one(cli, httpserver, "javascript_link.xml")
    [paper] = stored(ready)
    assert paper.key == "urn:lab:paper-1" and "abs" not in paper.links


def test_an_item_without_a_title_is_skipped_and_the_rest_kept(cli, ready, httpserver) -> None:
    report = ingest_one(cli, httpserver, "item_without_title.xml")
    assert (report["fetched"], report["new"]) == (1, 1)
    assert [p.title for p in stored(ready)] == ["Kept"]


def test_a_wrongly_declared_encoding_is_decoded_not_refused(cli, ready, httpserver) -> None:
    ingest_one(cli, httpserver, "wrong_encoding.xml")
    [paper] = stored(ready)
    assert paper.title == "Café: naïve Bayes for crème brûlée"


def test_line_breaks_and_header_lookalikes_in_a_title_are_folded(cli, ready, httpserver) -> None:
    ingest_one(cli, httpserver, "control_characters.xml")
    [paper] = stored(ready)
    assert "\n" not in paper.title and "\r" not in paper.title
    assert paper.title == "Line one Subject: injected Bcc: victim@example.org"


def test_a_huge_title_is_stored_as_text_cut_to_a_bound(cli, ready, httpserver) -> None:
    """A 10,000-character title is cut at a word, well below what would make a digest too big for a relay."""
    ingest_one(cli, httpserver, "huge_title.xml")
    [paper] = stored(ready)
    assert paper.title.startswith("Attention Attention") and paper.title.endswith("Attention…")
    assert len(paper.title) <= MAX_TITLE < len("Attention " * 1000) - 1


def test_a_less_than_sign_that_opens_no_tag_is_text(cli, ready, httpserver) -> None:
    """HTML parsing took "<k and d>" and "<projektor>" for tags and dropped the words between them."""
    ingest_one(cli, httpserver, "less_than_in_text.xml")
    [paper] = stored(ready)
    assert paper.title == "Sample complexity when n<k and d>2 for sparse recovery"
    assert paper.abstract == ("Let x<y. Then the claim follows for a<b and c>d. We release a framework called <projektor>, "
                              "which predicts well. New line.")


def test_odd_values_in_trending_json_are_no_data_not_a_failure(cli, ready, httpserver) -> None:
    """10**30 upvotes (no database integer holds it) and ``true`` are no count; a string or an object where a
    list belongs is no list."""
    assert ingest_one(cli, httpserver, "hf_odd_values.json")["new"] == 3
    huge, flag, counted = stored(ready)
    assert (huge.upvotes, flag.upvotes, counted.upvotes) == (None, None, 42)
    assert (huge.keywords, huge.authors) == ([], []) and (counted.keywords, counted.authors) == (["sampling"], ["Ada Lovelace"])


def test_an_external_dtd_is_never_fetched(cli, ready, httpserver) -> None:
    httpserver.expect_request("/evil.dtd").respond_with_data('<!ENTITY x "pwned">', content_type="application/xml-dtd")
    body = (HOSTILE / "external_dtd.xml").read_text().replace("EXTERNAL_DTD_URL", httpserver.url_for("/evil.dtd"))
    httpserver.expect_request("/feed").respond_with_data(body, content_type="application/rss+xml")
    result = cli("ingest", httpserver.url_for("/feed"), "--json")
    assert result.code == 0
    assert [p.title for p in stored(ready)] == ["Plain paper"]
    assert [r.path for r, _ in httpserver.log] == ["/feed"], "the DTD must not be requested"


# What must never reach a terminal, a subject line or HTML: C0 and C1 controls (ESC starts the terminal's
# escape sequences), bidi embeddings, overrides, isolates and marks, zero-width characters.
INVISIBLE = {*map(chr, range(0x20)), "\x7f", *map(chr, range(0x80, 0xA0)), "\u061c", "\u200e", "\u200f",
             *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A)), "\u200b", "\u200c", "\u200d",
             "\u2060", "\ufeff"}


def inert(*texts: str) -> bool:
    return not any(set(text) & INVISIBLE for text in texts)


def test_escape_sequences_bidi_and_zero_width_characters_are_stripped_from_a_feed(cli, ready, httpserver) -> None:
    url = serve(httpserver, "terminal_escapes.xml")
    added = cli("sources", "add", url)
    assert added.code == 0, added.err
    [source] = json.loads(cli("sources", "list", "--json").out)
    assert source["name"] == "Labgnp.exe blog"  # the feed's title, as the source's name
    assert ingest_one(cli, httpserver, "terminal_escapes.xml")["new"] == 1
    [paper] = stored(ready)
    assert paper.title == "Robust Samplingtxt.exe without tricks"  # ESC[2J ESC[31m gone whole, not left as "[2J"
    assert paper.abstract == "We click sample\u2026fast\u203a2J."  # an OSC 8 hyperlink gone; &#x85; is "…" in HTML
    assert paper.authors == ["Ada Lovelace"]
    assert paper.key == "urn:lab:paper-1" and "abs" not in paper.links  # a link with a bidi override is no link
    assert inert(paper.title, paper.abstract, paper.key, *paper.authors)


def test_escape_sequences_bidi_and_zero_width_characters_are_stripped_from_trending_json(cli, ready, httpserver) -> None:
    assert ingest_one(cli, httpserver, "hf_terminal_escapes.json")["new"] == 1
    [paper] = stored(ready)
    assert (paper.title, paper.abstract) == ("Trending paper with tricks", "An abstract in red and lines.")
    assert paper.authors == ["Grace Hopper", "hidden Author"]
    assert (paper.tldr, paper.keywords) == ("A summary that beeps and turns.", ["diffusion", "sampling"])
    assert "code" not in paper.links and paper.links["project"] == "https://example.org/project"
    assert inert(paper.title, paper.abstract, paper.tldr, *paper.authors, *paper.keywords, *paper.links.values())


def test_the_corpus_covers_at_least_fifteen_inputs() -> None:
    covered = set(REFUSED) | {"script_in_abstract.xml", "javascript_link.xml", "item_without_title.xml",
                              "wrong_encoding.xml", "control_characters.xml", "huge_title.xml", "external_dtd.xml",
                              "terminal_escapes.xml", "hf_terminal_escapes.json", "less_than_in_text.xml", "hf_odd_values.json",
                              "no_character_refs_and_huge_version.rss", "hf_lone_surrogates.json"}
    assert covered == {p.name for p in HOSTILE.iterdir()}
    assert len(covered) >= 15


def test_references_to_no_character_and_a_huge_version_lose_no_entry(cli, ready) -> None:
    """&#xD800; crashed feedparser and v99999999999999999999 overflowed the database: either lost the whole feed."""
    result = cli("ingest", str(HOSTILE / "no_character_refs_and_huge_version.rss"), "--json")  # a local file: arXiv's word
    assert result.code == 0, result.err
    [report] = json.loads(result.out)
    assert (report["fetched"], report["new"], report["error"]) == (3, 3, None)
    papers = {p.key: p for p in stored(ready)}
    assert papers["2612.00050"].title == "Surrogate \ufffd and \ufffd and \ufffd and \ufffd ok \U0010ffff é title"
    assert papers["2612.00051"].version is None, "no paper has a million versions: no version"
    assert papers["2612.00052"].version == 1


def test_lone_surrogates_in_trending_json_become_replacement_characters(cli, ready, httpserver) -> None:
    assert ingest_one(cli, httpserver, "hf_lone_surrogates.json")["new"] == 1
    [paper] = stored(ready)
    assert (paper.title, paper.authors) == ("Surrogate \ufffd in JSON", ["A \ufffd B"])
    assert "\ufffd surrogate" in paper.abstract


def test_a_read_only_database_is_one_line_per_source_without_a_traceback(cli, env, tmp_path) -> None:
    path = tmp_path / "nl.db"
    env(database_url=f"sqlite:///{path}")
    assert cli("init").code == 0
    env(database_url=f"sqlite:///file:{path}?mode=ro&uri=true")  # as a file the process may not write
    result = cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"))
    assert result.code == 1 and "Traceback" not in result.err and "INSERT" not in result.err + result.out
    assert "the database could not store its papers (attempt to write a readonly database)" in result.err
