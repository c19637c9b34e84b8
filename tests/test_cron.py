"""Tests for rotator.cron: cron(8)'s instants on every DST edge, cronie's grammar, refusals.

The expected instants in ``DST_TABLE`` are written out by hand from cron(8)'s rules
(cronie's ``src/cron.c``), never taken from the code under test:

- spring forward: a fixed-time job (neither minute nor hour starts with ``*``) whose
  wall time was skipped runs once, right after the jump; wildcard jobs have no runs in
  the missing interval;
- fall back: fixed-time jobs run once (first pass), wildcard jobs run in both passes;
- day fields: either may match only when both are restricted and neither starts with ``*``.

Zone changes used (from the tz database): America/New_York 2026-03-08 02:00→03:00 and
2026-11-01 02:00→01:00; Europe/London 2026-03-29 01:00→02:00 and 2026-10-25 02:00→01:00;
Australia/Lord_Howe (30 minutes) 2026-04-05 02:00→01:30 and 2026-10-04 02:00→02:30;
Pacific/Chatham (at :45) 2026-04-05 03:45→02:45 and 2026-09-27 02:45→03:45.
"""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
from zoneinfo import ZoneInfo

import pytest

from rotator.cron import (
    calls_per_day,
    every_due,
    fire_times,
    next_fire,
    parse_cron,
    parse_schedule,
)
from rotator.scheduling import CronTrigger, cron_missed_since
from tests.cron_model import ModelEntry, model_fires

NY, LON, LHI, CHA = "America/New_York", "Europe/London", "Australia/Lord_Howe", "Pacific/Chatham"
UTC = dt.UTC

# (zone, expression, start, the instants that follow, in the zone's wall time + offset)
DST_TABLE = [
    (
        NY,
        "30 2 * * *",
        "2026-03-07T12:00-05:00",
        ["2026-03-08T03:00-04:00", "2026-03-09T02:30-04:00", "2026-03-10T02:30-04:00"],
    ),
    (
        NY,
        "0 0 * * *",
        "2026-03-07T12:00-05:00",
        ["2026-03-08T00:00-05:00", "2026-03-09T00:00-04:00", "2026-03-10T00:00-04:00"],
    ),
    (
        NY,
        "*/15 * * * *",
        "2026-03-08T01:30-05:00",
        [
            "2026-03-08T01:45-05:00",
            "2026-03-08T03:00-04:00",
            "2026-03-08T03:15-04:00",
            "2026-03-08T03:30-04:00",
        ],
    ),
    (
        NY,
        "*/15 * * * *",
        "2026-11-01T00:50-04:00",
        [
            "2026-11-01T01:00-04:00",
            "2026-11-01T01:15-04:00",
            "2026-11-01T01:30-04:00",
            "2026-11-01T01:45-04:00",
            "2026-11-01T01:00-05:00",
            "2026-11-01T01:15-05:00",
            "2026-11-01T01:30-05:00",
            "2026-11-01T01:45-05:00",
            "2026-11-01T02:00-05:00",
            "2026-11-01T02:15-05:00",
        ],
    ),
    (
        NY,
        "30 1 * * *",
        "2026-10-31T12:00-04:00",
        ["2026-11-01T01:30-04:00", "2026-11-02T01:30-05:00"],
    ),
    (
        NY,
        "0 2 * * *",
        "2026-03-07T12:00-05:00",
        ["2026-03-08T03:00-04:00", "2026-03-09T02:00-04:00"],
    ),
    (
        NY,
        "0,30 2 * * *",
        "2026-03-08T00:00-05:00",
        ["2026-03-08T03:00-04:00", "2026-03-09T02:00-04:00", "2026-03-09T02:30-04:00"],
    ),
    (
        NY,
        "0 2,3 * * *",
        "2026-03-08T00:00-05:00",
        ["2026-03-08T03:00-04:00", "2026-03-09T02:00-04:00", "2026-03-09T03:00-04:00"],
    ),
    (
        NY,
        "* 2 * * *",
        "2026-03-08T01:58-05:00",
        ["2026-03-09T02:00-04:00", "2026-03-09T02:01-04:00", "2026-03-09T02:02-04:00"],
    ),
    (
        NY,
        "30 * * * *",
        "2026-11-01T00:45-04:00",
        [
            "2026-11-01T01:30-04:00",
            "2026-11-01T01:30-05:00",
            "2026-11-01T02:30-05:00",
            "2026-11-01T03:30-05:00",
        ],
    ),
    (
        NY,
        "0 0 */2 * 1",
        "2026-03-01T00:00-05:00",
        ["2026-03-09T00:00-04:00", "2026-03-23T00:00-04:00", "2026-04-13T00:00-04:00"],
    ),
    (
        NY,
        "0 0 1 * 1",
        "2026-03-01T00:00-05:00",
        ["2026-03-02T00:00-05:00", "2026-03-09T00:00-04:00", "2026-03-16T00:00-04:00"],
    ),
    (
        NY,
        "59 23 31 12 *",
        "2026-06-01T00:00-04:00",
        ["2026-12-31T23:59-05:00", "2027-12-31T23:59-05:00"],
    ),
    (
        NY,
        "0 0 29 2 *",
        "2026-01-01T00:00-05:00",
        ["2028-02-29T00:00-05:00", "2032-02-29T00:00-05:00"],
    ),
    (
        LON,
        "0 0 1 * *",
        "2026-03-15T00:00+00:00",
        ["2026-04-01T00:00+01:00", "2026-05-01T00:00+01:00", "2026-06-01T00:00+01:00"],
    ),
    (
        LON,
        "30 1 * * *",
        "2026-03-28T12:00+00:00",
        ["2026-03-29T02:00+01:00", "2026-03-30T01:30+01:00", "2026-03-31T01:30+01:00"],
    ),
    (
        LON,
        "*/20 * * * *",
        "2026-03-29T00:30+00:00",
        [
            "2026-03-29T00:40+00:00",
            "2026-03-29T02:00+01:00",
            "2026-03-29T02:20+01:00",
            "2026-03-29T02:40+01:00",
        ],
    ),
    (
        LON,
        "15 1 * * *",
        "2026-10-24T12:00+01:00",
        ["2026-10-25T01:15+01:00", "2026-10-26T01:15+00:00"],
    ),
    (
        LON,
        "0 * * * *",
        "2026-10-25T00:30+01:00",
        [
            "2026-10-25T01:00+01:00",
            "2026-10-25T01:00+00:00",
            "2026-10-25T02:00+00:00",
            "2026-10-25T03:00+00:00",
        ],
    ),
    (
        LON,
        "0 0 31 * *",
        "2026-03-01T00:00+00:00",
        ["2026-03-31T00:00+01:00", "2026-05-31T00:00+01:00", "2026-07-31T00:00+01:00"],
    ),
    (
        LHI,
        "15 2 * * *",
        "2026-10-03T12:00+10:30",
        ["2026-10-04T02:30+11:00", "2026-10-05T02:15+11:00", "2026-10-06T02:15+11:00"],
    ),
    (
        LHI,
        "45 2 * * *",
        "2026-10-03T12:00+10:30",
        ["2026-10-04T02:45+11:00", "2026-10-05T02:45+11:00"],
    ),
    (
        LHI,
        "*/10 * * * *",
        "2026-10-04T01:45+10:30",
        [
            "2026-10-04T01:50+10:30",
            "2026-10-04T02:30+11:00",
            "2026-10-04T02:40+11:00",
            "2026-10-04T02:50+11:00",
        ],
    ),
    (
        LHI,
        "*/10 * * * *",
        "2026-04-05T01:15+11:00",
        [
            "2026-04-05T01:20+11:00",
            "2026-04-05T01:30+11:00",
            "2026-04-05T01:40+11:00",
            "2026-04-05T01:50+11:00",
            "2026-04-05T01:30+10:30",
            "2026-04-05T01:40+10:30",
            "2026-04-05T01:50+10:30",
            "2026-04-05T02:00+10:30",
        ],
    ),
    (
        LHI,
        "40 1 * * *",
        "2026-04-04T12:00+11:00",
        ["2026-04-05T01:40+11:00", "2026-04-06T01:40+10:30"],
    ),
    (
        LHI,
        "0 0 1 1 *",
        "2026-06-01T00:00+10:30",
        ["2027-01-01T00:00+11:00", "2028-01-01T00:00+11:00", "2029-01-01T00:00+11:00"],
    ),
    (
        CHA,
        "0 3 * * *",
        "2026-09-26T12:00+12:45",
        ["2026-09-27T03:45+13:45", "2026-09-28T03:00+13:45"],
    ),
    (
        CHA,
        "50 2 * * *",
        "2026-09-26T12:00+12:45",
        ["2026-09-27T03:45+13:45", "2026-09-28T02:50+13:45"],
    ),
    (
        CHA,
        "*/30 * * * *",
        "2026-09-27T02:00+12:45",
        [
            "2026-09-27T02:30+12:45",
            "2026-09-27T04:00+13:45",
            "2026-09-27T04:30+13:45",
            "2026-09-27T05:00+13:45",
        ],
    ),
    (
        CHA,
        "0 3 * * *",
        "2026-04-04T12:00+13:45",
        ["2026-04-05T03:00+13:45", "2026-04-06T03:00+12:45"],
    ),
    (
        CHA,
        "0 * * * *",
        "2026-04-05T01:30+13:45",
        [
            "2026-04-05T02:00+13:45",
            "2026-04-05T03:00+13:45",
            "2026-04-05T03:00+12:45",
            "2026-04-05T04:00+12:45",
            "2026-04-05T05:00+12:45",
        ],
    ),
    (
        CHA,
        "45 2 * * *",
        "2026-04-04T12:00+13:45",
        ["2026-04-05T02:45+13:45", "2026-04-06T02:45+12:45"],
    ),
    (
        CHA,
        "0 3 */2 * 0",
        "2026-09-20T00:00+12:45",
        ["2026-09-27T03:45+13:45", "2026-10-11T03:00+13:45", "2026-10-25T03:00+13:45"],
    ),
    (
        LHI,
        "15 2 4 * 6",
        "2026-10-02T12:00+10:30",
        ["2026-10-03T02:15+10:30", "2026-10-04T02:30+11:00", "2026-10-10T02:15+11:00"],
    ),
]


def _instants(texts: list[str]) -> list[dt.datetime]:
    return [dt.datetime.fromisoformat(text).astimezone(UTC) for text in texts]


@pytest.mark.parametrize(("zone", "expression", "start", "expected"), DST_TABLE)
def test_instants_follow_cron8_on_dst_edges(
    zone: str, expression: str, start: str, expected: list[str]
) -> None:
    """Prove the next instants equal the ones written out by hand from cron(8)'s rules."""
    times = fire_times(
        parse_cron(expression), ZoneInfo(zone), dt.datetime.fromisoformat(start), len(expected)
    )
    assert times == _instants(expected)


@pytest.mark.parametrize(("zone", "expression", "start", "expected"), DST_TABLE)
def test_the_apscheduler_trigger_fires_the_same_instants(
    zone: str, expression: str, start: str, expected: list[str]
) -> None:
    """Prove the daemon's trigger, chained as APScheduler chains it, gives the table's instants."""
    trigger = CronTrigger(parse_cron(expression), ZoneInfo(zone))
    now = dt.datetime.fromisoformat(start).astimezone(UTC) + dt.timedelta(seconds=1)
    fires: list[dt.datetime] = []
    previous = None
    while len(fires) < len(expected):
        when = trigger.get_next_fire_time(previous, now)
        assert when is not None
        fires.append(when)
        previous = now = when
    assert fires == _instants(expected)


def test_trigger_fires_a_time_equal_to_now() -> None:
    """Prove a first fire exactly at 'now' is not skipped (APScheduler asks with no previous)."""
    trigger = CronTrigger(parse_cron("0 12 * * *"), ZoneInfo(UTC.tzname(None) or "UTC"))
    noon = dt.datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert trigger.get_next_fire_time(None, noon) == noon


@pytest.mark.parametrize(
    ("nickname", "expansion"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_nicknames_fire_like_their_expansions(nickname: str, expansion: str) -> None:
    """Prove cronie's nicknames fire exactly like the lines crontab(5) expands them to."""
    start = dt.datetime(2026, 10, 30, tzinfo=UTC)
    for zone in (ZoneInfo(NY), ZoneInfo(LHI)):
        ours = fire_times(parse_cron(nickname), zone, start, 30)
        theirs = fire_times(parse_cron(expansion), zone, start, 30)
        assert ours == theirs


def test_hourly_nickname_is_a_wildcard_job_in_the_repeated_hour() -> None:
    """Prove @hourly runs in both passes of New York's repeated 01:00 (its hour is '*')."""
    start = dt.datetime.fromisoformat("2026-11-01T00:30-04:00")
    assert fire_times(parse_cron("@hourly"), ZoneInfo(NY), start, 3) == _instants(
        ["2026-11-01T01:00-04:00", "2026-11-01T01:00-05:00", "2026-11-01T02:00-05:00"]
    )


# -- against a minute-by-minute model of cron.c -----------------------------------------

_TRANSITIONS = {
    NY: (["2026-03-08T07:00Z", "2026-11-01T06:00Z"], [0, 1, 2, 3]),
    LON: (["2026-03-29T01:00Z", "2026-10-25T01:00Z"], [0, 1, 2]),
    LHI: (["2026-04-04T15:00Z", "2026-10-03T15:30Z"], [1, 2, 3]),
    CHA: (["2026-04-04T14:00Z", "2026-09-26T14:00Z"], [2, 3, 4]),
}


def _random_field(rng: random.Random, low: int, high: int) -> tuple[str, set[int]]:
    """Return a random crontab field and the values crontab(5) gives it (read by hand)."""
    pick = rng.random()
    if pick < 0.25:
        return "*", set(range(low, high + 1))
    if pick < 0.4:
        step = rng.choice([2, 3, 5, 10, 15, 20, 30] if high == 59 else [2, 3, 4])
        return f"*/{step}", set(range(low, high + 1, step))
    first, last = sorted(rng.sample(range(low, high + 1), 2))
    if pick < 0.6:
        return str(first), {first}
    if pick < 0.8:
        return f"{first},{last}", {first, last}
    step = rng.choice([1, 2, 3])
    return f"{first}-{last}/{step}", set(range(first, last + 1, step))


def _random_entry(rng: random.Random, hours: list[int]) -> tuple[str, ModelEntry]:
    minute, minutes = _random_field(rng, 0, 59)
    if rng.random() < 0.5:  # bias towards the hours a DST change touches
        hour_value = rng.choice(hours)
        hour, hour_set = str(hour_value), {hour_value}
    else:
        hour, hour_set = _random_field(rng, 0, 23)
    day, days = ("*", set(range(1, 32))) if rng.random() < 0.6 else _random_field(rng, 1, 31)
    weekday, weekdays = ("*", set(range(7))) if rng.random() < 0.6 else _random_field(rng, 0, 6)
    entry = ModelEntry(
        minutes=frozenset(minutes),
        hours=frozenset(hour_set),
        days=frozenset(days),
        months=frozenset(range(1, 13)),
        weekdays=frozenset(weekdays),
        dom_star=day.startswith("*"),
        dow_star=weekday.startswith("*"),
        wild=minute.startswith("*") or hour.startswith("*"),
    )
    return f"{minute} {hour} {day} * {weekday}", entry


@pytest.mark.parametrize("zone", list(_TRANSITIONS))
def test_random_expressions_match_a_model_of_cron_c(zone: str) -> None:
    """Prove 6 hours around each DST change agree with a minute-by-minute cron.c model."""
    rng = random.Random(zone)
    tz = ZoneInfo(zone)
    changes, hours = _TRANSITIONS[zone]
    for change in changes:
        middle = dt.datetime.fromisoformat(change.replace("Z", "+00:00"))
        start, end = middle - dt.timedelta(hours=3), middle + dt.timedelta(hours=3)
        for _ in range(40):
            text, entry = _random_entry(rng, hours)
            expression = parse_cron(text)
            ours: list[dt.datetime] = []
            when: dt.datetime | None = start
            while (when := next_fire(expression, tz, when)) is not None and when <= end:
                ours.append(when)
            assert ours == model_fires(entry, tz, start, end), text


# -- days, rollovers, totality -----------------------------------------------------------


def test_either_day_field_matches_when_both_are_restricted() -> None:
    """Prove '0 0 30 2 mon' is accepted and runs on February's Mondays (either day)."""
    start = dt.datetime(2026, 1, 1, tzinfo=UTC)
    times = fire_times(parse_cron("0 0 30 2 mon"), UTC, start, 4)
    assert [t.date() for t in times] == [
        dt.date(2026, 2, 2),
        dt.date(2026, 2, 9),
        dt.date(2026, 2, 16),
        dt.date(2026, 2, 23),
    ]


def test_a_yearly_time_near_the_end_of_the_calendar_never_overflows() -> None:
    """Prove '59 23 31 12 *' in New York gives its last instant before year 10000, then none."""
    expression = parse_cron("59 23 31 12 *")
    start = dt.datetime(9998, 1, 1, tzinfo=UTC)
    assert fire_times(expression, ZoneInfo(NY), start, 5) == _instants(
        ["9997-12-31T23:59-05:00", "9998-12-31T23:59-05:00"]  # then 10000-01-01 in UTC
    )
    last = dt.datetime.fromisoformat("9999-12-31T23:59+11:00")  # Lord Howe in summer
    assert next_fire(expression, ZoneInfo(LHI), last - dt.timedelta(seconds=1)) == last
    assert next_fire(expression, ZoneInfo(LHI), last) is None


def test_missed_run_inside_a_skipped_hour_is_seen_at_start() -> None:
    """Prove the catch-up sees '30 2 * * *' due at 03:00 EDT on the spring-forward day."""
    schedule = parse_schedule("30 2 * * *")
    since = dt.datetime.fromisoformat("2026-03-08T01:59-05:00")
    assert not cron_missed_since(schedule, ZoneInfo(NY), since, since + dt.timedelta(seconds=59))
    assert cron_missed_since(schedule, ZoneInfo(NY), since, since + dt.timedelta(minutes=1))


@pytest.mark.parametrize(
    ("expression", "start", "per_day"),
    [
        ("0 */6 * * *", dt.date(2026, 1, 1), 4.0),
        ("*/15 * * * *", dt.date(2026, 1, 1), 96.0),
        # 1461 days from a Monday: 208 weeks and Monday-Friday once more.
        ("0 9 * * 1-5", dt.date(2026, 1, 5), (208 * 5 + 5) / 1461),
        # 2026-01-01 .. 2029-12-31 holds four 31 Decembers and one 29 February.
        ("59 23 31 12 *", dt.date(2026, 1, 1), 4 / 1461),
        ("0 0 29 2 *", dt.date(2026, 1, 1), 1 / 1461),
        # The calendar ends on 9999-12-31: two days left, both counted.
        ("0 12 * * *", dt.date(9999, 12, 30), 1.0),
    ],
)
def test_calls_per_day_are_counted_without_listing_instants(
    expression: str, start: dt.date, per_day: float
) -> None:
    """Prove the average runs per day over four years, counted by hand."""
    assert calls_per_day(parse_cron(expression), start) == pytest.approx(per_day)


def test_every_is_due_after_the_latest_end() -> None:
    """Prove 'every D' is due D after the later of the last success and the last give-up."""
    now = dt.datetime(2026, 1, 1, 12, tzinfo=UTC)
    success = now - dt.timedelta(minutes=50)
    give_up = now - dt.timedelta(minutes=10)
    assert every_due(3600, now, success, give_up) == give_up + dt.timedelta(hours=1)
    assert every_due(3600, now, give_up, None) == give_up + dt.timedelta(hours=1)
    assert every_due(3600, now, None, None) == now
    assert every_due(60, now, success, None) == now


# -- grammar and refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 0 30 2 *", '"0 0 30 2 *" never fires (February has no 30th)'),
        (
            "0 0 31 4,6,9,11 *",
            '"0 0 31 4,6,9,11 *" never fires (April, June, September and November have no 31st)',
        ),
        ("0 0 30,31 2 *", "never fires (February has no 30th or 31st)"),
        ("0 0 30 feb */2", "never fires (February has no 30th)"),
        ("0 0 5/10 * *", "a step needs a range or '*' (write '5-31/10')"),
        ("0 0 * * monday", "day-of-week 'monday' is neither a number nor one of the names"),
        ("0 0 * * monkey", "day-of-week 'monkey' is neither a number nor one of the names"),
        ("0 0 1 january *", "month 'january' is neither a number nor one of the names"),
        ("0 0 * * fri-mon", "reversed range, which cron never runs (write 'fri-sat,sun-mon')"),
        ("0 0 * * 5-1", "reversed range, which cron never runs (write '5-6,0-1')"),
        ("50-10 * * * *", "reversed range, which cron never runs (write '50-59,0-10')"),
        ("0 0 * * 8", "day-of-week 8 is out of range (0-7)"),
        ("0 24 * * *", "hour 24 is out of range (0-23)"),
        ("0 0 0 * *", "day-of-month 0 is out of range (1-31)"),
        ("*/0 * * * *", "the step must be a whole number above 0"),
        ("0~30 * * * *", "random ranges (~) are not supported"),
        ("*-5 * * * *", "minute '*' is not a number"),
        ("1,,2 * * * *", "minute '' is not a number"),
        ("0 mon * * *", "hour 'mon' is not a number"),
        ("@reboot", "@reboot is not a time"),
        ("@DAILY", "nicknames: @yearly"),
        ("@fortnightly", "nicknames: @yearly"),
    ],
)
def test_what_cannot_work_is_refused_saying_why(expression: str, message: str) -> None:
    """Prove cronie's refusals, never-firing specs and reversed ranges fail with a reason."""
    with pytest.raises(ValueError, match=r"never fires|is not a valid cron expression") as info:
        parse_cron(expression)
    assert message in str(info.value)
    assert f'"{expression}"' in str(info.value)


@pytest.mark.parametrize(
    ("expression", "weekdays"),
    [
        ("0 0 * * MON", {1}),
        ("0 0 * * Sun,7", {0}),
        ("0 0 * * */7", {0}),
        ("0 0 * * 0-7", set(range(7))),
    ],
)
def test_weekday_names_and_sundays(expression: str, weekdays: set[int]) -> None:
    """Prove three-letter names in any case, and 0 and 7 both being Sunday."""
    assert parse_cron(expression).weekdays == weekdays


@pytest.mark.parametrize(
    ("expression", "wildcard", "either_day"),
    [
        ("0 0 * * *", False, False),
        ("*/5 3 * * *", True, False),
        ("5 */2 * * *", True, False),
        ("5,35 3-4 * * *", False, False),
        ("0 0 1 * 1", False, True),
        ("0 0 */2 * 1", False, False),
        ("0 0 1 * */2", False, False),
        ("@hourly", True, False),
        ("@daily", False, False),
    ],
)
def test_star_rule_sets_the_job_kind_and_day_logic(
    expression: str, wildcard: bool, either_day: bool
) -> None:
    """Prove cron(8)'s 'starts with *' reading of the minute/hour and day fields."""
    parsed = parse_cron(expression)
    assert (parsed.wildcard, parsed.either_day) == (wildcard, either_day)


def test_a_step_larger_than_the_range_is_accepted_like_cronie() -> None:
    """Prove '*/100' is accepted (cronie only warns) and means the first value."""
    assert parse_cron("*/100 * * * *").minutes == {0}


def test_config_validates_schedules_without_importing_apscheduler() -> None:
    """Prove loading rotator.config (and so rotator.cron) leaves APScheduler unimported."""
    code = "import sys, rotator.config; print('apscheduler' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
