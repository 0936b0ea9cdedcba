"""Checks on what people type: email addresses, time zones, hours. Pure; raise InvalidInput."""

from __future__ import annotations

import re
import zoneinfo

from email_validator import EmailNotValidError, validate_email

from newsletter.errors import InvalidInput

FREQUENCIES = ("daily", "weekdays", "weekly")
ARXIV_CATEGORY = re.compile(r"^[a-z\-]+(\.[A-Za-z\-]+)?$")  # cs.LG, math.ST, hep-th, q-bio.NC


MAX_LOCAL_PART_BYTES = 64


def normalize_email(raw: str) -> str:
    """The address as stored: syntax-checked (no DNS look-up) and lower-cased."""
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput(f"invalid email address {raw!r}: {exc}") from None
    if len(result.local_part.encode()) > MAX_LOCAL_PART_BYTES:  # relays refuse it, so no digest would ever arrive
        raise InvalidInput(f"invalid email address {raw!r}: the part before the @ is longer than "
                           f"{MAX_LOCAL_PART_BYTES} bytes (RFC 5321)")
    return result.normalized.lower()


# Files in the zone database that are no place's zone: "localtime" is the server's own (a subscriber's hour
# would follow wherever the server is moved), "Factory" and "posixrules" are tzdata internals.
NOT_A_PLACE = frozenset({"localtime", "Factory", "posixrules"})


def check_timezone(name: str) -> str:
    try:
        if name in NOT_A_PLACE:
            raise ValueError(name)
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin or UTC") from None
    return name


def check_hour(hour: int) -> int:
    if not 0 <= hour <= 23:
        raise InvalidInput(f"send hour {hour} is out of range: use 0 to 23 (local time)")
    return hour


MAX_PAPERS = 100  # a digest's papers at most, wherever a subscriber sets it (CLI, CSV, web, email)


def check_max_papers(count: int) -> int:
    if not 1 <= count <= MAX_PAPERS:
        raise InvalidInput(f"max papers {count} is out of range: use 1 to {MAX_PAPERS}")
    return count


def check_frequency(frequency: str) -> str:
    if frequency not in FREQUENCIES:
        raise InvalidInput(f"unknown frequency {frequency!r}: use {' or '.join(FREQUENCIES)}")
    return frequency


def check_category(category: str) -> str:
    if not ARXIV_CATEGORY.match(category):
        raise InvalidInput(f"{category!r} is not an arXiv category: use names such as cs.LG or hep-th")
    return category


def check_min_score(score: float) -> float:
    if not 0 <= score <= 1000:
        raise InvalidInput(f"minimum score {score:g} is out of range: use 0 to 1000 (0 picks any on-topic paper)")
    return score


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def check_minute(minute: int) -> int:
    if not 0 <= minute <= 59:
        raise InvalidInput(f"send minute {minute} is out of range: use 0 to 59")
    return minute


def check_weekday(name: str) -> int:
    """A weekday by name (``monday``, ``mon``) or number (0 = Monday), as 0–6."""
    text = name.strip().lower()
    if text.isdigit() and 0 <= int(text) <= 6:
        return int(text)
    for number, day in enumerate(WEEKDAYS):
        if len(text) >= 3 and day.startswith(text):
            return number
    raise InvalidInput(f"unknown weekday {name!r}: use monday to sunday (or mon … sun)")


def check_weekday_given(name: str | None, *, frequency: str) -> int | None:
    """A weekday given as an option: only a weekly digest has one, so with another frequency it is an
    error rather than a setting that silently does nothing."""
    if name is None:
        return None
    if frequency != "weekly":
        raise InvalidInput(f"--weekday is for a weekly digest, and this one is {frequency}: add --frequency weekly, "
                           "or leave --weekday out")
    return check_weekday(name)
