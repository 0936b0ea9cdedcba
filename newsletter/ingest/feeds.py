"""Feed bytes → ``Paper`` records. Pure: feedparser is only ever given bytes.

Handles the arXiv RSS listing (``rss.arxiv.org``), the arXiv API's Atom answers and any other
RSS/Atom feed. What cannot be read raises ``FeedError`` naming the source and the reason; an
empty but valid feed (arXiv on weekends and holidays) is zero papers, not an error.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import html
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import feedparser
import nh3
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError
from defusedxml.ElementTree import fromstring as defused_fromstring

from newsletter.errors import FeedError
from newsletter.ingest import arxiv
from newsletter.records import Paper
from newsletter.wording import INVISIBLE, WHITESPACE, plain_text, shorten

AUTHOR_SPLIT = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+")
# The elements feeds put in titles and abstracts, and the ones that carry code.
HTML_TAGS = frozenset(
    "a abbr address article aside b big blockquote body br caption center cite code col colgroup dd del details dfn div dl "
    "dt em embed figcaption figure font footer form h1 h2 h3 h4 h5 h6 head header hr html i iframe img input ins kbd label "
    "li link main mark math meta nav nobr noscript object ol p pre q s samp script section small span strike strong style "
    "sub summary sup svg table tbody td tfoot th thead time title tr tt u ul var video".split())
MARKUP = re.compile(r"<(?:!--|!\[CDATA\[|![A-Za-z]|\?)")  # a comment, CDATA, a doctype, a processing instruction
TAG = re.compile(r"<(/)?([A-Za-z][\w:.-]*)(\s[^<>]*?)?\s*/?>")
CLOSING = re.compile(r"</([A-Za-z][\w:.-]*)")
LESS_THAN = re.compile("<")
BREAK = re.compile(r"<(?:br|hr|/?(?:p|div|li|tr|td|th|h[1-6]|blockquote))\b[^>]*>", re.IGNORECASE)  # words either side stay apart
# Far beyond any real paper's (arXiv caps abstracts at 1,920 characters, titles are a line): one entry of
# a 20 MB feed must not make each digest it is picked for too big for the relay, every day.
MAX_TEXT = 20_000  # an abstract, a summary
MAX_TITLE = 1_000
MAX_NAME = 300  # an author, a category, a keyword
MAX_NAMES = 1_000  # authors, or categories, of one paper
# feedparser reports these for documents it could still read completely.
HARMLESS_BOZO = (feedparser.CharacterEncodingOverride,)


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    title: str
    papers: tuple[Paper, ...]


def clean_text(value: str | None, *, limit: int = MAX_TEXT, tex: bool = False) -> str:
    """Plain, inert text of at most ``limit`` characters: HTML reduced to text (tags and scripts dropped,
    entities decoded), terminal escape sequences, control, bidi and zero-width characters removed,
    whitespace folded.

    A ``<`` that does not open an HTML tag is text: abstracts say "for n<k and d>2" and name tools
    "<projektor>", and an HTML parser would take those for tags and drop the words between them.
    ``tex``: the text is arXiv's, written in TeX (``tex_to_text``); elsewhere ``\\'`` may be an escaped quote.
    """
    if not value:
        return ""
    if "<" in value or "&" in value:  # most titles and abstracts are plain: skip the HTML pass for them
        value = html.unescape(nh3.clean(BREAK.sub(" ", stray_brackets_escaped(value)), tags=set()))
    if tex and ("\\" in value or "``" in value):
        value = tex_to_text(value)
    return shorten(plain_text(value), limit)


def stray_brackets_escaped(value: str) -> str:
    """``value`` with every ``<`` that opens no HTML tag written as ``&lt;``, so the HTML pass keeps it as text.

    A ``<`` opens a tag when it starts a comment, a doctype or CDATA; closes an element; names a namespaced
    one (``<jats:p>``, ``<mml:mi>``); or names a known element with no attribute, an attribute with a value,
    or a closing tag later on (``<td nowrap>…</td>``). Any other name counts only when it is closed later
    (MathML's ``<mi>…</mi>``). So "n<k and d>2", "a<b and c>d" and "<projektor>" are text.
    """
    closed_last = {found[1].lower(): found.start() for found in CLOSING.finditer(value)}  # one pass: no rescans
    pieces, last = [], 0
    for opening in LESS_THAN.finditer(value):
        position = opening.start()
        if MARKUP.match(value, position):
            continue
        tag = TAG.match(value, position)
        if tag is not None:
            name, attributes = tag[2].lower(), (tag[3] or "").strip()
            closed_later = closed_last.get(name, -1) > position
            if tag[1] or ":" in name or closed_later or (name in HTML_TAGS and (not attributes or "=" in attributes)):
                continue
        pieces += [value[last:position], "&lt;"]
        last = position + 1
    return "".join([*pieces, value[last:]])


# arXiv abstracts are TeX source: the accents and quotes a reader would otherwise see as na\"ive and ``this''.
TEX_ACCENTS = {'"': "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", "=": "\u0304", ".": "\u0307",
               "c": "\u0327", "v": "\u030c", "u": "\u0306", "H": "\u030b"}
TEX_ACCENT = re.compile(r"""\{?\\(?:(["'`^~=.])\s*|([cvuH])(?:\s+|(?=\{)))\{?(\\i|[A-Za-z])\}?\}?""")
TEX_ESCAPE = re.compile(r"\\([&%_#$])")
TEX_MATH = re.compile(r"((?<!\\)\$[^$]*(?<!\\)\$)")  # $…$ (an escaped \$ is no delimiter)
TEX_QUOTES = re.compile(r"``(.*?)''", re.DOTALL)


def tex_to_text(value: str) -> str:
    """TeX accents (``\\"o``, ``\\'{e}``, ``{\\c c}``), quotes (````…''``, as a pair) and escaped characters (``\\&``)
    as the characters they stand for, outside maths: ``$f''(x)$`` and ``$a\\=b$`` stay as they are, since
    rewriting maths is a guess."""
    def accented(found: re.Match[str]) -> str:
        letter = "i" if found[3] == "\\i" else found[3]
        return unicodedata.normalize("NFC", letter + TEX_ACCENTS[found[1] or found[2]])

    parts = TEX_MATH.split(value)  # text, maths, text, maths, …
    for i in range(0, len(parts), 2):
        text = TEX_QUOTES.sub("\u201c\\1\u201d", TEX_ACCENT.sub(accented, parts[i]))
        parts[i] = TEX_ESCAPE.sub(r"\1", text)
    return "".join(parts)


def paper_key(identity: str) -> str:
    """A paper's key from its link or guid: as it is, or, when longer than a key may be, a hash of all of it
    (cut, two long ids with the same beginning were one paper, and the second overwrote the first)."""
    if len(identity) <= MAX_NAME:
        return identity
    return "sha256:" + hashlib.sha256(identity.encode()).hexdigest()


def web_url(value: str | None) -> str | None:
    """Only http(s) links reach an email: no javascript:, data: or file: URLs from a feed, and none
    with spaces, controls or invisible characters in them."""
    if not value or not value.startswith(("https://", "http://")):
        return None
    return None if WHITESPACE.search(value) or value.translate(INVISIBLE) != value else value


def refuse_unsafe_xml(body: bytes, *, source: str) -> None:
    """Refuse entity declarations and external references before feedparser sees the bytes.

    Feeds never need them; they are how billion-laughs and external-entity (file read) attacks work.
    A document that is not well-formed passes here and is judged by feedparser below.
    """
    try:
        defused_fromstring(body, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise FeedError(f"{source}: refused, the feed declares XML entities or external references ({type(exc).__name__}); "
                        "a feed never needs them") from None
    except (ParseError, ValueError):
        pass


# A numeric character reference to no character: a UTF-16 surrogate (&#xD800;) or past U+10FFFF. feedparser's
# lenient parser crashed on the first (UnicodeEncodeError), and one such entry lost the whole feed.
NUMERIC_REF = re.compile(rb"&#([xX][0-9a-fA-F]{1,16}|[0-9]{1,20});")


def _no_character_ref(match: re.Match[bytes]) -> bytes:
    number = match.group(1)
    value = int(number[1:], 16) if number[:1] in (b"x", b"X") else int(number)
    return b"&#xFFFD;" if 0xD800 <= value <= 0xDFFF or value > 0x10FFFF else match.group()


def parse_feed(body: bytes, *, source: str) -> ParsedFeed:
    refuse_unsafe_xml(body, source=source)
    body = NUMERIC_REF.sub(_no_character_ref, body)  # each becomes U+FFFD, the replacement character
    parsed = feedparser.parse(body, sanitize_html=False, resolve_relative_uris=False)
    problem = parsed.get("bozo_exception")
    if not parsed.get("version"):
        head = body[:512].lstrip().lower()
        looks = "an HTML page" if head.startswith((b"<!doctype html", b"<html")) else "not RSS or Atom"
        reason = f" ({problem})" if problem and looks != "an HTML page" else ""
        raise FeedError(f"{source}: not a feed, it is {looks}{reason}; check the URL or the file")
    if problem is not None and not isinstance(problem, HARMLESS_BOZO):
        raise FeedError(f"{source}: malformed feed ({problem}); nothing from it was stored")
    papers = tuple(p for p in (_paper(entry) for entry in parsed.entries) if p is not None)
    return ParsedFeed(title=clean_text(parsed.feed.get("title"), limit=MAX_TITLE) or source, papers=papers)


def _paper(entry: Any) -> Paper | None:
    found = _arxiv_id(entry)
    title = clean_text(entry.get("title"), limit=MAX_TITLE, tex=found is not None)
    if not title:
        return None
    summary = entry.get("summary") or entry.get("description") or ""
    abstract, announce_type = arxiv.strip_rss_prefix(clean_text(summary, tex=found is not None))
    announce_type = clean_text(entry.get("arxiv_announce_type") or announce_type, limit=32) or None  # its column's width
    arxiv_id: str | None
    version: int | None
    key: str | None
    abs_url: str | None
    pdf_url: str | None
    categories = _categories(entry)
    if found:
        arxiv_id, version = found
        key, abs_url, pdf_url = arxiv_id, arxiv.abs_url(arxiv_id), web_url(_pdf_link(entry)) or arxiv.pdf_url(arxiv_id)
    else:
        arxiv_id = version = None
        abs_url, pdf_url = web_url(entry.get("link")), web_url(_pdf_link(entry))
        key = paper_key(abs_url or clean_text(entry.get("id"), limit=MAX_TEXT))  # the link outside arXiv; the guid if none
        if not key:
            return None
    return Paper(
        key=key,
        title=title,
        abstract=abstract,
        authors=_authors(entry),
        categories=categories,
        arxiv_id=arxiv_id,
        version=version,
        abs_url=abs_url,
        pdf_url=pdf_url,
        published_at=_date(entry.get("published_parsed") or entry.get("updated_parsed")),
        announce_type=announce_type,
        link=web_url(entry.get("link")),
    )


def _arxiv_id(entry: Any) -> tuple[str, int | None] | None:
    for field in ("id", "link"):
        value = entry.get(field) or ""
        if "arxiv" in value.lower():
            found = arxiv.split_id(value)
            if found:
                return found
    return None


def _categories(entry: Any) -> tuple[str, ...]:
    primary = (entry.get("arxiv_primary_category") or {}).get("term")
    terms = [primary] if primary else []
    terms += [t.get("term") for t in entry.get("tags") or [] if t.get("term")]
    return tuple(dict.fromkeys(clean_text(t, limit=MAX_NAME) for t in terms[:MAX_NAMES] if t))


def _authors(entry: Any) -> tuple[str, ...]:
    names = [a.get("name", "") for a in entry.get("authors") or []]
    if len(names) == 1 and ("," in names[0] or " and " in names[0]):
        names = AUTHOR_SPLIT.split(names[0])  # arXiv RSS: "Ada Lovelace, Alan Turing and Grace Hopper"
    return tuple(n for n in (clean_text(n, limit=MAX_NAME) for n in names[:MAX_NAMES]) if n)


def _pdf_link(entry: Any) -> str | None:
    for link in entry.get("links") or []:
        if link.get("title") == "pdf" or link.get("type") == "application/pdf":
            return link.get("href")
    return None


def _date(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromtimestamp(calendar.timegm(value), dt.UTC).replace(tzinfo=None)
