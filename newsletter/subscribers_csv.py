"""Read a subscribers CSV (the admin's bulk import). Pure: rows in, validated subscribers and errors out.

Header row required. Columns: ``email`` (required), ``topics``, ``exclude``, ``categories``,
``authors`` (each ``;``-separated), ``describe``, ``timezone``, ``hour``, ``frequency`` (daily,
weekdays, weekly), ``max_papers``, ``minute``, ``weekday`` (for weekly: monday … sunday). Line
numbers in errors count the header as line 1. Every problem of a row is reported (not only the
first); a file that is not UTF-8 text, has no ``email`` column or a field
over ``MAX_FIELD_CHARS`` is refused as a whole with one line saying what to do.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from newsletter import validate
from newsletter.errors import InvalidInput
from newsletter.records import NewSubscriber, Preferences

T = TypeVar("T")
MAX_FIELD_CHARS = 10_000  # a sentence about one's work fits many times over; a 1 MB cell is a broken file
COLUMNS = ("email", "topics", "exclude", "categories", "authors", "describe", "timezone", "hour", "frequency", "max_papers",
           "minute", "weekday")


@dataclass
class CsvImport:
    subscribers: list[NewSubscriber] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "line 7: invalid email address ..."
    lines: dict[str, int] = field(default_factory=dict)  # email → its line in the file
    invalid_rows: int = 0

    def reject_existing(self, existing: set[str]) -> None:
        """Turn rows whose address is already subscribed into errors."""
        clashes = existing & self.lines.keys()
        if not clashes:
            return
        self.errors += [f"line {self.lines[e]}: {e} is already a subscriber" for e in clashes]
        self.invalid_rows += len(clashes)
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
    """The row as a subscriber, or InvalidInput listing every problem of the row ("a; b; c")."""
    problems: list[str] = []

    def check(make: Callable[[], T], fallback: T) -> T:
        try:
            return make()
        except InvalidInput as exc:
            problems.append(str(exc))
            return fallback

    categories = []
    for category in _split(row.get("categories")):
        try:
            categories.append(validate.check_category(category))
        except InvalidInput as exc:
            problems.append(str(exc))
    email = check(lambda: validate.normalize_email(row.get("email") or ""), "")
    preferences = check(lambda: Preferences.from_lists(
        topics=_split(row.get("topics")), exclude=_split(row.get("exclude")), categories=categories,
        authors=_split(row.get("authors")), describe=row.get("describe"),
    ), Preferences.from_lists())
    timezone = check(lambda: validate.check_timezone((row.get("timezone") or "").strip() or "UTC"), "UTC")
    hour = check(lambda: validate.check_hour(_int(row.get("hour"), 7, "hour")), 7)
    frequency = check(lambda: validate.check_frequency((row.get("frequency") or "").strip().lower() or "daily"), "daily")
    max_papers = check(lambda: validate.check_max_papers(_int(row.get("max_papers"), default_max_papers, "max_papers")),
                       default_max_papers)
    minute = check(lambda: validate.check_minute(_int(row.get("minute"), 0, "minute")), 0)
    weekday = check(lambda: validate.check_weekday((row.get("weekday") or "").strip() or "monday"), 0)
    if problems:
        raise InvalidInput("; ".join(problems))
    return NewSubscriber(email=email, preferences=preferences, timezone=timezone, send_hour=hour, frequency=frequency,
                         max_papers=max_papers, send_minute=minute, send_weekday=weekday)


def read_subscribers_csv_file(path: Path, *, default_max_papers: int = 10) -> CsvImport:
    """Read and validate a CSV file; refuse a file that is not UTF-8 or whose fields are absurdly long."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InvalidInput(f"{path}: the file is UTF-16 text; re-save it as CSV UTF-8 and import it again")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text (byte {exc.start:,} cannot be read); "
                           "re-save the file as CSV UTF-8 and import it again") from None
    if "\x00" in text:
        raise InvalidInput(f"{path}: holds NUL bytes, so it is not a text CSV (UTF-16?); re-save it as CSV UTF-8")
    return read_subscribers_csv(text.splitlines(keepends=True), default_max_papers=default_max_papers, source=str(path))


def read_subscribers_csv(lines: Iterable[str], *, default_max_papers: int = 10, source: str = "the CSV") -> CsvImport:
    """Validate every row; each invalid one becomes an error naming its line and all its problems.

    A header without an ``email`` column or with unknown columns is refused as a whole (InvalidInput).
    """
    result = CsvImport()
    reader = csv.DictReader(lines)
    try:
        _read_rows(reader, result, default_max_papers=default_max_papers, source=source)
    except csv.Error as exc:
        raise InvalidInput(f"{source}, line {reader.line_num}: not valid CSV ({exc}); "
                           f"fields hold {MAX_FIELD_CHARS:,} characters at most") from None
    return result


def _read_rows(reader: csv.DictReader[str], result: CsvImport, *, default_max_papers: int, source: str) -> None:
    header = [h.strip().lower() for h in reader.fieldnames or []]
    if "email" not in header:
        raise InvalidInput(f"{source}, line 1: the header row has no 'email' column (columns: {', '.join(COLUMNS)})")
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise InvalidInput(f"{source}, line 1: unknown column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
    reader.fieldnames = header
    seen = result.lines
    for row in reader:
        line = reader.line_num
        if None in row:  # more fields than the header has columns
            result.errors.append(f"line {line}: {len(header) + len(row[None]):,} fields but the header has {len(header)}")
            result.invalid_rows += 1
            continue
        long = [name for name, value in row.items() if value and len(value) > MAX_FIELD_CHARS]
        if long:
            result.errors.append(f"line {line}: {', '.join(long)} longer than {MAX_FIELD_CHARS:,} characters")
            result.invalid_rows += 1
            continue
        try:
            subscriber = row_to_subscriber(row, default_max_papers=default_max_papers)
        except InvalidInput as exc:
            result.errors.append(f"line {line}: {exc}")
            result.invalid_rows += 1
            continue
        if subscriber.email in seen:
            result.errors.append(f"line {line}: {subscriber.email} already appears on line {seen[subscriber.email]}")
            result.invalid_rows += 1
            continue
        seen[subscriber.email] = line
        result.subscribers.append(subscriber)
