"""Read a subscribers CSV (the admin's bulk import). Pure: rows in, validated subscribers and errors out.

Header row required. Columns: ``email`` (required), ``topics``, ``exclude``, ``categories``,
``authors`` (each ``;``-separated), ``describe``, ``timezone``, ``hour``, ``frequency``,
``max_papers``. Line numbers in errors count the header as line 1.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field

from newsletter import validate
from newsletter.errors import InvalidInput
from newsletter.records import NewSubscriber, Preferences

COLUMNS = ("email", "topics", "exclude", "categories", "authors", "describe", "timezone", "hour", "frequency", "max_papers")


@dataclass
class CsvImport:
    subscribers: list[NewSubscriber] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "line 7: invalid email address ..."
    lines: dict[str, int] = field(default_factory=dict)  # email → its line in the file

    def reject_existing(self, existing: set[str]) -> None:
        """Turn rows whose address is already subscribed into errors."""
        clashes = existing & self.lines.keys()
        if not clashes:
            return
        self.errors += [f"line {self.lines[e]}: {e} is already a subscriber" for e in clashes]
        self.errors.sort(key=lambda e: int(e.split(":")[0].removeprefix("line ")))
        self.subscribers = [s for s in self.subscribers if s.email not in clashes]


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(";") if part.strip()]


def _int(value: str | None, default: int, name: str) -> int:
    if value is None or not value.strip():
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{name} {value!r} is not a whole number") from None


def row_to_subscriber(row: dict[str, str], *, default_max_papers: int) -> NewSubscriber:
    categories = [validate.check_category(c) for c in _split(row.get("categories"))]
    return NewSubscriber(
        email=validate.normalize_email(row.get("email") or ""),
        preferences=Preferences.from_lists(
            topics=_split(row.get("topics")), exclude=_split(row.get("exclude")), categories=categories,
            authors=_split(row.get("authors")), describe=row.get("describe"),
        ),
        timezone=validate.check_timezone((row.get("timezone") or "").strip() or "UTC"),
        send_hour=validate.check_hour(_int(row.get("hour"), 7, "hour")),
        frequency=validate.check_frequency((row.get("frequency") or "").strip().lower() or "daily"),
        max_papers=validate.check_max_papers(_int(row.get("max_papers"), default_max_papers, "max_papers")),
    )


def read_subscribers_csv(lines: Iterable[str], *, default_max_papers: int = 10) -> CsvImport:
    """Validate every row; each invalid one becomes an error naming its line."""
    result = CsvImport()
    reader = csv.DictReader(lines)
    header = [h.strip().lower() for h in reader.fieldnames or []]
    if "email" not in header:
        result.errors.append("line 1: the header row has no 'email' column (columns: " + ", ".join(COLUMNS) + ")")
        return result
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        result.errors.append(f"line 1: unknown column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
        return result
    reader.fieldnames = header
    seen = result.lines
    for row in reader:
        line = reader.line_num
        try:
            subscriber = row_to_subscriber(row, default_max_papers=default_max_papers)
        except InvalidInput as exc:
            result.errors.append(f"line {line}: {exc}")
            continue
        if subscriber.email in seen:
            result.errors.append(f"line {line}: {subscriber.email} already appears on line {seen[subscriber.email]}")
            continue
        seen[subscriber.email] = line
        result.subscribers.append(subscriber)
    return result
