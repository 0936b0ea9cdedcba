"""The schedule in subscribers' own time: examples on the days that go wrong, then properties over
many zones and dates 2020–2035, aimed at the clock changes of each zone."""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from newsletter import schedule as schedule_module
from newsletter.errors import InvalidInput
from newsletter.schedule import (
    DueIssue,
    Frequency,
    Schedule,
    candidate_window,
    due_issue,
    end_of_local_day,
    issue_for,
    local_date,
    next_send_at,
    send_moment,
)

UTC = dt.UTC
FIRST_DAY, LAST_DAY = dt.date(2020, 1, 1), dt.date(2035, 12, 31)
SECOND = dt.timedelta(seconds=1)
MICROSECOND = dt.timedelta(microseconds=1)
# The named ones, half-hour and 45-minute zones, 30-minute DST (Lord Howe), clocks that skip or repeat
# midnight (Havana, Beirut, Cairo, Santiago, Azores) and Ramadan DST (Casablanca).
TRICKY_ZONES = (
    "Asia/Kolkata", "Pacific/Chatham", "Europe/Berlin", "America/New_York", "America/Los_Angeles", "Europe/London",
    "Asia/Kathmandu", "America/St_Johns", "Australia/Adelaide", "Australia/Lord_Howe", "Pacific/Auckland",
    "America/Havana", "Asia/Beirut", "Africa/Cairo", "America/Santiago", "Atlantic/Azores", "Africa/Casablanca", "UTC",
    "America/Nuuk",  # jumps from 23:00 to 00:00 one Saturday each March: the rest of that day never happens
)
ALL_ZONES = tuple(sorted(zoneinfo.available_timezones()))
PROPERTY = settings(max_examples=250, deadline=None)


def at(timezone: str, year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> dt.datetime:
    """A local wall time (its first occurrence) as a UTC instant, for writing examples."""
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=zoneinfo.ZoneInfo(timezone)).astimezone(UTC)


def wall_of(timezone: str, instant: dt.datetime) -> dt.datetime:
    return instant.astimezone(zoneinfo.ZoneInfo(timezone)).replace(tzinfo=None)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- examples ------------------------------------------------------------------------------------


def test_half_hour_and_45_minute_zones() -> None:
    assert send_moment(Schedule("Asia/Kolkata", 7), dt.date(2026, 3, 10)) == utc(2026, 3, 10, 1, 30)
    assert send_moment(Schedule("Asia/Kolkata", 3, 15), dt.date(2026, 3, 10)) == utc(2026, 3, 9, 21, 45)
    chatham = Schedule("Pacific/Chatham", 7)
    assert send_moment(chatham, dt.date(2026, 1, 15)) == utc(2026, 1, 14, 17, 15)  # +13:45 in the southern summer
    assert send_moment(chatham, dt.date(2026, 7, 15)) == utc(2026, 7, 14, 18, 15)  # +12:45 in winter


def test_chatham_spring_forward_sends_at_the_first_valid_minute() -> None:
    # 2026-09-27: 02:45 becomes 03:45 (+12:45 → +13:45).
    moment = send_moment(Schedule("Pacific/Chatham", 3), dt.date(2026, 9, 27))
    assert moment == utc(2026, 9, 26, 14, 0)
    assert wall_of("Pacific/Chatham", moment) == dt.datetime(2026, 9, 27, 3, 45)


@pytest.mark.parametrize(
    ("timezone", "day", "hour", "minute", "expected_wall"),
    [
        ("Europe/Berlin", dt.date(2026, 3, 29), 2, 30, dt.datetime(2026, 3, 29, 3, 0)),
        ("Europe/Berlin", dt.date(2026, 3, 29), 2, 0, dt.datetime(2026, 3, 29, 3, 0)),
        ("America/New_York", dt.date(2026, 3, 8), 2, 30, dt.datetime(2026, 3, 8, 3, 0)),
        ("America/New_York", dt.date(2026, 3, 8), 2, 59, dt.datetime(2026, 3, 8, 3, 0)),
        ("America/Havana", dt.date(2026, 3, 8), 0, 30, dt.datetime(2026, 3, 8, 1, 0)),  # midnight is skipped
    ],
)
def test_spring_forward_moves_a_skipped_wall_time_to_the_first_valid_minute(
    timezone: str, day: dt.date, hour: int, minute: int, expected_wall: dt.datetime
) -> None:
    moment = send_moment(Schedule(timezone, hour, minute), day)
    assert moment is not None and wall_of(timezone, moment) == expected_wall


@pytest.mark.parametrize(
    ("timezone", "day", "hour", "minute", "first", "second"),
    [
        ("Europe/Berlin", dt.date(2026, 10, 25), 2, 30, utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30)),
        ("America/New_York", dt.date(2026, 11, 1), 1, 30, utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 30)),
    ],
)
def test_fall_back_sends_once_at_the_first_occurrence(
    timezone: str, day: dt.date, hour: int, minute: int, first: dt.datetime, second: dt.datetime
) -> None:
    plan = Schedule(timezone, hour, minute)
    assert send_moment(plan, day) == first
    following = next_send_at(plan, first)
    assert following > second and local_date(timezone, following) == day + dt.timedelta(days=1)
    assert next_send_at(plan, first - MICROSECOND) == first


def test_days_around_the_clock_changes_are_23_and_25_hours_long() -> None:
    def length(timezone: str, day: dt.date) -> dt.timedelta:
        return end_of_local_day(timezone, day) - end_of_local_day(timezone, day - dt.timedelta(days=1))

    assert length("Europe/Berlin", dt.date(2026, 3, 29)) == length("America/New_York", dt.date(2026, 3, 8)) == dt.timedelta(hours=23)
    assert length("Europe/Berlin", dt.date(2026, 10, 25)) == length("America/New_York", dt.date(2026, 11, 1)) == dt.timedelta(hours=25)
    assert end_of_local_day("America/Havana", dt.date(2026, 3, 7)) == at("America/Havana", 2026, 3, 8, 1, 0)  # no 00:00 that day


def test_no_send_on_a_day_whose_rest_the_clocks_skip_and_its_papers_go_to_the_next() -> None:
    # America/Nuuk, Saturday 2026-03-28: 23:00 -02 is followed by 00:00 -01 on the 29th.
    daily = Schedule("America/Nuuk", 23, 30)
    assert send_moment(daily, dt.date(2026, 3, 28)) is None
    friday = send_moment(daily, dt.date(2026, 3, 27))
    assert friday is not None and next_send_at(daily, friday) == at("America/Nuuk", 2026, 3, 29, 23, 30)
    assert candidate_window(daily, dt.date(2026, 3, 29), daily_days=1)[0] == friday
    saturdays = Schedule("America/Nuuk", 23, 30, frequency=Frequency.WEEKLY, weekday=5)
    assert next_send_at(saturdays, friday) == at("America/Nuuk", 2026, 4, 4, 23, 30)
    assert candidate_window(saturdays, dt.date(2026, 4, 4), daily_days=1)[0] == at("America/Nuuk", 2026, 3, 21, 23, 30)


def test_weekdays_skip_saturday_and_sunday() -> None:
    plan = Schedule("Europe/Berlin", 7, frequency=Frequency.WEEKDAYS)
    friday = send_moment(plan, dt.date(2026, 3, 13))
    assert friday == utc(2026, 3, 13, 6, 0)
    assert send_moment(plan, dt.date(2026, 3, 14)) is None and send_moment(plan, dt.date(2026, 3, 15)) is None
    assert next_send_at(plan, friday) == utc(2026, 3, 16, 6, 0)
    assert due_issue(plan, utc(2026, 3, 14, 12, 0)) is None


def test_weekly_on_the_chosen_weekday_monday_by_default() -> None:
    assert Schedule("UTC", 7, frequency=Frequency.WEEKLY).weekday == 0
    wednesdays = Schedule("America/New_York", 8, 30, frequency=Frequency.WEEKLY, weekday=2)
    moment = next_send_at(wednesdays, utc(2026, 3, 5, 0, 0))  # a Thursday
    assert wall_of("America/New_York", moment) == dt.datetime(2026, 3, 11, 8, 30)
    assert next_send_at(wednesdays, moment) - moment == dt.timedelta(days=7)
    assert send_moment(wednesdays, dt.date(2026, 3, 12)) is None


def test_a_digest_is_due_from_its_send_moment_until_the_end_of_the_local_day() -> None:
    plan = Schedule("Europe/Berlin", 7)
    assert due_issue(plan, at("Europe/Berlin", 2026, 3, 10, 6, 59)) is None
    expected = DueIssue(dt.date(2026, 3, 10), utc(2026, 3, 10, 6, 0), utc(2026, 3, 10, 23, 0))
    assert due_issue(plan, at("Europe/Berlin", 2026, 3, 10, 7, 0)) == expected
    assert due_issue(plan, at("Europe/Berlin", 2026, 3, 10, 23, 59, 59)) == expected
    assert due_issue(plan, at("Europe/Berlin", 2026, 3, 11, 0, 0)) is None  # missed from here on
    assert issue_for(plan, utc(2026, 3, 10, 6, 0)) == expected


def test_the_issue_date_is_the_local_date_not_the_utc_one() -> None:
    issue = due_issue(Schedule("Pacific/Chatham", 6), utc(2026, 7, 14, 18, 0))  # 06:45 on the 15th there
    assert issue is not None and issue.issue_date == dt.date(2026, 7, 15)


def test_candidate_windows_span_weekends_and_weeks() -> None:
    weekdays = Schedule("Europe/Berlin", 7, frequency=Frequency.WEEKDAYS)
    assert candidate_window(weekdays, dt.date(2026, 3, 16), daily_days=1) == (utc(2026, 3, 13, 6, 0), utc(2026, 3, 16, 6, 0))
    assert candidate_window(weekdays, dt.date(2026, 3, 17), daily_days=1) == (utc(2026, 3, 16, 6, 0), utc(2026, 3, 17, 6, 0))
    weekly = Schedule("Europe/Berlin", 7, frequency=Frequency.WEEKLY)
    assert candidate_window(weekly, dt.date(2026, 3, 30), daily_days=3) == (utc(2026, 3, 23, 6, 0), utc(2026, 3, 30, 5, 0))
    assert candidate_window(weekly, dt.date(2026, 3, 30), daily_days=10)[0] == utc(2026, 3, 20, 6, 0)
    with pytest.raises(InvalidInput, match="2026-03-31 is not a send day of a weekly digest"):
        candidate_window(weekly, dt.date(2026, 3, 31), daily_days=3)


def test_papers_of_missed_digests_roll_into_the_next_one() -> None:
    plan = Schedule("UTC", 7)
    last_sent = utc(2026, 3, 6, 7, 0)  # the 7th to the 9th were missed
    assert candidate_window(plan, dt.date(2026, 3, 10), daily_days=1, last_sent=last_sent)[0] == last_sent
    assert candidate_window(plan, dt.date(2026, 3, 10), daily_days=3, last_sent=utc(2026, 3, 9, 7, 0))[0] == utc(2026, 3, 7, 7, 0)
    assert candidate_window(plan, dt.date(2026, 3, 10), daily_days=1, last_sent=utc(2025, 1, 1))[0] == utc(2026, 2, 7, 7, 0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"hour": 24}, "send hour 24 is out of range: use 0 to 23 (local time)"),
        ({"minute": 60}, "send minute 60 is out of range: use 0 to 59"),
        ({"weekday": 7}, "weekday 7 is out of range: use 0 to 6 (0 is Monday, 6 is Sunday)"),
        ({"frequency": "monthly"}, "unknown frequency 'monthly': use daily, weekdays or weekly"),
    ],
)
def test_invalid_schedules_are_refused_with_one_line(arguments: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"timezone": "UTC", "hour": 7} | arguments
    with pytest.raises(InvalidInput) as error:
        Schedule(**fields)  # type: ignore[arg-type]
    assert message in str(error.value) and "\n" not in str(error.value)


def test_frequency_may_be_given_as_text_and_naive_datetimes_are_refused() -> None:
    assert Schedule("UTC", 7, frequency="weekdays").frequency is Frequency.WEEKDAYS  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no time zone"):
        next_send_at(Schedule("UTC", 7), dt.datetime(2026, 3, 10))


def test_the_module_is_pure() -> None:
    source = Path(schedule_module.__file__).read_text()
    assert ".now(" not in source and "utcnow" not in source and "import time\n" not in source
    imported = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert not {"sqlalchemy", "newsletter.db", "httpx"} & imported


# --- properties ----------------------------------------------------------------------------------


@functools.cache
def clock_changes(timezone: str) -> tuple[dt.datetime, ...]:
    """The UTC instants the zone's clocks change in 2020–2035 (weekly scan, then bisection)."""
    zone, changes = zoneinfo.ZoneInfo(timezone), []
    start = dt.datetime.combine(FIRST_DAY, dt.time(), UTC) - dt.timedelta(days=7)
    while start.date() <= LAST_DAY:
        low, high = int(start.timestamp()), int(start.timestamp()) + 7 * 86_400
        offset = start.astimezone(zone).utcoffset()
        if offset != dt.datetime.fromtimestamp(high, zone).utcoffset():
            while high - low > 1:  # tzdata changes on whole seconds
                middle = (low + high) // 2
                low, high = (middle, high) if dt.datetime.fromtimestamp(middle, zone).utcoffset() == offset else (low, middle)
            changes.append(dt.datetime.fromtimestamp(high, UTC))
        start += dt.timedelta(days=7)
    return tuple(changes)


zones = st.one_of(st.sampled_from(TRICKY_ZONES), st.sampled_from(ALL_ZONES))


@st.composite
def local_walls(draw: st.DrawFn, timezone: str) -> dt.datetime:
    """A naive local wall time on a whole minute: any in 2020–2035, or around one of the zone's clock
    changes, from a quarter of an hour before the wall times it skips or repeats to well after."""
    changes = clock_changes(timezone)
    if changes and draw(st.integers(0, 3)) > 0:  # three times in four near a clock change
        change = draw(st.sampled_from(changes))
        first_affected = min(wall_of(timezone, change), wall_of(timezone, change - SECOND) + SECOND)
        return first_affected + dt.timedelta(minutes=draw(st.integers(-15, 75)))
    day = draw(st.dates(FIRST_DAY, LAST_DAY))
    return dt.datetime.combine(day, dt.time(draw(st.integers(0, 23)), draw(st.integers(0, 59))))


@st.composite
def schedules_and_days(draw: st.DrawFn, frequencies: tuple[Frequency, ...] = tuple(Frequency)) -> tuple[Schedule, dt.date]:
    timezone = draw(zones)
    wall = draw(local_walls(timezone))
    plan = Schedule(timezone, wall.hour, wall.minute, draw(st.sampled_from(frequencies)), draw(st.integers(0, 6)))
    return plan, wall.date()


def is_send_day(plan: Schedule, day: dt.date) -> bool:
    return {Frequency.DAILY: True, Frequency.WEEKDAYS: day.weekday() < 5, Frequency.WEEKLY: day.weekday() == plan.weekday}[plan.frequency]


def occurrences(plan: Schedule, day: dt.date) -> list[dt.datetime]:
    """The UTC instants (zero, one or two) at which the zone's clocks read the schedule's wall time on ``day``."""
    wall = dt.datetime.combine(day, plan.wall_time)
    found = {wall.replace(tzinfo=plan.zone, fold=fold).astimezone(UTC) for fold in (0, 1)}
    return sorted(instant for instant in found if wall_of(plan.timezone, instant) == wall)


def rest_of_day_skipped(plan: Schedule, day: dt.date) -> bool:
    return wall_of(plan.timezone, end_of_local_day(plan.timezone, day) - SECOND) < dt.datetime.combine(day, plan.wall_time)


def check_send_moment(plan: Schedule, day: dt.date) -> None:
    """The requested wall time when the clocks read it (the first time, in a fold), else the first
    valid minute after it that day, else (the clocks skip the rest of the day) none."""
    moment = send_moment(plan, day)
    requested = dt.datetime.combine(day, plan.wall_time)
    if rest_of_day_skipped(plan, day):
        assert moment is None
        return
    assert moment is not None and moment.tzinfo is UTC
    wall = wall_of(plan.timezone, moment)
    if existing := occurrences(plan, day):
        assert moment == existing[0]  # the first of two in a fold
    else:
        assert wall > requested and wall.second == 0 and wall.date() == day
        assert wall_of(plan.timezone, moment - SECOND) < requested  # nothing valid in between


@PROPERTY
@given(schedules_and_days(frequencies=(Frequency.DAILY,)))
def test_the_send_moment_is_the_wall_time_or_the_first_valid_minute_after_it(plan_and_day: tuple[Schedule, dt.date]) -> None:
    plan, day = plan_and_day
    event(f"clocks read the wall time {len(occurrences(plan, day))} times that day")
    check_send_moment(plan, day)


@pytest.mark.parametrize(
    "timezone", ["Europe/Berlin", "America/New_York", "Pacific/Chatham", "Australia/Lord_Howe", "America/Havana", "America/Nuuk"]
)
def test_every_clock_change_2020_2035_every_quarter_hour_around_it(timezone: str) -> None:
    seen = set()
    for change in clock_changes(timezone):
        before = wall_of(timezone, change - SECOND).replace(second=0)
        for quarter in range(-6, 7):
            wall = before + dt.timedelta(minutes=15 * quarter)
            plan = Schedule(timezone, wall.hour, wall.minute)
            check_send_moment(plan, wall.date())
            seen.add(len(occurrences(plan, wall.date())))
    assert seen == {0, 1, 2}  # skipped, ordinary and repeated wall times all checked


@PROPERTY
@given(schedules_and_days())
def test_one_send_moment_on_each_send_day_and_none_on_other_days(plan_and_day: tuple[Schedule, dt.date]) -> None:
    plan, day = plan_and_day
    moment = send_moment(plan, day)
    assert (moment is not None) == (is_send_day(plan, day) and not rest_of_day_skipped(plan, day))
    if moment is not None:
        assert local_date(plan.timezone, moment) == day
        assert end_of_local_day(plan.timezone, day - dt.timedelta(days=1)) <= moment < end_of_local_day(plan.timezone, day)


@settings(max_examples=120, deadline=None)
@given(schedules_and_days(), st.integers(-36 * 3600, 36 * 3600))
def test_walking_next_send_at_visits_every_send_day_once_in_order(plan_and_day: tuple[Schedule, dt.date], shift_s: int) -> None:
    plan, day = plan_and_day
    start = dt.datetime.combine(day, dt.time(12), plan.zone).astimezone(UTC) + dt.timedelta(seconds=shift_s)
    walked, moment = [], start
    for _ in range(6):
        moment = next_send_at(plan, moment)
        walked.append(moment)
    first_day = local_date(plan.timezone, start) - dt.timedelta(days=1)
    calendar = (first_day + dt.timedelta(days=n) for n in range(60))
    expected = [m for d in calendar if is_send_day(plan, d) and (m := send_moment(plan, d)) is not None and m > start][:6]
    assert walked == expected
    assert [local_date(plan.timezone, m) for m in walked] == sorted({local_date(plan.timezone, m) for m in walked})


@PROPERTY
@given(schedules_and_days(), st.one_of(st.sampled_from([0, -1]), st.integers(-3 * 3600, 27 * 3600)), st.sampled_from([0, -1]))
def test_due_exactly_from_the_send_moment_to_the_end_of_the_local_day(
    plan_and_day: tuple[Schedule, dt.date], shift_s: int, shift_us: int
) -> None:
    plan, day = plan_and_day
    anchor = send_moment(plan, day) or end_of_local_day(plan.timezone, day - dt.timedelta(days=1))
    now = anchor + dt.timedelta(seconds=shift_s, microseconds=shift_us)
    today = now.astimezone(plan.zone).date()
    moment, day_end = send_moment(plan, today), end_of_local_day(plan.timezone, today)
    issue = due_issue(plan, now)
    assert (issue is not None) == (moment is not None and moment <= now < day_end)
    if issue is not None:
        assert moment is not None and issue == DueIssue(today, moment, day_end)


@PROPERTY
@given(zones.flatmap(lambda timezone: st.tuples(st.just(timezone), local_walls(timezone))))
def test_the_end_of_a_local_day_is_the_first_instant_of_the_next(zone_and_wall: tuple[str, dt.datetime]) -> None:
    timezone, wall = zone_and_wall
    day_end = end_of_local_day(timezone, wall.date())
    assert local_date(timezone, day_end) == wall.date() + dt.timedelta(days=1)
    assert local_date(timezone, day_end - MICROSECOND) == wall.date()


@PROPERTY
@given(schedules_and_days(), st.integers(1, 7), st.integers(-36 * 3600, 36 * 3600))
def test_candidate_windows_end_at_the_send_moment_and_leave_no_gap(
    plan_and_day: tuple[Schedule, dt.date], daily_days: int, shift_s: int
) -> None:
    plan, day = plan_and_day
    previous = next_send_at(plan, dt.datetime.combine(day, dt.time(12), plan.zone) + dt.timedelta(seconds=shift_s))
    current = next_send_at(plan, previous)
    issue_date = local_date(plan.timezone, current)
    assert candidate_window(plan, issue_date, daily_days=1) == (previous, current)  # consecutive windows tile
    start, end = candidate_window(plan, issue_date, daily_days=daily_days)
    assert end == current and start <= previous
    if plan.frequency is Frequency.DAILY and (earlier := send_moment(plan, issue_date - dt.timedelta(days=daily_days))):
        assert start == min(earlier, previous)
