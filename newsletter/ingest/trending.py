"""The trending-papers JSON API (``/api/daily_papers``) → Paper records with upvotes. Pure.

Each element is ``{"paper": {"id", "title", "summary", "upvotes", "authors": [{"name"}],
"ai_summary", "ai_keywords", "githubRepo", "projectPage", "publishedAt"}, ...}``; only ``id``,
``title``, ``summary`` and ``upvotes`` are dependable. An HTML page answered with 200, or a list
whose elements lack ``paper.id`` / ``paper.title``, means the API changed: the whole answer is
refused with the reason rather than half-read.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from newsletter.errors import FeedError
from newsletter.ingest import arxiv
from newsletter.ingest.feeds import MAX_NAME, MAX_NAMES, MAX_TEXT, MAX_TITLE, ParsedFeed, clean_text, paper_key, web_url
from newsletter.records import Paper
from newsletter.wording import shorten

MAX_UPVOTES = 10**9  # more is no count of people (and 10**30 does not fit the database)


def looks_like_json(body: bytes) -> bool:
    return body.lstrip()[:1] in (b"[", b"{")


def parse_trending(body: bytes, *, source: str, content_type: str | None = None) -> ParsedFeed:
    if (content_type and "html" in content_type) or body.lstrip()[:1] == b"<":
        raise FeedError(f"{source}: answered with an HTML page instead of JSON; the API may have changed or be down")
    try:
        data = json.loads(body)
    except ValueError as exc:  # not UTF-8, not JSON, a number of over 4,300 digits
        raise FeedError(f"{source}: not valid JSON ({shorten(str(exc), 200)}); the API may have changed") from None
    if not isinstance(data, list):
        raise FeedError(f"{source}: expected a JSON list of papers, got a {type(data).__name__}; the API changed shape")
    papers = tuple(_paper(element, index, source) for index, element in enumerate(data))
    return ParsedFeed(title="trending papers", papers=papers)


def _paper(element: Any, index: int, source: str) -> Paper:
    paper = element.get("paper") if isinstance(element, dict) else None
    if not isinstance(paper, dict) or not isinstance(paper.get("id"), str) or not (paper.get("title") or element.get("title")):
        raise FeedError(f"{source}: element {index} has no paper.id and title; the API changed shape, nothing was stored")
    found = arxiv.split_id(paper["id"])
    arxiv_id = found[0] if found else None
    upvotes = paper.get("upvotes")
    keywords, authors = paper.get("ai_keywords"), paper.get("authors")
    keywords, authors = (value if isinstance(value, list) else [] for value in (keywords, authors))
    return Paper(
        key=arxiv_id or paper_key(clean_text(paper["id"], limit=MAX_TEXT)),
        arxiv_id=arxiv_id,
        title=clean_text(paper.get("title") or element.get("title"), limit=MAX_TITLE, tex=arxiv_id is not None),
        abstract=clean_text(paper.get("summary") or element.get("summary") or "", tex=arxiv_id is not None),
        authors=tuple(n for n in (clean_text(a.get("name"), limit=MAX_NAME) for a in authors[:MAX_NAMES]
                                  if isinstance(a, dict)) if n),
        abs_url=arxiv.abs_url(arxiv_id) if arxiv_id else None,
        pdf_url=arxiv.pdf_url(arxiv_id) if arxiv_id else None,
        published_at=_timestamp(paper.get("publishedAt")),
        # A count, not a flag (true is not 1 upvote), and one a page of papers could have: 10**30 is no count.
        upvotes=upvotes if type(upvotes) is int and 0 <= upvotes <= MAX_UPVOTES else None,
        tldr=clean_text(paper.get("ai_summary")) or None,
        keywords=tuple(clean_text(k, limit=MAX_NAME) for k in keywords[:20] if isinstance(k, str)),
        code_url=web_url(paper.get("githubRepo")),
        project_url=web_url(paper.get("projectPage")),
    )


def _timestamp(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC).replace(tzinfo=None)
    except ValueError:
        return None
