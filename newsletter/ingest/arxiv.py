"""arXiv identifiers, arXiv's hosts and the arXiv RSS description prefix. Pure functions."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# New style 2409.01234v2 (YYMM, then 4 or 5 digits); old style hep-th/9901001v1, math.GT/0309136. The month
# is 01 to 12: "2613.00000" is no arXiv id.
ARXIV_ID = re.compile(
    r"(?P<id>\d\d(?:0[1-9]|1[0-2])\.\d{4,5}|[a-z\-]+(?:\.[A-Z]{2})?/\d\d(?:0[1-9]|1[0-2])\d{3})(?:v(?P<version>\d+))?"
)
# The hosts that speak for arXiv: its listing, its API and its abstract pages. An id is read from a URL
# only on these hosts (evil.example/arxiv.org/abs/… names no arXiv paper).
ARXIV_HOSTS = frozenset({"arxiv.org", "www.arxiv.org", "export.arxiv.org", "rss.arxiv.org"})
MAX_VERSION_DIGITS = 6
ARXIV_PATH = re.compile(r"/(?:abs|pdf)/(?P<rest>.+?)(?:\.pdf)?/?")
RSS_PREFIX = re.compile(
    r"^\s*arXiv:\S+\s+Announce Type:\s*(?P<type>[\w-]+)\s*(?:Abstract:\s*)?", re.IGNORECASE
)


def split_id(text: str) -> tuple[str, int | None] | None:
    """('2409.01234', 2) from '2409.01234v2', 'arXiv:2409.01234v2', 'oai:arXiv.org:2409.01234v2' or an
    abs/pdf URL on one of arXiv's hosts; None for anything else, such as a URL on another host."""
    text = text.strip()
    if text.lower().startswith(tuple(f"{host}/" for host in ARXIV_HOSTS)):
        text = "https://" + text  # arxiv.org/abs/2409.01234, as people paste it
    if "://" in text:
        candidate = _id_in_url(text)
    else:
        candidate = text.rsplit(":", 1)[-1] if "arxiv" in text.lower() else text
    match = ARXIV_ID.fullmatch(candidate.strip()) if candidate else None
    if match is None:
        return None
    version = match.group("version")
    # v99999999999999999999 overflowed the database's integer and lost the whole feed: no paper has a
    # million versions, so such a number is no version at all.
    return match.group("id"), int(version) if version and len(version) <= MAX_VERSION_DIGITS else None


def _id_in_url(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or (parts.hostname or "") not in ARXIV_HOSTS:
        return None
    path = ARXIV_PATH.fullmatch(parts.path)
    return path.group("rest") if path else None


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
