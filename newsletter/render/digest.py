"""Digest → subject, HTML and plain text, from the Jinja2 templates in ``templates/``. Pure."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2

from newsletter.paths import resource_dir
from newsletter.records import Digest, OutgoingEmail

MAX_AUTHORS = 5  # past five, "et al."
SNIPPET_CHARS = 320  # about three lines in a phone's mail app
SUBJECT_TITLE_CHARS = 90  # phones show ~40–90 characters of a subject
SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def short_authors(authors: tuple[str, ...] | list[str]) -> str:
    if len(authors) > MAX_AUTHORS:
        return ", ".join(authors[:MAX_AUTHORS]) + " et al."
    return ", ".join(authors)


def snippet(abstract: str, limit: int = SNIPPET_CHARS) -> str:
    """The abstract cut at a sentence end (or a word) before ``limit`` characters."""
    if len(abstract) <= limit:
        return abstract
    cut = abstract[:limit]
    ends = [m.start() for m in SENTENCE_END.finditer(cut)]
    if ends and ends[-1] > limit // 2:
        return cut[: ends[-1]]
    return cut.rsplit(" ", 1)[0].rstrip(",;:") + " …"


def make_environment(templates_dir: Path | None = None) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir or resource_dir("templates")),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=True),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly, not as an empty string
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short_authors"] = short_authors
    env.filters["snippet"] = snippet
    return env


def subject_for(digest: Digest, *, list_name: str) -> str:
    date = digest.issue_date.strftime("%d %b")
    if not digest.papers:
        return f"{list_name} · {date}: nothing new for you today"
    title = digest.papers[0].paper.title
    if len(title) > SUBJECT_TITLE_CHARS:
        title = title[:SUBJECT_TITLE_CHARS].rsplit(" ", 1)[0] + "…"
    more = len(digest.papers) - 1
    return f"{list_name} · {date}: {title}" + (f" (+{more} more)" if more else "")


def render_digest(digest: Digest, *, env: jinja2.Environment, list_name: str) -> OutgoingEmail:
    subject = subject_for(digest, list_name=list_name)
    context = {"digest": digest, "list_name": list_name, "subject": subject}
    return OutgoingEmail(
        to=digest.email,
        subject=subject,
        html=env.get_template("digest.html.j2").render(context),
        text=env.get_template("digest.txt.j2").render(context),
        message_id=digest.message_id,
        unsubscribe_url=digest.unsubscribe_url,
    )
