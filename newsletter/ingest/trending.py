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
from newsletter.ingest.feeds import ParsedFeed, clean_text, web_url
from newsletter.records import Paper


def looks_like_json(body: bytes) -> bool:
    return body.lstrip()[:1] in (b"[", b"{")


def parse_trending(body: bytes, *, source: str, content_type: str | None = None) -> ParsedFeed:
    if (content_type and "html" in content_type) or body.lstrip()[:1] == b"<":
        raise FeedError(f"{source}: answered with an HTML page instead of JSON; the API may have changed or be down")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FeedError(f"{source}: not valid JSON ({exc}); the API may have changed") from None
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
    keywords = paper.get("ai_keywords") or []
    return Paper(
        key=arxiv_id or clean_text(paper["id"]),
        arxiv_id=arxiv_id,
        title=clean_text(paper.get("title") or element.get("title")),
        abstract=clean_text(paper.get("summary") or element.get("summary") or ""),
        authors=tuple(n for n in (clean_text(a.get("name")) for a in paper.get("authors") or [] if isinstance(a, dict)) if n),
        abs_url=arxiv.abs_url(arxiv_id) if arxiv_id else None,
        pdf_url=arxiv.pdf_url(arxiv_id) if arxiv_id else None,
        published_at=_timestamp(paper.get("publishedAt")),
        upvotes=upvotes if isinstance(upvotes, int) and upvotes >= 0 else None,
        tldr=clean_text(paper.get("ai_summary")) or None,
        keywords=tuple(clean_text(k) for k in keywords if isinstance(k, str))[:20],
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
