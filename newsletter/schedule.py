"""When each subscriber's digest is due, in their own time. Pure: zoneinfo only, the clock passed in.

The rules:

- A ``Schedule`` is a wall time (``hour``:``minute``) in an IANA ``timezone`` and a frequency:
  ``daily``, ``weekdays`` (Monday to Friday) or ``weekly`` (on ``weekday``, 0 = Monday). Send days
  are dates of the subscriber's local calendar, and a digest's issue date is that local date.
- The send moment of a send day is its wall time. A wall time the clocks skip (spring forward) is
  sent at the first valid minute after it (02:30 in Berlin on 2026-03-29 → 03:00 CEST); one they
  pass twice (fall back) at its first occurrence only (fold=0). If the clocks skip the rest of the
  day too (Greenland: America/Nuuk jumps from 23:00 to 00:00 one Saturday each March), that day has
  no send moment (sending at 00:00 would give the next day two digests); its papers go to the next.
- A digest is due from its send moment until the end of that local day; one not sent by then is
  ``missed``, and its papers roll into the next digest (``candidate_window(..., last_sent=...)``).
- A digest's candidates are the papers first seen in [start, send moment): ``daily_days`` local days
  back, and always back to the previous send moment (a Monday ``weekdays`` digest spans the weekend, a
  weekly one the week), so consecutive windows leave no gap. "Never sent before" is the data layer's.

Every datetime passed in must be timezone-aware; every one returned is in UTC. The daemon stores
``next_send_at`` per subscriber and recomputes it with ``after=`` the send moment of the issue just
settled (sent, empty or missed: a long outage walks through the missed days one by one), or with
``after=now`` when a schedule is created or changed (storing ``due_issue(...).send_at`` instead when
today's digest is due and not yet sent). ``issue_for`` turns a stored moment into its issue.
"""

from __future__ import annotations

import datetime as dt
import enum
import zoneinfo
from dataclasses import dataclass

from newsletter.errors import InvalidInput
from newsletter.validate import check_timezone

SEARCH_DAYS = 15  # days searched for a send: a week twice over, as a skipped weekly send (America/Nuuk, see above) waits a week
MAX_ROLLOVER_DAYS = 31  # days back missed digests roll over: back from a long absence, a reader gets a month, not everything since
FRIDAY = 4  # dt.date.weekday(); weekdays are Monday (0) to Friday


class Frequency(enum.StrEnum):
    DAILY = "daily"
    WEEKDAYS = "weekdays"  # Monday to Friday in the subscriber's calendar
    WEEKLY = "weekly"  # on the schedule's weekday


@dataclass(frozen=True, slots=True)
class Schedule:
    """When one subscriber gets their digest. Invalid values raise ``InvalidInput`` with one line;
    ``frequency`` may be given as its string (``"weekly"``). ``weekday`` matters only for weekly."""

    timezone: str
    hour: int
    minute: int = 0
    frequency: Frequency = Frequency.DAILY
    weekday: int = 0

    def __post_init__(self) -> None:
        check_timezone(self.timezone)
        _check_range("send hour", self.hour, 0, 23, " (local time)")
        _check_range("send minute", self.minute, 0, 59)
        _check_range("weekday", self.weekday, 0, 6, " (0 is Monday, 6 is Sunday)")
        try:
            object.__setattr__(self, "frequency", Frequency(self.frequency))
        except ValueError:
            raise InvalidInput(f"unknown frequency {self.frequency!r}: use daily, weekdays or weekly") from None

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)  # ZoneInfo keeps one instance per key: cheap

    @property
    def wall_time(self) -> dt.time:
        return dt.time(self.hour, self.minute)


@dataclass(frozen=True, slots=True)
class DueIssue:
    """A digest and its deadlines: the issue date (the subscriber's local date), the send moment it
    is due from, and the end of that local day, when an unsent digest becomes ``missed`` (both UTC)."""

    issue_date: dt.date
    send_at: dt.datetime
    missed_at: dt.datetime


def is_send_day(schedule: Schedule, local_date: dt.date) -> bool:
    """Daily: every day; weekdays: Monday to Friday; weekly: the schedule's weekday."""
    if schedule.frequency is Frequency.WEEKDAYS:
        return local_date.weekday() <= FRIDAY
    if schedule.frequency is Frequency.WEEKLY:
        return local_date.weekday() == schedule.weekday
    return True


def send_moment(schedule: Schedule, local_date: dt.date) -> dt.datetime | None:
    """The UTC instant the digest of ``local_date`` is due, or None when that date is not a send day.

    The wall time's first occurrence; when the clocks skip it, the first valid minute after it; None
    when they skip the rest of that local day as well (see the module docstring).
    """
    if not is_send_day(schedule, local_date):
        return None
    moment = _resolve(schedule.zone, dt.datetime.combine(local_date, schedule.wall_time))
    return moment if moment.astimezone(schedule.zone).date() == local_date else None


def next_send_at(schedule: Schedule, after: dt.datetime) -> dt.datetime:
    """The first send moment strictly after ``after`` (UTC): what the daemon stores per subscriber.

    Strictly, so that recomputing from the send moment just settled moves on to the next send day.
    """
    day = local_date(schedule.timezone, after)  # local dates never go back (no fold spans midnight in tzdata 2020–2035)
    for offset in range(SEARCH_DAYS):
        moment = send_moment(schedule, day + dt.timedelta(days=offset))
        if moment is not None and moment > after:
            return moment
    raise RuntimeError(f"no send moment within {SEARCH_DAYS} days after {after.isoformat()} for {schedule}")


def due_issue(schedule: Schedule, now: dt.datetime) -> DueIssue | None:
    """The digest due at ``now``: the one of today's local date if now is in [send moment, end of day)."""
    moment = send_moment(schedule, local_date(schedule.timezone, now))
    if moment is None or now < moment:
        return None
    issue = issue_for(schedule, moment)
    return issue if now < issue.missed_at else None


def issue_for(schedule: Schedule, send_at: dt.datetime) -> DueIssue:
    """The issue a send moment belongs to (e.g. a stored ``next_send_at``), with its deadline."""
    issue_date = local_date(schedule.timezone, send_at)
    return DueIssue(issue_date, send_at.astimezone(dt.UTC), end_of_local_day(schedule.timezone, issue_date))


def local_date(timezone: str, at: dt.datetime) -> dt.date:
    """The date on the subscriber's calendar at the instant ``at``."""
    _require_aware(at)
    return at.astimezone(zoneinfo.ZoneInfo(timezone)).date()


def end_of_local_day(timezone: str, local_date: dt.date) -> dt.datetime:
    """The first instant (UTC) of the next local day: the first midnight, or when the clocks skip
    midnight (America/Havana, Asia/Beirut, Africa/Cairo ...), the moment they jump past it."""
    return _resolve(zoneinfo.ZoneInfo(timezone), dt.datetime.combine(local_date + dt.timedelta(days=1), dt.time()))


def candidate_window(
    schedule: Schedule, issue_date: dt.date, *, daily_days: int, last_sent: dt.datetime | None = None
) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC of the papers' first-seen times a digest considers; end is its send moment.

    Start is the send wall time ``daily_days`` local days back, or the previous send moment if that
    is further (Friday for a Monday ``weekdays`` digest, a week for weekly), so that with
    ``daily_days=1`` consecutive windows tile exactly and with more they overlap (the ledger drops
    papers already sent). ``last_sent``, the send moment of the last digest that went out, reaches
    further back when digests were missed since (at most ``MAX_ROLLOVER_DAYS``): their papers roll in.
    """
    if daily_days < 1:
        raise ValueError(f"daily_days must be at least 1, got {daily_days}")
    end = send_moment(schedule, issue_date)
    if end is None:
        raise InvalidInput(f"{issue_date} is not a send day of a {schedule.frequency} digest in {schedule.timezone}")
    days_back = max(daily_days, _days_since_previous_send(schedule, issue_date))
    start = _resolve(schedule.zone, dt.datetime.combine(issue_date - dt.timedelta(days=days_back), schedule.wall_time))
    if last_sent is not None:
        _require_aware(last_sent)
        start = min(start, max(last_sent.astimezone(dt.UTC), end - dt.timedelta(days=MAX_ROLLOVER_DAYS)))
    return start, end


def _days_since_previous_send(schedule: Schedule, issue_date: dt.date) -> int:
    earlier = (issue_date - dt.timedelta(days=days) for days in range(1, SEARCH_DAYS))
    return (issue_date - next(day for day in earlier if send_moment(schedule, day) is not None)).days


def _resolve(zone: zoneinfo.ZoneInfo, wall: dt.datetime) -> dt.datetime:
    """The first instant (UTC) the zone's clocks read ``wall``; if they skip it, the instant they jump
    past it, whose wall time is the first valid one after ``wall`` (tzdata jumps on whole minutes)."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(dt.UTC)
    if _wall(zone, first) == wall:
        return first  # fold=0 is the earlier of two occurrences
    # In a gap zoneinfo reads fold=1 with the offset after the jump and fold=0 with the one before:
    # the first lands before the jump, the second after it. Bisect on whole seconds, tzdata's resolution.
    before, after = int(wall.replace(tzinfo=zone, fold=1).timestamp()), int(first.timestamp())
    while after - before > 1:
        middle = (before + after) // 2
        if _wall(zone, dt.datetime.fromtimestamp(middle, dt.UTC)) < wall:
            before = middle
        else:
            after = middle
    return dt.datetime.fromtimestamp(after, dt.UTC)


def _wall(zone: zoneinfo.ZoneInfo, at: dt.datetime) -> dt.datetime:
    return at.astimezone(zone).replace(tzinfo=None)


def _require_aware(at: dt.datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at.isoformat()} has no time zone: pass an aware datetime (UTC)")


def _check_range(what: str, value: int, low: int, high: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{what} {value!r} is out of range: use {low} to {high}{hint}")
