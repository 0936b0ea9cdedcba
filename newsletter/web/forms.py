"""The subscription form's fields: read from a POST, checked, turned into a ``NewSubscriber``, and back.

Everything a person typed is kept as typed (``FormValues``) so that a form with a mistake comes back
filled in; only ``parse`` turns it into a record, or says what is wrong with each field. Text loses
control characters and bidi overrides on the way in; lists are one item per line (or ``;``).
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from starlette.datastructures import FormData

from newsletter import records, validate
from newsletter.errors import InvalidInput
from newsletter.wording import inert

MAX_ITEMS = 30  # topics, exclusions, authors or categories: more is not an interest, it is the whole listing
MAX_PHRASE_CHARS = 200
MAX_DESCRIBE_CHARS = 1_000  # a sentence or three
MAX_EMAIL_CHARS = 320  # RFC 5321's longest address
MAX_CATEGORY_CHARS = 40  # the longest arXiv category is 18
T = TypeVar("T")
LIST_SPLIT = re.compile(r"[\n;]")

# A short list of the arXiv categories most readers pick; a subscriber's own others are shown too.
COMMON_CATEGORIES = (
    ("cs.AI", "Artificial intelligence"), ("cs.CL", "Computation and language"), ("cs.CV", "Computer vision"),
    ("cs.LG", "Machine learning"), ("stat.ML", "Machine learning (statistics)"), ("cs.NE", "Neural and evolutionary computing"),
    ("cs.RO", "Robotics"), ("cs.IR", "Information retrieval"), ("cs.HC", "Human-computer interaction"),
    ("cs.CR", "Cryptography and security"), ("cs.DC", "Distributed computing"), ("cs.DS", "Data structures and algorithms"),
    ("cs.SE", "Software engineering"), ("cs.PL", "Programming languages"), ("cs.DB", "Databases"),
    ("cs.SD", "Sound"), ("eess.AS", "Audio and speech processing"), ("eess.IV", "Image and video processing"),
    ("eess.SP", "Signal processing"), ("math.OC", "Optimization and control"), ("math.ST", "Statistics theory"),
    ("stat.ME", "Statistical methodology"), ("q-bio.NC", "Neurons and cognition"), ("q-bio.QM", "Quantitative methods"),
    ("physics.comp-ph", "Computational physics"), ("quant-ph", "Quantum physics"),
    ("cond-mat.dis-nn", "Disordered systems and neural networks"),
    ("astro-ph.IM", "Astrophysics: instrumentation and methods"), ("econ.EM", "Econometrics"), ("q-fin.ST", "Statistical finance"),
)
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FREQUENCY_LABELS = (("daily", "Every day"), ("weekdays", "Monday to Friday"), ("weekly", "Once a week, on"))


@functools.cache
def time_zones() -> tuple[str, ...]:
    """Every IANA zone this machine knows that is a place's, UTC first."""
    return ("UTC", *sorted(zoneinfo.available_timezones() - {"UTC"} - validate.NOT_A_PLACE))


class FormErrors(Exception):
    """What is wrong with each field, in words for a person: {field name: message}."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    if not isinstance(value, str):  # a file part where text belongs counts as empty
        return ""
    return "\n".join(inert(line) for line in value.splitlines())  # a list field holds one item a line


def _line(text: str) -> str:
    return " ".join(text.split())


def _items(text: str) -> list[str]:
    return [_line(item) for item in LIST_SPLIT.split(text) if item.strip()]


def _topic_text(topic: records.Topic) -> str:
    return topic.phrase if topic.weight == 1 else f"{topic.phrase}^{topic.weight:g}"


@dataclass(frozen=True, slots=True)
class FormValues:
    """The form's fields as text, as typed (the page escapes them)."""

    email: str = ""
    topics: str = ""
    exclude: str = ""
    authors: str = ""
    categories: tuple[str, ...] = ()
    describe: str = ""
    timezone: str = "UTC"
    send_hour: str = "7"
    frequency: str = "daily"
    weekday: str = "0"
    max_papers: str = "10"

    @classmethod
    def from_form(cls, form: FormData) -> FormValues:
        categories = tuple(inert(c).strip() for c in form.getlist("categories") if isinstance(c, str) and c.strip())
        email = form.get("email")  # as typed: an address with a control or bidi character in it is refused, not changed
        return cls(email=email.strip() if isinstance(email, str) else "", topics=_text(form, "topics"), exclude=_text(form, "exclude"),
                   authors=_text(form, "authors"), categories=categories[: MAX_ITEMS + 1], describe=_text(form, "describe").strip(),
                   timezone=_line(_text(form, "timezone")), send_hour=_line(_text(form, "send_hour")),
                   frequency=_line(_text(form, "frequency")), weekday=_line(_text(form, "weekday")),
                   max_papers=_line(_text(form, "max_papers")))

    @classmethod
    def from_subscription(cls, new: records.NewSubscriber) -> FormValues:
        prefs = new.preferences
        return cls(email=new.email, topics="\n".join(_topic_text(t) for t in prefs.topics), exclude="\n".join(prefs.exclude),
                   authors="\n".join(prefs.authors), categories=prefs.categories, describe=prefs.describe,
                   timezone=new.timezone, send_hour=str(new.send_hour), frequency=new.frequency,
                   weekday=str(new.send_weekday), max_papers=str(new.max_papers))

    def parse(self, *, email: str | None = None, keep: records.NewSubscriber | None = None) -> records.NewSubscriber:
        """The subscription these fields ask for; raises ``FormErrors``.

        ``email``: the address when the form does not carry one (the preferences page); ``keep``: the
        stored subscription, whose settings the form does not show (minute, seeds, minimum score) stay.
        """
        errors: dict[str, str] = {}

        def check(field: str, work: Callable[[], T]) -> T | None:
            """``work()``, or None with its complaint noted against ``field``."""
            try:
                return work()
            except InvalidInput as exc:
                errors[field] = _sentence(str(exc))
                return None

        address = email if email is not None else check("email", lambda: self._email())
        lists = {name: _items(getattr(self, name)) for name in ("topics", "exclude", "authors")}
        for name, items in lists.items():
            if len(items) > MAX_ITEMS:
                errors[name] = f"At most {MAX_ITEMS} lines, please."
            elif any(len(item) > MAX_PHRASE_CHARS for item in items):
                errors[name] = f"Each line can be at most {MAX_PHRASE_CHARS} characters long."
        if len(self.categories) > MAX_ITEMS:
            errors["categories"] = f"At most {MAX_ITEMS} categories, please."
        elif any(len(c) > MAX_CATEGORY_CHARS for c in self.categories):
            errors["categories"] = "That is not an arXiv category."
        else:
            check("categories", lambda: [validate.check_category(c) for c in self.categories])
        if len(self.describe) > MAX_DESCRIBE_CHARS:
            errors["describe"] = f"At most {MAX_DESCRIBE_CHARS:,} characters, please."
        if "topics" not in errors:
            check("topics", lambda: [records.Topic.parse(topic) for topic in lists["topics"]])
        preferences = None
        if not errors:
            kept = keep.preferences if keep else records.Preferences()
            preferences = records.Preferences.from_lists(
                topics=lists["topics"], exclude=lists["exclude"], authors=lists["authors"], categories=list(self.categories),
                describe=self.describe, seed_papers=kept.seed_papers, min_score=kept.min_score)
            if preferences.selects_nothing:  # accepted, it was a subscription that never sent anything
                errors["topics"] = ("Give at least one topic (or an author, or a sentence about your work): "
                                    "with none, no paper matches and no digest comes.")
        if self.timezone not in time_zones():
            errors["timezone"] = "Choose a time zone from the list."
        hour = check("send_hour", lambda: validate.check_hour(_number(self.send_hour, "send hour")))
        frequency = check("frequency", lambda: validate.check_frequency(self.frequency))
        weekday = check("weekday", lambda: _weekday(self.weekday))
        max_papers = check("max_papers", lambda: _papers(self.max_papers))
        if errors:
            raise FormErrors(errors)
        assert address is not None and preferences is not None and hour is not None and frequency is not None
        assert weekday is not None and max_papers is not None
        return records.NewSubscriber(email=address, preferences=preferences, timezone=self.timezone, send_hour=hour,
                                     frequency=frequency, max_papers=max_papers, status=keep.status if keep else "pending",
                                     send_minute=keep.send_minute if keep else 0, send_weekday=weekday)

    def _email(self) -> str:
        if not self.email:
            raise InvalidInput("enter your email address")
        if len(self.email) > MAX_EMAIL_CHARS:
            raise InvalidInput("that is too long to be an email address")
        return validate.normalize_email(self.email)


def _number(text: str, what: str) -> int:
    if not re.fullmatch(r"\d{1,3}", text):
        raise InvalidInput(f"choose a {what} from the list")
    return int(text)


def _weekday(text: str) -> int:
    if not re.fullmatch(r"[0-6]", text):
        raise InvalidInput("choose a weekday from the list")
    return int(text)


def _papers(text: str) -> int:
    try:
        return validate.check_max_papers(_number(text, "number of papers") if text else 0)
    except InvalidInput:
        raise InvalidInput(f"choose from 1 to {validate.MAX_PAPERS} papers") from None


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")
