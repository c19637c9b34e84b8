"""Schedules as data: cronie's crontab grammar, cron(8)'s fire instants, ``every D``.

No scheduler here (APScheduler lives in ``scheduling``): the config validates schedules
with this module, and the daemon, ``plan``, ``status`` and the catch-up at start all
take their instants from :func:`next_fire` below, so they cannot disagree.

The rules are cronie's (``crontab(5)``, ``cron(8)`` and its ``src/cron.c``), read in the
entry's time zone:

- A job is *wildcard* when its minute or hour field starts with ``*``, else *fixed-time*.
- Spring forward: a fixed-time job whose wall time was skipped runs once, right after
  the jump; wildcard jobs have no runs in the missing interval.
- Fall back: fixed-time jobs run once (the first pass); wildcard jobs run in both passes.
- Day fields: when both are restricted and neither starts with ``*``, either may match;
  otherwise both must (``*/2`` counts as starting with ``*``).
- cron.c sorts clock jumps by size: one of 5 minutes to 3 hours is a DST change as
  above; a smaller forward jump runs every job of each missed minute; a jump of 3 hours
  or more is "the clock changed", after which jobs simply run at the new wall times.

Why one module at this size: its one job is what a schedule means. The grammar, the
parsed fields and the walk over wall times to instants are one reading of cronie; the
evaluator walks the very fields the parser builds, and the counts per day and ``every D``
answer the same question, when an entry is due.
"""

from __future__ import annotations

import bisect
import calendar
import dataclasses
import datetime as dt
import functools
from collections.abc import Iterator
from zoneinfo import ZoneInfo

from rotator.durations import parse_duration

UTC = dt.UTC

MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MONTH_LONG = tuple(calendar.month_name[number] for number in range(1, 13))

# cronie's nicknames, as the bits its parser sets (entry.c), written as crontab lines.
NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# How cron.c classifies a jump of the wall clock (in minutes; see the module docstring).
_LARGE_JUMP = dt.timedelta(hours=3)
_MEDIUM_JUMP = dt.timedelta(minutes=5)
_LOOK_AHEAD = dt.timedelta(hours=4)  # wider than any DST change
_LAST_YEAR = 9999


@dataclasses.dataclass(frozen=True)
class _Field:
    """How one crontab field is read."""

    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, MONTH_NAMES),
    _Field("day-of-week", 0, 7, DAY_NAMES),
)


@dataclasses.dataclass(frozen=True)
class CronExpression:
    """A crontab time spec expanded to sets, with the flags cron(8) reads."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday ... 6 = Saturday (7 is folded into 0)
    either_day: bool  # both day fields restricted, neither starting with "*"
    wildcard: bool  # the minute or the hour field starts with "*"

    def matches_day_of(self, day: int, weekday: int) -> bool:
        """Tell whether the day fields match a day of the month and a weekday (0 = Sunday)."""
        in_days = day in self.days
        in_weekdays = weekday in self.weekdays
        return in_days or in_weekdays if self.either_day else in_days and in_weekdays

    @functools.cached_property
    def days_in_order(self) -> tuple[int, ...]:
        """Return the days of the month of the day-of-month field, in order."""
        return tuple(sorted(self.days))

    @functools.cached_property
    def times_of_day(self) -> tuple[int, ...]:
        """Return the minutes after midnight at which the job runs, in order."""
        return tuple(sorted(hour * 60 + minute for hour in self.hours for minute in self.minutes))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A parsed schedule: a 5-field cron expression (or nickname), or ``every <duration>``."""

    text: str
    every: float | None = None  # seconds between rotations for "every D"; None for cron
    cron: CronExpression | None = dataclasses.field(default=None, compare=False)

    def __str__(self) -> str:
        return self.text


# -- grammar -----------------------------------------------------------------------------


MAX_EVERY_SECONDS = 366 * 86400.0  # a yearly rotation is a cron job (`@yearly`)


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule string; raise ``ValueError`` with a user-facing message.

    Each distinct string is parsed once: an agency's 10,000 entries often share one
    schedule, and then share one (immutable) parsed value instead of 10,000 copies.
    """
    if isinstance(text, str):
        return _parse_schedule_once(text)
    return _parse_schedule(text)


@functools.lru_cache(maxsize=4096)
def _parse_schedule_once(text: str) -> Schedule:
    return _parse_schedule(text)


def _parse_schedule(text: str) -> Schedule:
    stripped = " ".join(str(text).split())
    if stripped.lower().startswith("every"):
        rest = stripped[5:].strip()
        try:
            seconds = parse_duration(rest)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a valid schedule ('every' takes a duration such as "
                "'every 90m' or 'every 30s')"
            ) from None
        if seconds <= 0:
            raise ValueError(f"{text!r} is not a valid schedule (the interval must be above zero)")
        if seconds > MAX_EVERY_SECONDS:
            # Far beyond any sane interval, and past the calendar's end once added to now.
            raise ValueError(f"{text!r} is too long an interval (at most 366d)")
        return Schedule(text=stripped, every=seconds)
    return Schedule(text=stripped, cron=parse_cron(stripped))


def parse_cron(text: str) -> CronExpression:
    """Parse a crontab time spec as cronie does; reject what cannot work, saying why."""
    stripped = " ".join(str(text).split())
    quoted = f'"{stripped}"'
    spec = stripped
    if stripped.startswith("@"):
        if stripped == "@reboot":
            raise ValueError(f"{quoted} is not a valid cron expression: @reboot is not a time")
        if stripped not in NICKNAMES:
            known = ", ".join(NICKNAMES)
            raise ValueError(f"{quoted} is not a valid cron expression (nicknames: {known})")
        spec = NICKNAMES[stripped]
    texts = spec.split(" ")
    if len(texts) != len(_FIELDS):
        raise ValueError(
            f"{quoted} is not a valid cron expression (it needs 5 fields: minute hour "
            "day-of-month month day-of-week), nor 'every <duration>'"
        )
    try:
        sets = [_parse_field(field, value) for field, value in zip(_FIELDS, texts, strict=True)]
    except ValueError as exc:
        raise ValueError(f"{quoted} is not a valid cron expression: {exc}") from None
    minute, hour, day, _month, weekday = texts
    expression = CronExpression(
        minutes=sets[0],
        hours=sets[1],
        days=sets[2],
        months=sets[3],
        weekdays=frozenset(value % 7 for value in sets[4]),
        either_day=not (day.startswith("*") or weekday.startswith("*")),
        wildcard=minute.startswith("*") or hour.startswith("*"),
    )
    reason = _never_fires_reason(expression)
    if reason is not None:
        raise ValueError(f"{quoted} never fires ({reason})")
    return expression


def _parse_field(field: _Field, text: str) -> frozenset[int]:
    """Return the values of one field (crontab(5): lists of ranges with steps)."""
    values: set[int] = set()
    for item in text.split(","):
        quoted = f'{field.name} "{item}"'
        if "~" in item:
            raise ValueError(f"{quoted}: random ranges (~) are not supported")
        span, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{quoted}: the step must be a whole number above 0")
            step = int(step_text)
        if span == "*":
            first, last = field.low, field.high
        elif "-" in span:
            start_text, _, end_text = span.partition("-")
            first, last = _value(field, start_text), _value(field, end_text)
            if field.names == DAY_NAMES and last == 0 and first > 0:
                last = 7  # cronie reads "fri-sun" (5-0) as 5-7
            if first > last:
                top = 6 if field.names == DAY_NAMES else field.high
                fixed = (
                    f"{start_text}-{_spelled(field, top, end_text)},"
                    f"{_spelled(field, field.low, start_text)}-{end_text}"
                )
                raise ValueError(
                    f"{quoted} is a reversed range, which cron never runs (write {fixed!r})"
                )
        else:
            first = last = _value(field, span)
            if slash:
                raise ValueError(
                    f"{quoted}: a step needs a range or '*' "
                    f"(write '{span}-{_spelled(field, field.high, span)}/{step}')"
                )
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _value(field: _Field, token: str) -> int:
    """Return one number or three-letter name of a field, checked against its range."""
    if token.isdigit():
        number = int(token)
        if not field.low <= number <= field.high:
            raise ValueError(f"{field.name} {number} is out of range ({field.low}-{field.high})")
        return number
    if field.names and token.lower() in field.names:
        index = field.names.index(token.lower())
        return index + field.low
    if field.names:
        names = ", ".join(field.names)
        raise ValueError(f"{field.name} {token!r} is neither a number nor one of the names {names}")
    raise ValueError(f"{field.name} {token!r} is not a number")


def _spelled(field: _Field, number: int, like: str) -> str:
    """Write a field value as a name when ``like`` was a name, else as a number."""
    if field.names and not like.isdigit():
        return field.names[(number - field.low) % len(field.names)]
    return str(number)


def _never_fires_reason(expression: CronExpression) -> str | None:
    """Return why an expression can never run, or None when it runs.

    Every minute, hour and weekday value occurs; only a day of the month that none of
    the chosen months has can make a time spec empty, and then only when the days must
    match (not "either day"). Any (month, day) that exists falls on every weekday within
    a 400-year Gregorian cycle, so a weekday never empties it further.
    """
    if expression.either_day:
        return None
    months = sorted(expression.months)
    if any(day <= _longest(month) for month in months for day in expression.days):
        return None
    names = [_MONTH_LONG[month - 1] for month in months]
    who = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    days = [_ordinal(day) for day in sorted(expression.days)]
    which = days[0] if len(days) == 1 else ", ".join(days[:-1]) + " or " + days[-1]
    return f"{who} {'has' if len(names) == 1 else 'have'} no {which}"


def _longest(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


# -- instants ----------------------------------------------------------------------------


def next_fire(
    expression: CronExpression, zone: ZoneInfo | dt.tzinfo, after: dt.datetime
) -> dt.datetime | None:
    """Return the first instant (UTC) strictly after ``after`` at which cron(8) runs the job.

    Remembered for recent questions: at start-up, thousands of entries sharing one
    expression and zone ask the same question (the same ``now``, the same last fire).
    """
    return _next_fire(expression, zone, after)


@functools.lru_cache(maxsize=256)
def _next_fire(
    expression: CronExpression, zone: ZoneInfo | dt.tzinfo, after: dt.datetime
) -> dt.datetime | None:
    """Return the first instant (UTC) strictly after ``after`` at which cron(8) runs the job.

    Wall-clock matches are walked in order; each maps to at most two instants (both
    passes of a repeated time, or the end of a skipped interval). The first instant of
    a wall time never decreases as the wall time grows, so the walk stops at the first
    one past ``after``. None when there is none before the year 10000.
    """
    after = after.astimezone(UTC)
    # After a fall-back change, earlier wall times come back: look back by its size.
    try:
        look_back = max(dt.timedelta(), _offset(zone, after) - _offset(zone, after + _LOOK_AHEAD))
    except OverflowError:
        look_back = dt.timedelta()
    local = _naive_local(zone, after)
    try:
        start = local.replace(second=0, microsecond=0) - look_back
    except OverflowError:
        start = dt.datetime.min
    best: dt.datetime | None = None
    for wall in _wall_matches(expression, start):
        try:
            first, second = _instants(expression, zone, wall)
        except OverflowError:  # a wall time whose instant is before year 1 or after 9999
            continue
        if second is not None and second > after and (best is None or second < best):
            best = second
        if first is not None and first > after:
            return first if best is None or first < best else best
    return best


def fire_times(
    expression: CronExpression, zone: ZoneInfo | dt.tzinfo, after: dt.datetime, count: int
) -> list[dt.datetime]:
    """Return the next ``count`` instants (UTC) of a cron expression strictly after ``after``."""
    times: list[dt.datetime] = []
    when: dt.datetime | None = after
    while len(times) < count and when is not None:
        when = next_fire(expression, zone, when)
        if when is not None:
            times.append(when)
    return times


def calls_per_day(expression: CronExpression, start: dt.date, days: int = 1461) -> float:
    """Return the average runs per day over ``days`` days from ``start`` (4 years: leap days).

    Counted month by month from the day fields and the times of day, without listing
    instants; DST days (one run more or less for wildcard jobs) are not singled out.
    """
    try:
        end = start + dt.timedelta(days=days)  # exclusive
        tail = 0
    except OverflowError:  # up to the calendar's last day, included
        end, tail = dt.date.max, 1
    counted = (end - start).days + tail
    matching = 0
    counts: dict[tuple[int, int, int], int] = {}  # (weekday of the 1st, first, last day)
    month_start = start.replace(day=1)
    while month_start < end:
        length = calendar.monthrange(month_start.year, month_start.month)[1]
        if month_start.month in expression.months:
            first = start.day if month_start <= start else 1
            last = min(length, (end - month_start).days + tail)
            key = ((month_start.weekday() + 1) % 7, first, last)
            if key not in counts:
                counts[key] = sum(
                    expression.matches_day_of(day, (key[0] + day - 1) % 7)
                    for day in range(first, last + 1)
                )
            matching += counts[key]
        if month_start.year == _LAST_YEAR and month_start.month == 12:
            break
        month_start += dt.timedelta(days=length)
    return matching * len(expression.times_of_day) / counted


def every_due(every: float, now: dt.datetime, *ended: dt.datetime | None) -> dt.datetime:
    """Return when an ``every`` schedule is next due: ``every`` after the latest rotation end.

    ``ended`` are the ends known (the last success, the last give-up); with none, now.
    """
    known = [when for when in ended if when is not None]
    if not known:
        return now
    return max(now, max(known) + dt.timedelta(seconds=every))


def local_date(zone: ZoneInfo | dt.tzinfo, instant: dt.datetime) -> dt.date:
    """Return the calendar date of an instant in a zone (the UTC date at the calendar's ends)."""
    return _naive_local(zone, instant).date()


def _offset(zone: ZoneInfo | dt.tzinfo, instant: dt.datetime) -> dt.timedelta:
    offset = instant.astimezone(zone).utcoffset()
    return offset if offset is not None else dt.timedelta()


def _naive_local(zone: ZoneInfo | dt.tzinfo, instant: dt.datetime) -> dt.datetime:
    try:
        return instant.astimezone(zone).replace(tzinfo=None, fold=0)
    except OverflowError:
        return instant.replace(tzinfo=None)


def _wall_matches(expression: CronExpression, start: dt.datetime) -> Iterator[dt.datetime]:
    """Yield the wall-clock minutes at or after ``start`` that match, in order."""
    times = expression.times_of_day
    days = expression.days_in_order
    year, month, first_day = start.year, start.month, start.day
    skip_before = start.hour * 60 + start.minute  # on the start day only
    while year <= _LAST_YEAR:
        if month in expression.months:
            length = calendar.monthrange(year, month)[1]
            # Both day fields must match: only the listed days of the month can.
            candidates = (
                range(first_day, length + 1)
                if expression.either_day
                else days[bisect.bisect_left(days, first_day) : bisect.bisect_right(days, length)]
            )
            weekday_of_first = (dt.date(year, month, 1).weekday() + 1) % 7
            for day in candidates:
                if expression.matches_day_of(day, (weekday_of_first + day - 1) % 7):
                    midnight = dt.datetime(year, month, day)
                    skip = skip_before if day == first_day else 0
                    for minute in times[bisect.bisect_left(times, skip) :]:
                        yield midnight + dt.timedelta(minutes=minute)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        first_day, skip_before = 1, 0


def _instants(
    expression: CronExpression, zone: ZoneInfo | dt.tzinfo, wall: dt.datetime
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Return the instants (UTC) cron(8) runs a job due at a wall time: first, second pass."""
    before = wall.replace(tzinfo=zone).utcoffset() or dt.timedelta()
    after = wall.replace(tzinfo=zone, fold=1).utcoffset() or dt.timedelta()
    first = (wall - before).replace(tzinfo=UTC)
    if before == after:
        return first, None
    if before > after:  # a repeated wall time (fall back): wildcard jobs run in both passes
        repeats = expression.wildcard or before - after > _LARGE_JUMP + dt.timedelta(minutes=1)
        return first, (wall - after).replace(tzinfo=UTC) if repeats else None
    skipped = after - before  # a skipped wall time (spring forward)
    if skipped >= _LARGE_JUMP or (expression.wildcard and skipped >= _MEDIUM_JUMP):
        return None, None
    return _jump_instant(zone, (wall - after).replace(tzinfo=UTC), first), None


def _jump_instant(zone: ZoneInfo | dt.tzinfo, low: dt.datetime, high: dt.datetime) -> dt.datetime:
    """Return the minute at which the clock jumped forward, between two instants.

    ``low`` reads with the offset before the change, ``high`` with the one after it;
    cron wakes at the first minute boundary from the change on.
    """
    before = _offset(zone, low)
    low_s, high_s = int(low.timestamp()), int(high.timestamp())
    while high_s - low_s > 1:
        middle = (low_s + high_s) // 2
        if _offset(zone, dt.datetime.fromtimestamp(middle, UTC)) == before:
            low_s = middle
        else:
            high_s = middle
    return dt.datetime.fromtimestamp(-(-high_s // 60) * 60, UTC)
