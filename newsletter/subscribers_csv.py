"""The subscribers file: what ``subscribers import`` reads and ``subscribers export`` writes, as CSV or
JSON. Pure: rows in, validated subscribers and errors out; subscribers in, text out.

CSV: a header row is required. Columns: ``email`` (required), ``topics``, ``exclude``, ``categories``,
``authors``, ``seeds`` (arXiv ids) (each ``;``-separated), ``describe``, ``timezone``, ``hour``,
``minute``, ``frequency`` (daily, weekdays, weekly), ``weekday`` (for weekly: monday … sunday),
``max_papers``, ``min_score`` and ``status`` (active or paused; default active). JSON: a list of
objects with the same keys, the lists as lists. Line numbers in CSV errors count the header as line 1;
JSON errors number the items from 1. Every problem of a row is reported (not only the first); a file
that is not UTF-8 text, has no ``email`` column or a field over ``MAX_FIELD_CHARS`` is refused as a
whole with one line saying what to do.

What ``write_subscribers`` writes reads back as the same subscribers, so export → import → export
gives the same bytes (in CSV, a list item that itself holds a ``;`` is the one thing that does not
survive: it comes back as two items; JSON keeps it).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

from newsletter import validate
from newsletter.errors import InvalidInput
from newsletter.ingest.arxiv import split_id
from newsletter.records import NewSubscriber, Preferences, Topic

T = TypeVar("T")
MAX_FIELD_CHARS = 10_000  # a sentence about one's work fits many times over; a 1 MB cell is a broken file
COLUMNS = ("email", "topics", "exclude", "categories", "authors", "describe", "timezone", "hour", "frequency", "max_papers",
           "minute", "weekday", "seeds", "min_score", "status")
LISTS = ("topics", "exclude", "categories", "authors", "seeds")
FORMATS = ("csv", "json")
# An import adds people without asking them: only to the list they were on. Pending, unsubscribed
# and bounced addresses are not exported, and an import cannot create them.
IMPORTABLE_STATUSES = ("active", "paused")


@dataclass
class CsvImport:
    """A read file: its valid subscribers, and one error per invalid row (``unit`` 1-based numbers them)."""

    subscribers: list[NewSubscriber] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "line 7: invalid email address ..."
    lines: dict[str, int] = field(default_factory=dict)  # email → its line (CSV) or item (JSON) in the file
    invalid_rows: int = 0
    unit: str = "line"  # "item" for JSON
    skipped: list[str] = field(default_factory=list)  # rows left out without making the file invalid

    def reject_existing(self, existing: set[str]) -> None:
        """Turn rows whose address is already subscribed into errors."""
        clashes = self._remove(existing)
        self.errors += [f"{self.unit} {self.lines[e]}: {e} is already a subscriber" for e in clashes]
        self.invalid_rows += len(clashes)
        self.errors.sort(key=self.number_of)

    @staticmethod
    def number_of(message: str) -> int:
        """The line (or item) number a message of ours starts with: "line 4: …" → 4."""
        return int(message.split(":")[0].split()[1])

    def skip(self, emails: set[str], *, why: str) -> None:
        """Leave out the rows of ``emails``, saying ``why`` for each; they do not make the file invalid."""
        self.skipped += [f"{self.unit} {self.lines[e]}: {e} {why}" for e in sorted(self._remove(emails), key=self.lines.__getitem__)]

    def _remove(self, emails: set[str]) -> set[str]:
        found = emails & self.lines.keys()
        if found:
            self.subscribers = [s for s in self.subscribers if s.email not in found]
        return found


# --- reading -------------------------------------------------------------------------------------


def _items(value: Any, name: str) -> list[str]:
    """A list field: ``a; b`` in CSV (or a JSON string), a list of strings in JSON."""
    if value is None:
        return []
    if isinstance(value, str):
        value = split_items(value)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidInput(f"{name} must be a list of text")
    return [item.strip() for item in value if item.strip()]


def split_items(cell: str) -> list[str]:
    r"""A CSV list cell's items: ``;`` separates them, ``\;`` is a semicolon inside one and ``\\`` a backslash
    (what ``join_items`` writes); any other backslash is itself."""
    items, current, position = [], [], 0
    while position < len(cell):
        char = cell[position]
        if char == "\\" and cell[position + 1 : position + 2] in (";", "\\"):
            current.append(cell[position + 1])
            position += 2
            continue
        if char == ";":
            items.append("".join(current))
            current = []
        else:
            current.append(char)
        position += 1
    return [*items, "".join(current)]


def join_items(items: Iterable[str]) -> str:
    """The CSV cell of a list: a topic "graphs; and trees" exported as two topics came back as two."""
    return "; ".join(item.replace("\\", "\\\\").replace(";", "\\;") for item in items)


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be text")
    return value.strip()


def _int(value: Any, default: int, name: str) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise InvalidInput(f"{name} {value!r} is not a whole number")


def _min_score(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(value)
        score = float(value)
    except ValueError:
        raise InvalidInput(f"min_score {value!r} is not a number") from None
    return validate.check_min_score(score)


def _seeds(values: list[str]) -> list[str]:
    ids = []
    for value in values:
        found = split_id(value)
        if found is None:
            raise InvalidInput(f"seed {value!r} is not an arXiv id (use e.g. 2409.01234 or hep-th/9901001)")
        ids.append(found[0])
    return ids


def _status(value: Any) -> str:
    status = _text(value, "status").lower() or "active"
    if status not in IMPORTABLE_STATUSES:
        raise InvalidInput(f"status {value!r} cannot be imported: use active or paused (an import subscribes people "
                           "without asking them; anyone else must sign up themselves)")
    return status


def row_to_subscriber(row: Mapping[str, Any], *, default_max_papers: int) -> NewSubscriber:
    """The row as a subscriber, or InvalidInput listing every problem of the row ("a; b; c").

    Values are CSV's strings or JSON's values (lists, numbers, null); a missing or empty one takes its default.
    """
    problems: list[str] = []

    def check(make: Callable[[], T], fallback: T) -> T:
        try:
            return make()
        except InvalidInput as exc:
            problems.append(str(exc))
            return fallback

    lists: dict[str, list[str]] = {}
    for name in LISTS:
        lists[name] = check(lambda: _items(row.get(name), name), [])  # noqa: B023 - called at once
    categories = []
    for category in lists["categories"]:
        categories.append(check(lambda: validate.check_category(category), category))  # noqa: B023 - called at once
    email = check(lambda: validate.normalize_email(_text(row.get("email"), "email")), "")
    describe = check(lambda: _text(row.get("describe"), "describe"), "")
    seeds: list[str] = check(lambda: _seeds(lists["seeds"]), [])
    min_score = check(lambda: _min_score(row.get("min_score")), None)
    preferences = check(lambda: Preferences.from_lists(
        topics=lists["topics"], exclude=lists["exclude"], categories=categories, authors=lists["authors"],
        describe=describe, seed_papers=seeds, min_score=min_score,
    ), Preferences.from_lists())
    timezone = check(lambda: validate.check_timezone(_text(row.get("timezone"), "timezone") or "UTC"), "UTC")
    hour = check(lambda: validate.check_hour(_int(row.get("hour"), 7, "hour")), 7)
    frequency = check(lambda: validate.check_frequency(_text(row.get("frequency"), "frequency").lower() or "daily"), "daily")
    max_papers = check(lambda: validate.check_max_papers(_int(row.get("max_papers"), default_max_papers, "max_papers")),
                       default_max_papers)
    minute = check(lambda: validate.check_minute(_int(row.get("minute"), 0, "minute")), 0)
    weekday = check(lambda: validate.check_weekday(_text(row.get("weekday"), "weekday") or "monday"), 0)
    status = check(lambda: _status(row.get("status")), "active")
    if problems:
        raise InvalidInput("; ".join(problem.rstrip(".") for problem in problems))  # not "…@-sign.; unknown …"
    return NewSubscriber(email=email, preferences=preferences, timezone=timezone, send_hour=hour, frequency=frequency,
                         max_papers=max_papers, send_minute=minute, send_weekday=weekday, status=status)


def read_subscribers_file(path: Path, *, fmt: str | None = None, default_max_papers: int = 10) -> CsvImport:
    """Read and validate a CSV or JSON file (``fmt``; default: JSON for a ``.json`` file, else CSV); refuse a
    file that is not UTF-8 or whose fields are absurdly long."""
    data = path.read_bytes()
    fmt = fmt or ("json" if path.suffix.lower() == ".json" else "csv")
    resave = "re-save it as CSV UTF-8" if fmt == "csv" else "re-save it as UTF-8"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InvalidInput(f"{path}: the file is UTF-16 text; {resave} and import it again")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text (byte {exc.start:,} cannot be read); {resave} and import it again") from None
    if "\x00" in text:
        raise InvalidInput(f"{path}: holds NUL bytes, so it is not {fmt.upper()} text (UTF-16?); {resave}")
    if fmt == "json":
        return read_subscribers_json(text, default_max_papers=default_max_papers, source=str(path))
    return read_subscribers_csv(text.splitlines(keepends=True), default_max_papers=default_max_papers, source=str(path))


def read_subscribers_csv_file(path: Path, *, default_max_papers: int = 10) -> CsvImport:
    return read_subscribers_file(path, fmt="csv", default_max_papers=default_max_papers)


def read_subscribers_csv(lines: Iterable[str], *, default_max_papers: int = 10, source: str = "the CSV") -> CsvImport:
    """Validate every row; each invalid one becomes an error naming its line and all its problems.

    A header without an ``email`` column or with unknown columns is refused as a whole (InvalidInput).
    """
    result = CsvImport()
    reader = csv.DictReader(lines)
    try:
        _read_rows(reader, result, default_max_papers=default_max_papers, source=source)
    except csv.Error as exc:  # line_num counts the lines read whole: the fault is in the next one
        raise InvalidInput(f"{source}, line {reader.line_num + 1}: not valid CSV ({exc}); "
                           f"fields hold {MAX_FIELD_CHARS:,} characters at most") from None
    return result


def _read_rows(reader: csv.DictReader[str], result: CsvImport, *, default_max_papers: int, source: str) -> None:
    header = [h.strip().lower() for h in reader.fieldnames or []]
    if not header:  # nothing at all (no line read), or a blank first line
        what = "the file is empty" if reader.line_num == 0 else "line 1 is blank"
        raise InvalidInput(f"{source}: {what}; the first line names the columns, e.g. 'email,topics,timezone,hour'")
    if "email" not in header:
        found = ", ".join(repr(h) for h in header[:10]) + (", …" if len(header) > 10 else "")
        raise InvalidInput(f"{source}, line 1: the header row has no 'email' column (it has {found}; "
                           f"the columns read are: {', '.join(COLUMNS)})")
    if twice := sorted({h for h in header if header.count(h) > 1}):  # the last one would win, silently
        raise InvalidInput(f"{source}, line 1: the header names {', '.join(map(repr, twice))} more than once; keep one of each")
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise InvalidInput(f"{source}, line 1: unknown column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
    reader.fieldnames = header
    for row in reader:
        line = reader.line_num
        if None in row:  # more fields than the header has columns
            _invalid(result, line, f"{len(header) + len(row[None]):,} fields but the header has {len(header)}")
            continue
        long = [name for name, value in row.items() if value and len(value) > MAX_FIELD_CHARS]
        if long:
            _invalid(result, line, f"{', '.join(long)} longer than {MAX_FIELD_CHARS:,} characters")
            continue
        _add_row(result, {name: unguarded(value) for name, value in row.items()}, line, default_max_papers=default_max_papers)


# A cell a spreadsheet would run as a formula (=HYPERLINK(…) typed into the public sign-up form): the
# export writes it behind a ' (OWASP's CSV-injection advice) and the import takes the ' off again.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def guarded(value: object) -> object:
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def unguarded(value: str | None) -> str | None:
    return value[1:] if value and value.startswith("'") and value[1:].startswith(FORMULA_START) else value


def read_subscribers_json(text: str, *, default_max_papers: int = 10, source: str = "the JSON") -> CsvImport:
    """Validate every item of a JSON list of subscriber objects, as ``read_subscribers_csv`` does its rows."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{source}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    except ValueError:  # a number of more than 4,300 digits: Python refuses to convert it
        raise InvalidInput(f"{source}: holds a number too long to read (over 4,300 digits); no field needs one") from None
    except RecursionError:  # '[' nested 100,000 deep: the parser's stack ends before the text does
        raise InvalidInput(f'{source}: nested too deeply to be a list of subscribers (expected [{{"email": …}}, …])') from None
    if not isinstance(data, list):
        raise InvalidInput(f'{source}: not a list of subscribers (expected [{{"email": …}}, …])')
    result = CsvImport(unit="item")
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            _invalid(result, number, "not an object with an 'email'")
            continue
        unknown = [str(key) for key in item if key not in COLUMNS]
        long = [key for key, value in item.items() if key in COLUMNS and _longest(value) > MAX_FIELD_CHARS]
        if unknown:
            _invalid(result, number, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
        elif long:
            _invalid(result, number, f"{', '.join(long)} longer than {MAX_FIELD_CHARS:,} characters")
        else:
            _add_row(result, item, number, default_max_papers=default_max_papers)
    return result


def _longest(value: Any) -> int:
    if isinstance(value, list):
        return max((_longest(item) for item in value), default=0)
    return len(value) if isinstance(value, str) else 0


def _invalid(result: CsvImport, number: int, problem: str) -> None:
    result.errors.append(f"{result.unit} {number}: {problem}")
    result.invalid_rows += 1


def _add_row(result: CsvImport, row: Mapping[str, Any], number: int, *, default_max_papers: int) -> None:
    try:
        subscriber = row_to_subscriber(row, default_max_papers=default_max_papers)
    except InvalidInput as exc:
        _invalid(result, number, str(exc))
        return
    if subscriber.email in result.lines:
        _invalid(result, number, f"{subscriber.email} already appears on {result.unit} {result.lines[subscriber.email]}")
        return
    result.lines[subscriber.email] = number
    result.subscribers.append(subscriber)


# --- writing -------------------------------------------------------------------------------------


def _number(value: float) -> str:
    """A float as short as it reads back exactly: 2 rather than 2.0, 0.25, 3.3333333333333335."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _topic(topic: Topic) -> str:
    # A phrase holding "^" always carries its weight, or reading it back would take its tail for one.
    return topic.phrase if topic.weight == 1 and "^" not in topic.phrase else f"{topic.phrase}^{_number(topic.weight)}"


def subscriber_row(subscriber: NewSubscriber) -> dict[str, Any]:
    """One subscriber as the import reads it, in ``COLUMNS`` order (lists as lists, numbers as numbers)."""
    prefs = subscriber.preferences
    return {
        "email": subscriber.email, "topics": [_topic(t) for t in prefs.topics], "exclude": list(prefs.exclude),
        "categories": list(prefs.categories), "authors": list(prefs.authors), "describe": prefs.describe,
        "timezone": subscriber.timezone, "hour": subscriber.send_hour, "frequency": subscriber.frequency,
        "max_papers": subscriber.max_papers, "minute": subscriber.send_minute,
        "weekday": validate.WEEKDAYS[subscriber.send_weekday], "seeds": list(prefs.seed_papers),
        "min_score": prefs.min_score, "status": subscriber.status,
    }


def check_exportable(subscriber: NewSubscriber) -> NewSubscriber:
    """``subscriber`` if an export writes them as a row the import reads back; else what is too long.

    The CLI took a 20,000-character topic or 3,000 topics, which the export wrote and the import then refused."""
    long = [name for name, value in subscriber_row(subscriber).items()
            if len(join_items(value) if isinstance(value, list) else str(value or "")) > MAX_FIELD_CHARS]
    if long:
        raise InvalidInput(f"{' and '.join(long)} longer than {MAX_FIELD_CHARS:,} characters in all (as an export writes "
                           f"{'them' if len(long) > 1 else 'it'}): shorten {'them' if len(long) > 1 else 'it'}")
    return subscriber


def write_subscribers(subscribers: Iterable[NewSubscriber], out: TextIO, *, fmt: str = "csv") -> int:
    """Write ``subscribers`` in the import format (``csv`` or ``json``); returns how many."""
    rows = [subscriber_row(s) for s in subscribers]
    if fmt == "json":
        out.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return len(rows)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([guarded(join_items(row[name]) if name in LISTS else "" if row[name] is None
                                 else _number(row[name]) if isinstance(row[name], float) else row[name]) for name in COLUMNS])
    return len(rows)
