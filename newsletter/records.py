"""Frozen records passed between the pipeline's stages.

ORM rows stay in ``newsletter.db``; ingest produces ``Paper`` records, scoring consumes
``Paper`` and ``Profile`` and produces ``RankedPaper``, rendering turns a ``Digest`` into an
``OutgoingEmail``, sending consumes that.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from newsletter.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Paper:
    """One paper as a source announced it. ``key`` is the arXiv id without version when known."""

    key: str
    title: str
    abstract: str
    authors: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    arxiv_id: str | None = None
    version: int | None = None
    abs_url: str | None = None
    pdf_url: str | None = None
    published_at: dt.datetime | None = None
    announce_type: str | None = None  # arXiv: new, cross, replace, replace-cross
    upvotes: int | None = None
    tldr: str | None = None  # the trending API's one-line AI summary
    keywords: tuple[str, ...] = ()
    code_url: str | None = None
    project_url: str | None = None
    first_seen_at: dt.datetime | None = None  # when we first saw it (naive UTC); drives recency
    id: int | None = None  # database id once stored
    link: str | None = None  # at ingest: the entry's own link, as its feed gave it (abs_url may be arXiv's, from the id)

    @property
    def primary_category(self) -> str | None:
        return self.categories[0] if self.categories else None


@dataclass(frozen=True, slots=True)
class Topic:
    phrase: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Topic:
        """``"diffusion models"`` or, weighted, ``"diffusion models^2"`` (a weight from 0.1 to 10)."""
        phrase, caret, weight = text.strip().rpartition("^")
        if not caret:
            return cls(_matchable(text.strip(), text))
        try:
            value = float(weight)
        except ValueError:
            raise InvalidInput(f"topic {text!r}: the weight after ^ must be a number, e.g. \"{phrase}^2\"") from None
        if not 0.1 <= value <= 10:
            raise InvalidInput(f"topic {text!r}: the weight must be between 0.1 and 10")
        if not phrase.strip():  # "^2" alone was stored as no topic at all: a subscription that matched nothing
            raise InvalidInput(f"topic {text!r}: give the words before the weight, e.g. \"diffusion models{caret}{weight}\"")
        return cls(_matchable(phrase.strip(), text), value)


def _matchable(phrase: str, text: str) -> str:
    """``phrase`` if a paper's text can match it. "the" was taken, matched no word (common words are not
    indexed) and sent papers for their meaning alone, each "close in meaning to “the”"."""
    from newsletter.score.text import phrase_terms  # pure; imported here, as the scorer imports these records

    if phrase and phrase.isascii() and not phrase_terms(phrase):  # other scripts: the meaning may still match
        raise InvalidInput(f"topic {text!r} has only common words (such as the, of, paper, method) or single letters, "
                           "which match no paper: name the subject itself")
    return phrase


@dataclass(frozen=True, slots=True)
class Preferences:
    topics: tuple[Topic, ...] = ()
    exclude: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    describe: str = ""
    seed_papers: tuple[str, ...] = ()  # arXiv ids: "more like these"
    min_score: float | None = None  # None: the installation's NEWSLETTER_MIN_SCORE

    @property
    def selects_nothing(self) -> bool:
        """No topic, author, sentence or seed paper: no paper can score, so no digest ever comes (categories
        and exclusions only narrow what those select)."""
        return not (self.topics or self.authors or self.describe or self.seed_papers)

    @classmethod
    def from_lists(
        cls,
        *,
        topics: list[str] | tuple[str, ...] = (),
        exclude: list[str] | tuple[str, ...] = (),
        categories: list[str] | tuple[str, ...] = (),
        authors: list[str] | tuple[str, ...] = (),
        describe: str | None = "",
        seed_papers: list[str] | tuple[str, ...] = (),
        min_score: float | None = None,
    ) -> Preferences:
        return cls(
            topics=tuple(Topic.parse(t) for t in topics if t.strip()),
            exclude=tuple(x.strip() for x in exclude if x.strip()),
            categories=tuple(c.strip() for c in categories if c.strip()),
            authors=tuple(a.strip() for a in authors if a.strip()),
            describe=(describe or "").strip(),
            seed_papers=tuple(dict.fromkeys(x.strip() for x in seed_papers if x.strip())),
            min_score=min_score,
        )


@dataclass(frozen=True, slots=True)
class Profile:
    """What scoring needs to know about one subscriber."""

    subscriber_id: int
    email: str
    preferences: Preferences
    max_papers: int
    already_sent: frozenset[str] = field(default_factory=frozenset)  # paper keys
    # Papers that say what they want: seeds and "more like this" (+), "less like this" (-).
    examples: tuple[Example, ...] = ()

    @property
    def min_score(self) -> float | None:
        return self.preferences.min_score


@dataclass(frozen=True, slots=True)
class Example:
    """A paper a subscriber pointed at: a seed (+1), "more like this" (+1) or "less like this" (-1)."""

    paper: Paper
    weight: float
    kind: str  # seed | liked | disliked


# Not frozen, though nothing changes one: a dry run of 100,000 subscribers makes a million of these, and a
# frozen dataclass's __init__ (object.__setattr__ per field) cost four times as much, 0.7 s of that run.
@dataclass(slots=True)
class RankedPaper:
    paper: Paper
    score: float  # relevance; the digest's order also counts followed authors, trending and age
    reasons: tuple[str, ...]
    placement: str = ""  # what besides relevance set its place: "followed author: …", "trending +0.9, age −0.2"


@dataclass(frozen=True, slots=True)
class Digest:
    """One subscriber's email for one issue date, before rendering."""

    email: str
    issue_date: dt.date
    papers: tuple[RankedPaper, ...]
    unsubscribe_url: str
    preferences_url: str
    view_url: str
    message_id: str
    # One per paper, in order, each naming its paper: + "/up" or "/down" is "more / less like this".
    # Empty: the email has no feedback links.
    feedback_urls: tuple[str, ...] = ()
    # The reader's excluded phrases: a trending paper that holds one is not shown to them either.
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """A rendered message ready for a Mailer."""

    to: str
    subject: str
    html: str
    text: str
    message_id: str
    unsubscribe_url: str


@dataclass(frozen=True, slots=True)
class NewSubscriber:
    """A validated subscriber about to be stored (CLI add, CSV import, web sign-up)."""

    email: str
    preferences: Preferences = Preferences()
    timezone: str = "UTC"
    send_hour: int = 7
    frequency: str = "daily"  # daily | weekdays | weekly
    max_papers: int = 10
    status: str = "active"
    send_minute: int = 0
    send_weekday: int = 0  # for weekly: 0 = Monday


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message on its way: SMTP envelope plus the bytes."""

    sender: str
    recipient: str
    message_id: str
    data: bytes
    # Every line of ``data`` ends in CRLF (no lone CR or LF), as checked where it was built: a digest is
    # checked in the process that renders it, so the sending process need not scan it again.
    crlf_only: bool = False
