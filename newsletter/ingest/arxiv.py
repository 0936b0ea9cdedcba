"""arXiv identifiers and the arXiv RSS description prefix. Pure functions."""

from __future__ import annotations

import re

# New style 2409.01234v2 (4 or 5 digits after the dot); old style hep-th/9901001v1, math.GT/0309136.
ARXIV_ID = re.compile(
    r"(?P<id>\d{4}\.\d{4,5}|[a-z\-]+(?:\.[A-Z]{2})?/\d{7})(?:v(?P<version>\d+))?"
)
ARXIV_HOST = re.compile(r"arxiv\.org/(?:abs|pdf)/(?P<rest>.+?)(?:\.pdf)?$")
RSS_PREFIX = re.compile(
    r"^\s*arXiv:\S+\s+Announce Type:\s*(?P<type>[\w-]+)\s*(?:Abstract:\s*)?", re.IGNORECASE
)


def split_id(text: str) -> tuple[str, int | None] | None:
    """('2409.01234', 2) from '2409.01234v2', 'oai:arXiv.org:2409.01234v2' or an abs/pdf URL."""
    host = ARXIV_HOST.search(text)
    candidate = host.group("rest") if host else text.rsplit(":", 1)[-1] if "arxiv" in text.lower() else text
    match = ARXIV_ID.fullmatch(candidate.strip())
    if match is None:
        return None
    version = match.group("version")
    return match.group("id"), int(version) if version else None


def strip_rss_prefix(description: str) -> tuple[str, str | None]:
    """Split 'arXiv:2409.01234v1 Announce Type: new Abstract: ...' into (abstract, announce type)."""
    match = RSS_PREFIX.match(description)
    if match is None:
        return description.strip(), None
    return description[match.end() :].strip(), match.group("type").lower()


def abs_url(arxiv_id: str) -> str:
    return f"https://arxiv.org/abs/{arxiv_id}"


def pdf_url(arxiv_id: str) -> str:
    return f"https://arxiv.org/pdf/{arxiv_id}"
