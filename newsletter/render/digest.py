"""Digest → subject, HTML and plain text, from the Jinja2 templates in ``templates/email/``. Pure.

A day's digests share almost everything: the page around the papers, each paper's card, the
"trending today" section. ``DigestRenderer`` renders those once per issue date with Jinja2 and inlines
their CSS once with css-inline (email clients ignore most ``<style>`` rules); what differs per
subscriber (their papers' order, the reasons, their links, which trending papers are not already
among their picks) is filled into named slots. A slot is an unguessable marker made per renderer, so
no paper title can forge one. The plain-text part is wrapped at ``TEXT_COLUMNS`` (links are never
broken) and its footer follows the ``-- `` signature separator.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
import textwrap
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import NamedTuple

import css_inline
import jinja2
from markupsafe import Markup

from newsletter.paths import resource_dir
from newsletter.records import Digest, OutgoingEmail, Paper
from newsletter.render.tldr import tldr_of
from newsletter.score.lexical import PaperIndex
from newsletter.wording import inert

MAX_AUTHORS = 5  # past five, "et al."
SUBJECT_TITLE_CHARS = 90  # phones show ~40–90 characters of a subject
TEXT_COLUMNS = 76  # plain text wrapped as mail readers expect (RFC 3676 suggests 72–78)
TEXT_INDENT = "  "  # a card's lines under its "* title"
WEB_SCHEMES = ("https://", "http://")  # the only links an email may carry


def web_url(url: str | None) -> str | None:
    """An http(s) URL as it is; anything else (None, "", javascript:, "None") is no link."""
    return url if url and url.lower().startswith(WEB_SCHEMES) else None


def outside_text_made_inert(paper: Paper) -> Paper:
    """The paper as an email shows it: text without control characters, links only when http(s)."""
    return dataclasses.replace(
        paper, title=inert(paper.title), abstract=inert(paper.abstract), tldr=inert(paper.tldr) if paper.tldr else None,
        authors=tuple(inert(a) for a in paper.authors), categories=tuple(inert(c) for c in paper.categories),
        abs_url=web_url(paper.abs_url), pdf_url=web_url(paper.pdf_url), code_url=web_url(paper.code_url),
        project_url=web_url(paper.project_url))


def short_authors(authors: Sequence[str]) -> str:
    if len(authors) > MAX_AUTHORS:
        return ", ".join(authors[:MAX_AUTHORS]) + " et al."
    return ", ".join(authors)


def tldr(paper: Paper) -> str:
    """The trending API's AI summary when there is one, else the abstract's sentence that says what is new."""
    return tldr_of(paper.abstract, paper.tldr)


def listing(paper: Paper) -> str:
    """``arXiv:2611.10001 · listed 23 Nov 2026``: what a reader cites and when it was announced."""
    listed = paper.published_at or paper.first_seen_at
    parts = ([f"arXiv:{paper.arxiv_id}"] if paper.arxiv_id else []) + ([f"listed {listed:%d %b %Y}"] if listed else [])
    return " · ".join(parts)


def wrapped(text: str, first: str = TEXT_INDENT, rest: str | None = None, *, width: int = TEXT_COLUMNS) -> str:
    """``text`` as lines of at most ``width`` columns, the first starting with ``first``, the others with ``rest``
    (``first``'s width in spaces by default). Words longer than a line (links) are kept whole."""
    rest = " " * len(first) if rest is None else rest
    if len(first) + len(text) <= width and "\n" not in text:
        return first + text  # most lines: no need for textwrap's work
    return textwrap.fill(text, width, initial_indent=first, subsequent_indent=rest, break_long_words=False,
                         break_on_hyphens=False)


def make_environment(templates_dir: Path | None = None) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir or resource_dir("templates")),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=True),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly, not as an empty string
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["wrapped"] = wrapped
    env.filters["inert"] = inert  # a value typed back into a form as it came, when it was refused for what it held
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


class _Slots:
    """``slot.name`` in a template renders as a marker the renderer later fills."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(8)
        self.pattern = re.compile(rf"@@{self.token}:([a-z_]+)@@")

    def __getattr__(self, name: str) -> Markup:
        return Markup(f"@@{self.token}:{name}@@")


class _Filled:
    """A rendered text split at its slots: ``fill(name=value, ...)`` joins it back.

    Kept as a ``str.format`` template (its own braces doubled): ``format_map`` fills it in C, about
    four times faster than joining the pieces in Python, and a digest fills ~40 of them."""

    def __init__(self, text: str, slots: _Slots) -> None:
        parts = slots.pattern.split(text)
        literals, names = parts[0::2], parts[1::2]
        escaped = [literal.replace("{", "{{").replace("}", "}}") for literal in literals]
        self.template = escaped[0] + "".join(f"{{{name}}}{literal}" for name, literal in zip(names, escaped[1:], strict=True))

    def fill(self, **values: str) -> str:
        return self.template.format_map(values)


class _Card(NamedTuple):
    html: _Filled
    text: _Filled
    title: str  # as shown: for the preheader


class DigestRenderer:
    """Renders every digest of one issue date (see the module docstring)."""

    def __init__(self, *, env: jinja2.Environment, list_name: str, issue_date: dt.date,
                 trending: Sequence[Paper] = ()) -> None:
        self.env, self.list_name, self.issue_date = env, list_name, issue_date
        self.slots = _Slots()
        self.css = self._source("email/digest.css")
        context = {"slot": self.slots, "list_name": list_name, "date_text": issue_date.strftime("%A, %d %B %Y"),
                   "dark_css": Markup(self._source("email/dark.css"))}
        self.trending = [outside_text_made_inert(p) for p in trending]
        self._trending: dict[tuple[str, ...], tuple[str, str]] = {}
        self._trending_index: PaperIndex | None = None
        self._trending_for: dict[tuple[str, ...], list[Paper]] = {}
        html = env.get_template("email/shell.html.j2").render(context)
        inliner = css_inline.CSSInliner(extra_css=self.css, keep_style_tags=True, load_remote_stylesheets=False)
        self.shell_html = _Filled(inliner.inline(html), self.slots)
        self.shell_text = _Filled(env.get_template("email/shell.txt.j2").render(context), self.slots)
        self.reason_html = _Filled(self._fragment("email/reason.html.j2", {}), self.slots)
        self.feedback_html = _Filled(self._fragment("email/feedback.html.j2", {}), self.slots)
        self.feedback_text = _Filled(env.get_template("email/feedback.txt.j2").render(slot=self.slots), self.slots)
        self._cards: dict[str, _Card] = {}

    def _source(self, name: str) -> str:
        assert self.env.loader is not None
        return self.env.loader.get_source(self.env, name)[0]

    def _fragment(self, name: str, context: dict[str, object]) -> str:
        html = self.env.get_template(name).render(slot=self.slots, **context)
        return css_inline.inline_fragment(html, self.css)

    def _card(self, paper: Paper) -> _Card:
        """The paper's HTML and text card, rendered once per day whoever it goes to."""
        card = self._cards.get(paper.key)
        if card is None:
            paper = outside_text_made_inert(paper)
            links = [(label, url) for label, url in (("PDF", paper.pdf_url), ("Code", paper.code_url),
                                                     ("Project page", paper.project_url)) if url]
            context = {"paper": paper, "authors": short_authors(paper.authors), "tldr": tldr(paper), "links": links,
                       "listing": listing(paper)}
            text = self.env.get_template("email/paper.txt.j2").render(slot=self.slots, **context)
            card = self._cards[paper.key] = _Card(_Filled(self._fragment("email/paper.html.j2", context), self.slots),
                                                  _Filled(text, self.slots), paper.title)
        return card

    def trending_for(self, exclude: Sequence[str]) -> list[Paper]:
        """The day's trending papers a reader with these exclusions is shown: none that holds an excluded
        phrase ("nothing they didn't ask for" holds below their picks too). Worked out once per distinct list."""
        key = tuple(exclude)
        shown = self._trending_for.get(key)
        if shown is None:
            if key and self.trending:
                self._trending_index = self._trending_index or PaperIndex.build(self.trending)
                hidden = self._trending_index.excluded(key)
                shown = [p for p in self.trending if p.key not in hidden]
            else:
                shown = self.trending
            self._trending_for[key] = shown
        return shown

    def _trending_section(self, picked: set[str], exclude: Sequence[str]) -> tuple[str, str]:
        """The "trending today" section (HTML, text) without the reader's own picks: those are above it already.
        Rendered once per distinct set of papers shown (a handful a day)."""
        shown = [p for p in self.trending_for(exclude) if p.key not in picked]
        key = tuple(p.key for p in shown)
        section = self._trending.get(key)
        if section is None:
            html = self._fragment("email/trending.html.j2", {"trending": shown}) if shown else ""
            text = self.env.get_template("email/trending.txt.j2").render(trending=shown).rstrip("\n") if shown else ""
            section = self._trending[key] = (html, text)
        return section

    def render(self, digest: Digest) -> OutgoingEmail:
        html_cards, text_cards, titles = [], [], []
        for pick, link in zip(digest.papers, digest.feedback_urls or ("",) * len(digest.papers), strict=True):
            card = self._card(pick.paper)
            titles.append(card.title)
            reasons = [inert(r) for r in pick.reasons]
            html_feedback = text_feedback = ""
            if link:
                more, less = f"{link}/up", f"{link}/down"
                html_feedback = self.feedback_html.fill(more_url=escape(more), less_url=escape(less))
                text_feedback = self.feedback_text.fill(more_url=more, less_url=less)
            html_cards.append(card.html.fill(reasons="".join(self.reason_html.fill(reason=escape(r)) for r in reasons),
                                             feedback=html_feedback))
            text_cards.append(card.text.fill(reasons=wrapped("Why: " + "; ".join(reasons), rest=TEXT_INDENT * 2) if reasons
                                             else "", feedback=text_feedback))
        count = f"{len(digest.papers)} paper{'s' if len(digest.papers) != 1 else ''} picked for you"
        preheader = " · ".join(titles[:3])
        common = {"count": count, "preferences_url": digest.preferences_url,
                  "unsubscribe_url": digest.unsubscribe_url, "view_url": digest.view_url}
        trending_html, trending_text = self._trending_section({p.paper.key for p in digest.papers}, digest.exclude)
        html = self.shell_html.fill(papers="".join(html_cards), preheader=escape(preheader), trending=trending_html,
                                    email=escape(digest.email), **{k: escape(v) for k, v in common.items()})
        subscribed = wrapped(f"You get this because you subscribed as {digest.email}.", first="", rest="")
        text = self.shell_text.fill(papers="\n\n".join(text_cards), preheader=preheader, trending=trending_text,
                                    subscribed=subscribed, **common)
        return OutgoingEmail(to=digest.email, subject=subject_for(digest, list_name=self.list_name), html=html,
                             text=text, message_id=digest.message_id, unsubscribe_url=digest.unsubscribe_url)


def render_digest(digest: Digest, *, env: jinja2.Environment, list_name: str,
                  trending: Sequence[Paper] = ()) -> OutgoingEmail:
    """One digest on its own (previews, tests); a day's run uses one DigestRenderer for all."""
    return DigestRenderer(env=env, list_name=list_name, issue_date=digest.issue_date, trending=trending).render(digest)


__all__ = ["DigestRenderer", "listing", "make_environment", "render_digest", "short_authors", "subject_for", "tldr",
           "wrapped"]
