"""Drive schedules with APScheduler 3.x: fire ``on_due(entry_id)`` at each entry's time.

This is the only module that imports APScheduler. What a schedule means (cronie's
grammar, the instants cron(8) runs a job at, ``every D``) is ``rotator.cron``; the
cron trigger here only asks it for the next instant, so the daemon fires exactly
when ``plan`` says. Jobs do nothing but tell the daemon's entries that one is due;
``rotator.entries`` decides what a rotation is, merges a due rotation into one still running and
reschedules ``every`` entries from their last rotation's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import Callable, Iterable
from zoneinfo import ZoneInfo

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.date import DateTrigger

from rotator.cron import CronExpression, Schedule, fire_times, next_fire

UTC = dt.UTC


class CronTrigger(BaseTrigger):  # type: ignore[misc]
    """An APScheduler trigger that fires when cron(8) would, DST changes included.

    APScheduler's own ``CronTrigger`` adds wall-clock differences in UTC and loses runs
    across a spring-forward change; this one takes every instant from ``rotator.cron``.
    """

    def __init__(self, expression: CronExpression, timezone: ZoneInfo | dt.tzinfo) -> None:
        self.expression = expression
        self.timezone = timezone

    def get_next_fire_time(
        self, previous_fire_time: dt.datetime | None, now: dt.datetime
    ) -> dt.datetime | None:
        """Return the next instant after the previous fire, or from ``now`` (inclusive)."""
        if previous_fire_time is not None:
            return next_fire(self.expression, self.timezone, previous_fire_time)
        return next_fire(self.expression, self.timezone, now - dt.timedelta(microseconds=1))

    def __str__(self) -> str:
        return f"cron({self.timezone})"


def _expression(schedule: Schedule) -> CronExpression:
    if schedule.cron is None:
        raise ValueError(f"{schedule.text!r} is not a cron schedule")
    return schedule.cron


def cron_fire_times(
    schedule: Schedule, timezone: ZoneInfo | dt.tzinfo, after: dt.datetime, count: int
) -> list[dt.datetime]:
    """Return the next ``count`` fire times (UTC) of a cron schedule strictly after ``after``."""
    return fire_times(_expression(schedule), timezone, after, count)


def cron_missed_since(
    schedule: Schedule, timezone: ZoneInfo | dt.tzinfo, since: dt.datetime, now: dt.datetime
) -> bool:
    """Tell whether a cron time fell in ``(since, now]`` (a rotation missed while down)."""
    upcoming = next_fire(_expression(schedule), timezone, since)
    return upcoming is not None and upcoming <= now


class RotationScheduler:
    """Fire ``on_due(entry_id)`` on the event loop at each entry's time.

    One APScheduler job per distinct schedule, not per entry: entries sharing a cron
    expression and time zone (an agency's thousands of accounts often do) share one
    job, and ``every`` entries due at the very same instant share one date job. A job
    costs a few KiB and a signature check to add; an entry in a group costs a dict slot.

    Entries due at the same instant fire in config order (``set_order``; by default the
    order they were first scheduled in), not in job-id order as APScheduler runs ties:
    each wake-up's due entries are gathered and handed on sorted by (due time, rank).
    That order is the order they queue at the pacer.
    """

    def __init__(
        self,
        on_due: Callable[[str], None],
        on_missed: Callable[[str, str], None] | None = None,
    ) -> None:
        self._on_due = on_due
        self._on_missed = on_missed
        # Explicit defaults (pitfalls): coalesce missed runs into one, never drop a
        # late run because the loop was busy, one job instance per schedule.
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
        )
        self._scheduler.add_listener(self._job_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self._scheduler.add_listener(self._job_submitted, EVENT_JOB_SUBMITTED)
        self._groups: dict[str, set[str]] = {}  # job id -> the entries it fires
        self._job_of: dict[str, str] = {}  # entry id -> its job id
        self._rank: dict[str, int] = {}  # entry id -> its place in the config
        self._due_at: dict[str, dt.datetime] = {}  # job id -> the due time being fired
        self._firing: list[tuple[dt.datetime, int, str]] = []  # this wake-up's, not handed on

    def start(self) -> None:
        """Start firing jobs; must be called with the event loop running."""
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop firing jobs (our jobs do not run long, so nothing is waited for)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def set_order(self, entry_ids: Iterable[str]) -> None:
        """Take the config's order of entries: ties in due time fire in this order."""
        self._rank = {sys.intern(entry_id): rank for rank, entry_id in enumerate(entry_ids)}

    def schedule_cron(self, entry_id: str, schedule: Schedule, timezone: ZoneInfo) -> None:
        """Fire ``entry_id`` at every time of a cron schedule in ``timezone``."""
        job_id = f"cron {schedule.text} {timezone}"
        if self._join(entry_id, job_id):
            self._scheduler.add_job(
                self._fire, CronTrigger(_expression(schedule), timezone), args=[job_id], id=job_id
            )

    def schedule_at(self, entry_id: str, when: dt.datetime) -> None:
        """Fire ``entry_id`` once at ``when`` (replacing what it had)."""
        when = when.astimezone(UTC)
        job_id = f"at {when.isoformat()}"
        if self._join(entry_id, job_id):
            trigger = DateTrigger(run_date=when, timezone=UTC)
            self._scheduler.add_job(self._fire, trigger, args=[job_id], id=job_id)

    def remove(self, entry_id: str) -> None:
        """Forget an entry's job, if it has one."""
        job_id = self._job_of.pop(entry_id, None)
        if job_id is None:
            return
        group = self._groups.get(job_id)
        if group is not None:
            group.discard(entry_id)
            if not group:  # the last entry of its schedule: the job goes too
                del self._groups[job_id]
                with contextlib.suppress(JobLookupError):
                    self._scheduler.remove_job(job_id)

    def next_due(self, entry_id: str) -> dt.datetime | None:
        """Return when an entry fires next, or None when it has no job."""
        job_id = self._job_of.get(entry_id)
        job = self._scheduler.get_job(job_id) if job_id is not None else None
        when: dt.datetime | None = getattr(job, "next_run_time", None) if job else None
        return when

    def _join(self, entry_id: str, job_id: str) -> bool:
        """Put an entry in a job's group; True when that job must be added first."""
        entry_id = sys.intern(entry_id)  # one copy of the id in every table here
        self._rank.setdefault(entry_id, len(self._rank))
        if self._job_of.get(entry_id) == job_id and self._scheduler.get_job(job_id) is not None:
            return False  # already there: its job's next time stands
        self.remove(entry_id)
        self._job_of[entry_id] = job_id
        group = self._groups.setdefault(job_id, set())
        group.add(entry_id)
        return len(group) == 1 or self._scheduler.get_job(job_id) is None

    async def _fire(self, job_id: str) -> None:
        # A coroutine, so APScheduler's asyncio executor runs it on the loop itself
        # rather than in a worker thread. Every job of one wake-up got its task in that
        # wake-up, so a callback queued now runs after all of them have reached here.
        group = self._groups.get(job_id, set())
        if job_id.startswith("at "):  # a date job fires once; APScheduler has dropped it
            self._groups.pop(job_id, None)
            for entry_id in group:
                if self._job_of.get(entry_id) == job_id:
                    del self._job_of[entry_id]
        if not self._firing:
            asyncio.get_running_loop().call_soon(self._hand_on)
        when = self._due_at.pop(job_id, dt.datetime.max.replace(tzinfo=UTC))
        last = len(self._rank)
        self._firing.extend((when, self._rank.get(entry, last), entry) for entry in group)

    def _hand_on(self) -> None:
        """Call ``on_due`` for this wake-up's entries: by due time, ties in config order."""
        firing, self._firing = self._firing, []
        firing.sort()
        for _when, _rank, entry_id in firing:
            self._on_due(entry_id)

    def _job_submitted(self, event: JobSubmissionEvent) -> None:
        # Dispatched as each due job is submitted, before its task runs: the due time.
        self._due_at[str(event.job_id)] = max(event.scheduled_run_times)

    def _job_event(self, event: JobExecutionEvent) -> None:
        if self._on_missed is not None:
            kind = "missed" if event.code == EVENT_JOB_MISSED else "max_instances"
            for entry_id in sorted(self._groups.get(str(event.job_id), ())):
                self._on_missed(entry_id, kind)
