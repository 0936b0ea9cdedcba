"""What a source spec means: shorthands, kinds, URLs. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from newsletter.errors import InvalidInput
from newsletter.validate import check_category

ARXIV_RSS = "https://rss.arxiv.org/rss/"
ARXIV_API = "https://export.arxiv.org/api/query"
ARXIV_API_PAGE = 200  # results per API request; the API allows up to 2000 but answers slowly past a few hundred
KINDS = ("arxiv-rss", "arxiv-api", "feed")


@dataclass(frozen=True, slots=True)
class SourceSpec:
    url: str  # an http(s) URL or a local file path
    kind: str


def resolve(spec: str) -> SourceSpec:
    """``arxiv:cs.AI+cs.LG``, ``arxiv-query:cat:cs.LG AND abs:diffusion``, a feed URL or a file path."""
    spec = spec.strip()
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
    return SourceSpec(spec, detect_kind(spec))


def detect_kind(url: str) -> str:
    if "export.arxiv.org/api" in url:
        return "arxiv-api"
    if "rss.arxiv.org" in url or "arxiv.org/rss" in url:
        return "arxiv-rss"
    return "feed"
