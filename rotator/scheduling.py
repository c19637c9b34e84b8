"""Schedules: parse ``"0 */6 * * *"`` / ``"every 90m"`` and drive them with APScheduler 3.x.

This is the only module that imports APScheduler. Jobs here do nothing but tell the
service that an entry is due (``on_due(entry_id)``); the service decides what a
rotation is, merges a due rotation into one still running and reschedules
``every`` entries from their last success.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
from collections.abc import Callable
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from rotator.durations import parse_duration

UTC = dt.UTC


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A parsed schedule: a 5-field cron expression, or ``every <duration>``."""

    text: str
    every: float | None = None  # seconds between rotations for "every D"; None for cron

    @property
    def is_cron(self) -> bool:
        """Tell whether this schedule is a cron expression."""
        return self.every is None

    def __str__(self) -> str:
        return self.text


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule string; raise ``ValueError`` with a user-facing message."""
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
        return Schedule(text=stripped, every=seconds)
    if len(stripped.split(" ")) != 5:
        raise ValueError(
            f"{text!r} is not a valid cron expression (it needs 5 fields: minute hour "
            "day-of-month month day-of-week), nor 'every <duration>'"
        )
    try:
        _cron_trigger(Schedule(text=stripped), UTC)
    except (ValueError, TypeError, KeyError, IndexError):
        raise ValueError(f"{text!r} is not a valid cron expression") from None
    return Schedule(text=stripped)


_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _cron_day(token: str) -> int:
    """Return the standard cron number (0 = Sunday) of one day-of-week token."""
    name = token.lower()[:3]
    if name in _DAY_NAMES:
        return _DAY_NAMES.index(name)
    number = int(token)
    if not 0 <= number <= 7:
        raise ValueError(token)
    return number % 7


def _standard_day_of_week(field: str) -> str:
    """Translate a crontab day-of-week field into APScheduler day names.

    APScheduler 3.x counts 0 as Monday, standard cron counts 0 (and 7) as Sunday;
    expanding every item into names keeps ``0 0 * * 0`` a Sunday and makes
    wrapping ranges such as ``fri-mon`` work.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for item in field.split(","):
        span, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(item)
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            start, end = span.split("-", 1)
            first, last = _cron_day(start), _cron_day(end)
            if end.strip() == "7":
                last = 7
            if last < first:
                last += 7
        else:
            first = last = _cron_day(span)
        days.update(day % 7 for day in range(first, last + 1, step))
    return ",".join(_DAY_NAMES[day] for day in sorted(days))


def _is_repeated_wall_time(when: dt.datetime) -> bool:
    """Tell whether a local time is the second pass of a wall-clock time (autumn DST)."""
    return when.fold == 1 and when.replace(fold=0).utcoffset() != when.utcoffset()


class _OncePerWallTimeCronTrigger(CronTrigger):  # type: ignore[misc]
    """A CronTrigger that fires a repeated wall-clock time once, like crontab does.

    Entries with the same schedule share one trigger (``_cron_trigger`` is cached), so
    it remembers a few answers: the first fire at or after ``now`` found for ``since``
    is the answer for every ``now`` between ``since`` and that fire. Scheduling 10,000
    entries then costs one search, not 10,000.
    """

    def get_next_fire_time(self, previous_fire_time, now):  # type: ignore[no-untyped-def]
        if previous_fire_time is None:
            for since, known in getattr(self, "_known", ()):
                if since <= now and (known is None or now <= known):
                    return known
        fire = super().get_next_fire_time(previous_fire_time, now)
        while fire is not None and _is_repeated_wall_time(fire):
            fire = super().get_next_fire_time(
                fire, fire.astimezone(UTC) + dt.timedelta(microseconds=1)
            )
        if previous_fire_time is None:
            self._known = [(now, fire), *getattr(self, "_known", ())[:3]]
        return fire


@functools.lru_cache(maxsize=1024)
def _cron_trigger(schedule: Schedule, timezone: ZoneInfo | dt.tzinfo) -> CronTrigger | OrTrigger:
    minute, hour, day, month, day_of_week = schedule.text.split(" ")

    def trigger(day: str, day_of_week: str) -> CronTrigger:
        return _OncePerWallTimeCronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_standard_day_of_week(day_of_week),
            timezone=timezone,
        )

    if day != "*" and day_of_week != "*":
        # Crontab fires when EITHER day field matches if both are restricted
        # ("0 9 1 * mon": the 1st and every Monday); APScheduler would need both.
        return OrTrigger([trigger(day, "*"), trigger("*", day_of_week)])
    return trigger(day, day_of_week)


def cron_fire_times(
    schedule: Schedule, timezone: ZoneInfo, after: dt.datetime, count: int
) -> list[dt.datetime]:
    """Return the next ``count`` fire times of a cron schedule strictly after ``after``."""
    trigger = _cron_trigger(schedule, timezone)
    times: list[dt.datetime] = []
    previous: dt.datetime | None = None
    # Step in UTC: wall-clock arithmetic on a fold=1 time jumps back an hour.
    now = after.astimezone(UTC) + dt.timedelta(microseconds=1)
    while len(times) < count:
        fire: dt.datetime | None = trigger.get_next_fire_time(previous, now)
        if fire is None:
            break
        times.append(fire)
        previous = fire
        now = fire.astimezone(UTC) + dt.timedelta(microseconds=1)
    return times


def cron_missed_since(
    schedule: Schedule, timezone: ZoneInfo, since: dt.datetime, now: dt.datetime
) -> bool:
    """Tell whether a cron time fell in ``(since, now]`` (a rotation missed while down)."""
    upcoming = cron_fire_times(schedule, timezone, since, 1)
    return bool(upcoming) and upcoming[0] <= now


class RotationScheduler:
    """Fire ``on_due(entry_id)`` on the event loop at each entry's time."""

    def __init__(
        self,
        on_due: Callable[[str], None],
        on_missed: Callable[[str, str], None] | None = None,
    ) -> None:
        self._on_due = on_due
        self._on_missed = on_missed
        # Explicit defaults (pitfalls): coalesce missed runs into one, never drop a
        # late run because the loop was busy, one job instance per entry.
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
        )
        self._scheduler.add_listener(self._job_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    def start(self) -> None:
        """Start firing jobs; must be called with the event loop running."""
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop firing jobs (our jobs do not run long, so nothing is waited for)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def schedule_cron(self, entry_id: str, schedule: Schedule, timezone: ZoneInfo) -> None:
        """Fire ``entry_id`` at every time of a cron schedule in ``timezone``."""
        self._add(entry_id, _cron_trigger(schedule, timezone))

    def schedule_at(self, entry_id: str, when: dt.datetime) -> None:
        """Fire ``entry_id`` once at ``when`` (replacing what it had)."""
        self._add(entry_id, DateTrigger(run_date=when, timezone=UTC))

    def remove(self, entry_id: str) -> None:
        """Forget an entry's job, if it has one."""
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(entry_id)

    def next_due(self, entry_id: str) -> dt.datetime | None:
        """Return when an entry fires next, or None when it has no job."""
        job = self._scheduler.get_job(entry_id)
        when: dt.datetime | None = getattr(job, "next_run_time", None) if job else None
        return when

    def _add(self, entry_id: str, trigger: CronTrigger | OrTrigger | DateTrigger) -> None:
        self._scheduler.add_job(
            self._fire, trigger, args=[entry_id], id=entry_id, replace_existing=True
        )

    async def _fire(self, entry_id: str) -> None:
        # A coroutine, so APScheduler's asyncio executor runs it on the loop itself
        # rather than in a worker thread.
        self._on_due(entry_id)

    def _job_event(self, event: JobExecutionEvent) -> None:
        if self._on_missed is not None:
            kind = "missed" if event.code == EVENT_JOB_MISSED else "max_instances"
            self._on_missed(str(event.job_id), kind)
