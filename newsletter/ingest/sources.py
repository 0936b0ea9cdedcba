"""What a source spec means: shorthands, kinds, URLs, and how far the source is trusted.

Pure, except that a file path is made absolute (against the current directory) when it is resolved.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from newsletter.errors import InvalidInput
from newsletter.ingest.arxiv import ARXIV_HOSTS
from newsletter.validate import check_category

ARXIV_RSS = "https://rss.arxiv.org/rss/"
ARXIV_API = "https://export.arxiv.org/api/query"
ARXIV_API_PAGE = 200  # results per API request; the API allows up to 2000 but answers slowly past a few hundred
HF_DAILY = "https://huggingface.co/api/daily_papers"
KINDS = ("arxiv-rss", "arxiv-api", "hf-daily", "feed")


@dataclass(frozen=True, slots=True)
class SourceSpec:
    url: str  # an http(s) URL or a local file path
    kind: str

    @property
    def is_file(self) -> bool:
        return not self.url.startswith(("http://", "https://"))


class Trust(StrEnum):
    """What a source may do to the papers we keep: decided by ``source_trust``, applied by ``repo.upsert_papers``.

    A paper's bibliographic fields (title, abstract, authors, version, categories, abs/pdf links) are
    arXiv's to set. Upvotes, the AI summary, keywords and code/project links may come from anywhere.
    """

    ARXIV = "arxiv"  # arXiv's own hosts and local files: creates arXiv papers and revises them
    TRENDING = "trending"  # the trending-papers API: creates arXiv papers not yet known; only attaches to known ones
    FEED = "feed"  # any other source: only attaches to known arXiv papers; its other entries are its own papers


def source_trust(spec: SourceSpec, *, arxiv_hosts: Collection[str] = ARXIV_HOSTS) -> Trust:
    """The trust a source gets, from where it is and what kind it is (never from what it says).

    A local file is the admin's own. A URL on one of ``arxiv_hosts`` (arXiv's, plus the configured
    API's) speaks for arXiv. An ``hf-daily`` source is the trending-papers API, whose ids we accept
    as arXiv ids: it may bring papers arXiv has not listed to us yet (arXiv's own listing revises
    them when it does), never change a paper we have. Anything else is a feed from an arbitrary host.
    """
    if spec.is_file:
        return Trust.ARXIV
    if (urlsplit(spec.url).hostname or "") in arxiv_hosts:
        return Trust.ARXIV
    return Trust.TRENDING if spec.kind == "hf-daily" else Trust.FEED


def resolve(spec: str, *, hf_daily_url: str = HF_DAILY) -> SourceSpec:
    """``arxiv:cs.AI+cs.LG``, ``arxiv-query:cat:cs.LG AND abs:diffusion``, ``hf-daily`` (today's trending
    papers, the date filled in at each fetch) or ``hf-daily:2026-11-27``, a feed URL or a file path."""
    spec = spec.strip()
    if spec == "hf-daily" or spec.startswith("hf-daily:"):
        day = spec.removeprefix("hf-daily").removeprefix(":")
        if day:
            try:
                dt.date.fromisoformat(day)
            except ValueError:
                raise InvalidInput(f"hf-daily:{day}: the date must be YYYY-MM-DD") from None
            if not hf_daily_url.startswith(("http://", "https://")):
                raise InvalidInput(f"hf-daily:{day}: NEWSLETTER_HF_DAILY_URL is the file {hf_daily_url}, "
                                   "which has no dates; use plain hf-daily")
            return SourceSpec(f"{hf_daily_url}?{urlencode({'date': day})}", "hf-daily")
        return SourceSpec(hf_daily_url, "hf-daily")
    if spec.startswith("arxiv:"):
        categories = [c for c in spec.removeprefix("arxiv:").split("+") if c]
        if not categories:
            raise InvalidInput("arxiv: needs a category, e.g. arxiv:cs.LG or arxiv:cs.AI+cs.LG")
        return SourceSpec(ARXIV_RSS + "+".join(check_category(c) for c in categories), "arxiv-rss")
    if spec.startswith("arxiv-query:"):
        query = spec.removeprefix("arxiv-query:").strip()
        if not query:
            raise InvalidInput("arxiv-query: needs a query, e.g. 'arxiv-query:cat:cs.LG AND abs:diffusion'")
        params = {"search_query": query, "sortBy": "submittedDate", "sortOrder": "descending",
                  "start": 0, "max_results": ARXIV_API_PAGE}
        return SourceSpec(f"{ARXIV_API}?{urlencode(params)}", "arxiv-api")
    if not spec:
        raise InvalidInput("empty source: give a feed URL, a file path or a shorthand such as arxiv:cs.LG")
    if "://" in spec and not spec.startswith(("http://", "https://", "file://")):
        raise InvalidInput(f"{spec}: only http(s) URLs and file paths can be sources")
    if spec.startswith(("http://", "https://")):
        return SourceSpec(spec, detect_kind(spec))
    # A file is stored by its absolute path, so that it is found from any directory and one file is one source.
    given = Path(spec.removeprefix("file://")).expanduser()
    try:
        path = str(given.resolve())
    except (OSError, RuntimeError):  # a symlink loop, a name too long: stored as given, and reading it says why
        path = os.path.abspath(given)
    return SourceSpec(path, detect_kind(path))


def detect_kind(url: str) -> str:
    """The kind from the URL; a "feed" whose body turns out to be JSON is read as trending papers."""
    if "/api/daily_papers" in url:
        return "hf-daily"
    if "export.arxiv.org/api" in url:
        return "arxiv-api"
    if "rss.arxiv.org" in url or "arxiv.org/rss" in url:
        return "arxiv-rss"
    return "feed"


def with_query(url: str, **params: object) -> str:
    """``url`` with query parameters set (replacing any of the same name)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update({k: str(v) for k, v in params.items()})
    return urlunsplit(parts._replace(query=urlencode(query)))


def query_param(url: str, name: str) -> str | None:
    return dict(parse_qsl(urlsplit(url).query)).get(name)
