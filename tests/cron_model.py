"""A model of cronie's cron(8) main loop (src/cron.c), minute by minute, for tests.

Written from cronie's source and man pages, independently of rotator's evaluator: it
wakes at every UTC minute, reads the wall clock of the zone, and classifies the jump
of the wall clock since the last minute as cron.c does (normal, small, medium = DST
begins, negative = DST ends, large). ``find_jobs`` matches a wall-clock minute.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

_EPOCH = dt.datetime(1970, 1, 1)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A crontab line already expanded to sets, with cronie's star flags."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6
    dom_star: bool
    dow_star: bool
    wild: bool  # the minute or the hour field starts with "*"

    def matches(self, wall_minute: int) -> bool:
        """Tell whether the job is due at a wall-clock minute (minutes since the epoch)."""
        t = _EPOCH + dt.timedelta(minutes=wall_minute)
        dow = (t.weekday() + 1) % 7
        if t.minute not in self.minutes or t.hour not in self.hours:
            return False
        if t.month not in self.months:
            return False
        if self.dom_star or self.dow_star:
            return t.day in self.days and dow in self.weekdays
        return t.day in self.days or dow in self.weekdays


def _wall_minute(instant: dt.datetime, zone: ZoneInfo) -> int:
    local = instant.astimezone(zone).replace(tzinfo=None)
    return int((local - _EPOCH).total_seconds() // 60)


def model_fires(
    entry: ModelEntry, zone: ZoneInfo, start: dt.datetime, end: dt.datetime
) -> list[dt.datetime]:
    """Return when cron(8) would run ``entry`` in ``(start, end]`` (start on a minute)."""
    fires: list[dt.datetime] = []
    now = start.astimezone(dt.UTC)
    virtual = _wall_minute(now, zone)
    while True:
        now += dt.timedelta(minutes=1)
        if now > end:
            return fires
        running = _wall_minute(now, zone)
        diff = running - virtual
        due = False
        if diff == 1 or diff > 180 or diff < -180:
            virtual = running
            due = entry.matches(running)
        elif diff > 5:  # DST begins: wildcard jobs now, fixed-time jobs of every minute missed
            due = entry.wild and entry.matches(running)
            while virtual < running:
                virtual += 1
                due = due or (not entry.wild and entry.matches(virtual))
        elif diff > 0:
            while virtual < running:
                virtual += 1
                due = due or entry.matches(virtual)
        else:  # DST ends: only wildcard jobs; virtual time waits until caught up
            due = entry.wild and entry.matches(running)
        if due:
            fires.append(now)
