"""Parsing the real shapes of ../shared/FORMATS.md into Paper records."""

from __future__ import annotations

import datetime as dt

import pytest

from newsletter.errors import FeedError, InvalidInput
from newsletter.ingest import arxiv
from newsletter.ingest.feeds import clean_text, parse_feed
from newsletter.ingest.sources import SourceSpec, Trust, resolve, source_trust
from tests.conftest import FIXTURES


def test_arxiv_rss_items_become_papers_keyed_by_id_without_version() -> None:
    feed = parse_feed((FIXTURES / "arxiv_cs_lg.rss").read_bytes(), source="cs.LG")
    assert feed.title == "cs.LG updates on arXiv.org"
    assert len(feed.papers) == 60
    paper = feed.papers[3]
    assert (paper.key, paper.arxiv_id, paper.version) == ("2611.10003", "2611.10003", 1)
    assert paper.abstract.startswith("Foundation models are redefining")  # "arXiv:... Announce Type: new Abstract:" gone
    assert paper.announce_type == "new"
    assert paper.authors == ("Sergey O'Brien", "Kaiming Silva", "Niki Hopper", "Emily Turing")
    assert paper.categories == ("cs.SE", "cs.LG", "cs.AI")
    assert paper.abs_url == "https://arxiv.org/abs/2611.10003"
    assert paper.published_at == dt.datetime(2026, 11, 23, 5, 0)


def test_cross_lists_keep_their_announce_type() -> None:
    feed = parse_feed((FIXTURES / "arxiv_cs_lg.rss").read_bytes(), source="cs.LG")
    assert {p.announce_type for p in feed.papers} == {"new", "cross"}


def test_arxiv_api_atom_entries_carry_version_authors_pdf_and_primary_category() -> None:
    feed = parse_feed((FIXTURES / "arxiv_api.atom").read_bytes(), source="api")
    assert len(feed.papers) == 20
    paper = feed.papers[0]
    assert (paper.key, paper.version) == ("2611.10050", 2)
    assert paper.pdf_url == "http://arxiv.org/pdf/2611.10050v2"
    assert len(paper.authors) >= 1 and all("," not in a for a in paper.authors)
    assert paper.categories[0] == paper.primary_category
    assert "\n" not in paper.title and "  " not in paper.abstract


def test_empty_weekend_listing_is_zero_papers_not_an_error() -> None:
    assert parse_feed((FIXTURES / "arxiv_weekend.rss").read_bytes(), source="cs.LG").papers == ()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<!DOCTYPE html><html><head><title>Oops</title></head><body>maintenance</body></html>", "not a feed, it is an HTML page"),
        (b'{"papers": []}', "not a feed"),
        (b"", "not a feed"),
    ],
)
def test_things_that_are_not_feeds_are_refused(body: bytes, expected: str) -> None:
    with pytest.raises(FeedError, match=expected) as raised:
        parse_feed(body, source="https://example.org/x")
    assert str(raised.value).startswith("https://example.org/x: ")


def test_a_truncated_feed_is_refused_whole() -> None:
    body = (FIXTURES / "arxiv_cs_lg.rss").read_bytes()
    with pytest.raises(FeedError, match="malformed feed"):
        parse_feed(body[: len(body) // 2], source="cs.LG")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Fast <i>and</i> &amp; safe<script>alert(1)</script>\n  sampling", "Fast and & safe sampling"),
        ('<b>Bold</b> and <a href="https://x.example">a link</a><img src=x onerror=alert(1)>', "Bold and a link"),
        ("<p>One.</p><p>Two.</p>Three<br/>four", "One. Two. Three four"),
        ("<style>p {color: red}</style><!-- note -->Kept", "Kept"),
        # a "<" that opens no tag is text: maths, and names in angle brackets
        ("bounds for n<k and d>2", "bounds for n<k and d>2"),
        ("if a<b and c>d then", "if a<b and c>d then"),
        ("Let x<y. Then", "Let x<y. Then"),
        ("a tool called <projektor>, which", "a tool called <projektor>, which"),
        ("R&amp;D &lt;3", "R&D <3"),
        # markup that is markup, though not on a short list: namespaced, closed later, boolean attributes
        ("<jats:p>We study <jats:italic>foo</jats:italic> bars.</jats:p>", "We study foo bars."),
        ("<mml:math><mml:mi>x</mml:mi></mml:math> holds", "x holds"),
        ('<td nowrap>cell</td> and <script defer src="x.js">alert(1)</script>after', "cell and after"),
        ("<article>A</article> <mark>B</mark> <!DOCTYPE html>C <?php echo 1; ?>D", "A B C D"),
    ],
)
def test_html_in_titles_and_abstracts_is_reduced_to_text(text: str, expected: str) -> None:
    assert clean_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('a na\\"ive approach', "a naïve approach"),  # as arXiv's abstracts carry it
        ("a ``search-and-refine-during-think'' mode", "a “search-and-refine-during-think” mode"),
        ('Schr\\"{o}dinger, Erd\\H{o}s, {\\c c}a, G\\"odel, \\v{S}ekli, \\^{\\i}le', "Schrödinger, Erdős, ça, Gödel, Šekli, île"),
        ("R\\&D on 50\\% of runs", "R&D on 50% of runs"),
        ("$O(n^2)$ time, \\cite{x} and \\alpha-divergence", "$O(n^2)$ time, \\cite{x} and \\alpha-divergence"),  # maths stays
        ("we bound $f''(x)$ and $a\\=b$ for na\\\"ive users", "we bound $f''(x)$ and $a\\=b$ for naïve users"),  # in maths too
        ("it costs \\$5, a ``fair'' price", "it costs $5, a “fair” price"),  # an escaped dollar opens no maths
    ],
)
def test_tex_accents_and_quotes_become_the_characters_they_stand_for(text: str, expected: str) -> None:
    assert clean_text(text, tex=True) == expected


def test_tex_is_read_only_in_arxivs_text() -> None:
    """Elsewhere a backslash may escape a quote ("don\'t"): an arXiv entry's abstract is TeX, a blog's is not."""
    assert clean_text(r"""don\'t say \"all\"""") == r"""don\'t say \"all\""""
    body = (FIXTURES / "arxiv_cs_lg.rss").read_bytes().replace(b"Abstract: Deep Neural", rb"""Abstract: A na\"ive ``idea''. Deep""", 1)
    assert parse_feed(body, source="cs.LG").papers[0].abstract.startswith("A naïve “idea”. Deep")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2409.01234v2", ("2409.01234", 2)),
        ("oai:arXiv.org:2409.01234v1", ("2409.01234", 1)),
        ("https://arxiv.org/abs/2409.0123", ("2409.0123", None)),
        ("http://arxiv.org/abs/hep-th/9901001v3", ("hep-th/9901001", 3)),
        ("http://arxiv.org/pdf/math.GT/0309136v1", ("math.GT/0309136", 1)),
        ("https://www.biorxiv.org/content/10.1101/2024.01.01", None),
        ("2613.00000", None),  # month 13
        ("2600.12345", None),
        ("hep-th/9913001", None),
        ("https://export.arxiv.org/abs/2409.01234v4", ("2409.01234", 4)),
        ("arxiv.org/abs/2409.01234", ("2409.01234", None)),
        # arXiv's URL shapes count only on arXiv's hosts:
        ("https://evil.example/arxiv.org/abs/2611.10009v9", None),
        ("https://arxiv.org.evil.example/abs/2611.10009", None),
        ("https://notarxiv.org/abs/2611.10009", None),
        ("https://evil.example/?u=https://arxiv.org/abs/2611.10009", None),
    ],
)
def test_arxiv_ids_are_split_from_their_version(text: str, expected) -> None:
    assert arxiv.split_id(text) == expected


def test_source_shorthands() -> None:
    assert resolve("arxiv:cs.AI+cs.LG").url == "https://rss.arxiv.org/rss/cs.AI+cs.LG"
    api = resolve("arxiv-query:cat:cs.LG AND abs:diffusion")
    assert api.kind == "arxiv-api" and "search_query=cat%3Acs.LG+AND+abs%3Adiffusion" in api.url
    assert resolve("https://www.biorxiv.org/rss").kind == "feed"


def test_terminal_escapes_controls_bidi_and_zero_width_characters_are_stripped() -> None:
    assert clean_text("A\x1b]0;owned\x07 title\x1b[2J\u202eexe\u200b\u2066x\u2069\x00\x9b31m\r\nnext") == "A titleexex next"
    assert clean_text("&#x1b;[31mred&#x202E; &amp; \ufeffplain") == "red & plain"  # decoded entities too


@pytest.mark.parametrize(
    ("spec", "trust"),
    [
        (SourceSpec("https://rss.arxiv.org/rss/cs.LG", "arxiv-rss"), Trust.ARXIV),
        (SourceSpec("https://export.arxiv.org/api/query?search_query=cat:cs.LG", "arxiv-api"), Trust.ARXIV),
        (SourceSpec("http://arxiv.org/rss/cs.LG", "feed"), Trust.ARXIV),
        (SourceSpec("/srv/feeds/cs.rss", "feed"), Trust.ARXIV),  # a local file is the admin's own
        (SourceSpec("https://huggingface.co/api/daily_papers", "hf-daily"), Trust.TRENDING),
        (SourceSpec("https://evil.example/export.arxiv.org/api/query", "arxiv-api"), Trust.FEED),  # kind from the path
        (SourceSpec("https://rss.arxiv.org.evil.example/rss/cs.LG", "arxiv-rss"), Trust.FEED),
        (SourceSpec("https://evil.example/trending.json", "feed"), Trust.FEED),
    ],
)
def test_trust_comes_from_the_host_and_the_kind(spec: SourceSpec, trust: Trust) -> None:
    assert source_trust(spec) is trust


def test_the_configured_arxiv_api_host_speaks_for_arxiv() -> None:
    mirror = SourceSpec("https://arxiv-mirror.example.org/api/query?id_list=2409.01234", "feed")
    assert source_trust(mirror) is Trust.FEED
    assert source_trust(mirror, arxiv_hosts={"arxiv.org", "arxiv-mirror.example.org"}) is Trust.ARXIV


def test_a_source_url_must_be_http_or_a_file() -> None:
    with pytest.raises(InvalidInput, match="ftp://example.org/feed.xml: only http.s. URLs and file paths can be sources"):
        resolve("ftp://example.org/feed.xml")
    assert resolve("file:///srv/feeds/../feeds/cs.rss").url == "/srv/feeds/cs.rss"


def test_a_long_guid_is_hashed_into_a_key_not_cut() -> None:
    """Cut at 300 characters, two long ids with the same beginning became one paper."""
    from newsletter.ingest.feeds import MAX_NAME, paper_key

    first, second = "urn:lab:" + "x" * 400 + "1", "urn:lab:" + "x" * 400 + "2"
    assert paper_key(first) != paper_key(second) and len(paper_key(first)) <= MAX_NAME
    assert paper_key("urn:lab:paper-1") == "urn:lab:paper-1"
