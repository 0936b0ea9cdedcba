"""Seed papers ("more like these"): arXiv ids typed by a subscriber or found in their BibTeX file.

Seeds not yet ingested are fetched from the arXiv API once, when they are added, and stored with
their publication date as first-seen date, so they never show up as new papers in a digest.
"""

from __future__ import annotations

import datetime as dt
import re

import bibtexparser
from sqlalchemy.orm import Session

from newsletter.db import repo
from newsletter.errors import InvalidInput
from newsletter.ingest import arxiv
from newsletter.ingest.feeds import parse_feed
from newsletter.ingest.fetch import Fetcher
from newsletter.ingest.sources import Trust, with_query

ARXIV_IN_TEXT = re.compile(r"(?:arxiv[:/.\s]*|abs/|pdf/)(\d{4}\.\d{4,5}|[a-z\-]+(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?", re.I)
LONG_AGO = dt.datetime(2000, 1, 1)  # first-seen date for a seed without a publication date


def arxiv_ids_from_bibtex(text: str) -> list[str]:
    """arXiv ids of the entries of a BibTeX file (eprint, url, doi 10.48550/arXiv.…, journal, note)."""
    try:
        entries = bibtexparser.loads(text).entries
    except Exception as exc:  # bibtexparser raises several types on broken input
        raise InvalidInput(f"not a readable BibTeX file ({exc})") from None
    found = []
    for entry in entries:
        eprint = entry.get("eprint", "")
        if eprint and arxiv.split_id(eprint):
            found.append(arxiv.split_id(eprint)[0])  # type: ignore[index]
            continue
        for field in ("url", "doi", "journal", "note", "howpublished", "archiveprefix"):
            match = ARXIV_IN_TEXT.search(entry.get(field, ""))
            if match:
                found.append(match.group(1))
                break
    return list(dict.fromkeys(found))


def normalise_ids(raw: list[str]) -> list[str]:
    ids = []
    for value in raw:
        found = arxiv.split_id(value.strip())
        if found is None:
            raise InvalidInput(f"{value!r} is not an arXiv id (use e.g. 2409.01234 or hep-th/9901001)")
        ids.append(found[0])
    return list(dict.fromkeys(ids))


def ensure_seed_papers(session: Session, *, ids: list[str], fetcher: Fetcher, api_url: str) -> list[str]:
    """Fetch (arXiv API, one request) and store the seeds not yet known; returns the ids still missing."""
    missing = [i for i in ids if i not in repo.papers_by_arxiv_ids(session, ids=ids)]
    if not missing:
        return []
    url = with_query(api_url, id_list=",".join(missing), max_results=len(missing))
    papers = parse_feed(fetcher.get(url, min_interval_s=3.0).body, source=url).papers
    for paper in papers:
        repo.upsert_papers(session, papers=[paper], source_id=None, now=paper.published_at or LONG_AGO, trust=Trust.ARXIV)
    found = {p.key for p in papers}
    return [i for i in missing if i not in found]
