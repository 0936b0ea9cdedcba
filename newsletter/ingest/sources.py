"""What a source spec means: shorthands, kinds, URLs. Pure."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from newsletter.errors import InvalidInput
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
    return SourceSpec(spec, detect_kind(spec))


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
