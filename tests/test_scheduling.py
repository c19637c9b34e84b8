"""Tests for rotator.scheduling: schedule parsing, cron fire times, DST, missed runs."""

from __future__ import annotations

import asyncio
import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from rotator.cron import parse_schedule
from rotator.scheduling import RotationScheduler, cron_fire_times, cron_missed_since

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


def test_parse_cron_schedule() -> None:
    """Prove a 5-field cron string parses into a cron Schedule keeping its text."""
    schedule = parse_schedule("0 */6 * * *")
    assert schedule.every is None
    assert schedule.cron is not None
    assert str(schedule) == "0 */6 * * *"


def test_parse_cron_normalises_whitespace() -> None:
    """Prove extra spaces and tabs in a cron string do not matter."""
    assert parse_schedule("  0\t*/6   * * * ").text == "0 */6 * * *"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("every 90m", 5400.0), ("every 30s", 30.0), ("every 1h30m", 5400.0), ("EVERY 2h", 7200.0)],
)
def test_parse_every_schedule(text: str, seconds: float) -> None:
    """Prove 'every <duration>' parses into an interval schedule in seconds."""
    schedule = parse_schedule(text)
    assert schedule.every == seconds
    assert schedule.cron is None


@pytest.mark.parametrize(
    "text",
    [
        "61 * * * *",
        "0 25 * * *",
        "0 0 32 * *",
        "0 0 * 13 *",
        "0 0 * * 8",
        "0 0 * * moon",
        "x * * * *",
        "*/0 * * * *",
    ],
)
def test_parse_rejects_bad_cron_fields(text: str) -> None:
    """Prove out-of-range or malformed cron fields are refused, quoting the text."""
    with pytest.raises(ValueError, match="is not a valid cron expression") as info:
        parse_schedule(text)
    assert f'"{text}"' in str(info.value)


@pytest.mark.parametrize("text", ["* * * * * *", "* * * *", "", "0 0"])
def test_parse_rejects_wrong_field_counts(text: str) -> None:
    """Prove cron strings without exactly five fields (seconds field included) are refused."""
    with pytest.raises(ValueError, match="5 fields"):
        parse_schedule(text)


@pytest.mark.parametrize("text", ["every", "every soon", "every 0s", "every -5m", "every 5x"])
def test_parse_rejects_bad_every(text: str) -> None:
    """Prove 'every' without a positive duration is refused."""
    with pytest.raises(ValueError, match="is not a valid schedule"):
        parse_schedule(text)


def test_every_longer_than_a_year_is_refused() -> None:
    """Prove 'every 3000000d' (it used to pass check, then crash every start) is refused."""
    with pytest.raises(
        ValueError, match=r"'every 3000000d' is too long an interval \(at most 366d\)"
    ):
        parse_schedule("every 3000000d")
    assert parse_schedule("every 366d").every == 366 * 86400


def _weekdays(text: str, count: int = 7) -> list[str]:
    start = dt.datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday
    return [t.strftime("%a") for t in cron_fire_times(parse_schedule(text), UTC, start, count)]


@pytest.mark.parametrize("text", ["0 0 * * 0", "0 0 * * 7", "0 0 * * sun", "0 0 * * SUN"])
def test_day_of_week_zero_and_seven_are_sunday(text: str) -> None:
    """Prove standard cron day numbers: 0 and 7 (and 'sun') fire on Sundays only."""
    assert set(_weekdays(text, 3)) == {"Sun"}


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("0 0 * * 1", {"Mon"}),
        ("0 0 * * 6", {"Sat"}),
        ("0 0 * * 1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("0 0 * * mon-fri", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("0 0 * * 5-7", {"Fri", "Sat", "Sun"}),
        ("0 0 * * fri-sun", {"Fri", "Sat", "Sun"}),
        ("0 0 * * 5-0", {"Fri", "Sat", "Sun"}),
        ("0 0 * * fri-sat,sun-mon", {"Fri", "Sat", "Sun", "Mon"}),
        ("0 0 * * 1-7/2", {"Mon", "Wed", "Fri", "Sun"}),
        ("0 0 * * 0,3", {"Sun", "Wed"}),
        ("0 0 * * */2", {"Sun", "Tue", "Thu", "Sat"}),
    ],
)
def test_day_of_week_ranges_follow_crontab(text: str, days: set[str]) -> None:
    """Prove day-of-week lists, ranges and steps count from Sunday = 0 (cronie's x-0 = x-7)."""
    assert set(_weekdays(text, 14)) == days


def test_fire_times_are_strictly_after_and_ordered() -> None:
    """Prove cron_fire_times starts strictly after 'after' and counts forward."""
    after = dt.datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    times = cron_fire_times(parse_schedule("0 */6 * * *"), UTC, after, 4)
    assert [t.astimezone(UTC).hour for t in times] == [6, 12, 18, 0]
    assert times[-1].date() == dt.date(2026, 1, 2)


def test_fire_times_use_the_entry_time_zone() -> None:
    """Prove a cron time is read in the entry's zone (09:00 Berlin = 08:00 UTC in winter)."""
    after = dt.datetime(2026, 1, 10, tzinfo=UTC)
    (first,) = cron_fire_times(parse_schedule("0 9 * * *"), BERLIN, after, 1)
    assert first.astimezone(UTC) == dt.datetime(2026, 1, 10, 8, 0, tzinfo=UTC)


def _utc(times: list[dt.datetime]) -> list[dt.datetime]:
    return [t.astimezone(UTC) for t in times]


def test_spring_dst_change_runs_the_skipped_time_once() -> None:
    """Prove a 02:30 Berlin job across 29 March 2026 (02:00→03:00) runs once a day, no crash."""
    after = dt.datetime(2026, 3, 27, 12, 0, tzinfo=BERLIN)
    times = cron_fire_times(parse_schedule("30 2 * * *"), BERLIN, after, 5)
    instants = _utc(times)
    assert instants == sorted(set(instants))
    local_dates = [t.astimezone(BERLIN).date() for t in times]
    assert len(local_dates) == len(set(local_dates))
    assert local_dates[0] == dt.date(2026, 3, 28)
    # The days after the change run at 02:30 summer time again.
    assert dt.datetime(2026, 3, 30, 0, 30, tzinfo=UTC) in instants
    assert dt.datetime(2026, 3, 31, 0, 30, tzinfo=UTC) in instants


def test_autumn_dst_change_does_not_double_a_daily_job() -> None:
    """Prove a 02:30 Berlin job runs once on 25 October 2026, when 02:30 happens twice."""
    after = dt.datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN)
    times = cron_fire_times(parse_schedule("30 2 * * *"), BERLIN, after, 3)
    instants = _utc(times)
    assert instants == sorted(set(instants))
    local_dates = [t.astimezone(BERLIN).date() for t in times]
    assert local_dates == [dt.date(2026, 10, 25), dt.date(2026, 10, 26), dt.date(2026, 10, 27)]


def test_autumn_dst_change_keeps_frequent_jobs_moving_forward() -> None:
    """Prove a */30 Berlin job across the October change never repeats or goes back in time."""
    after = dt.datetime(2026, 10, 25, 0, 0, tzinfo=BERLIN)
    times = cron_fire_times(parse_schedule("*/30 * * * *"), BERLIN, after, 12)
    instants = _utc(times)
    assert len(instants) == 12
    assert instants == sorted(set(instants))
    assert instants[-1] > dt.datetime(2026, 10, 25, 3, 0, tzinfo=UTC)


def test_missed_since_sees_a_time_inside_the_gap() -> None:
    """Prove cron_missed_since is true when a cron time fell in (since, now]."""
    schedule = parse_schedule("0 12 * * *")
    since = dt.datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    assert cron_missed_since(schedule, UTC, since, dt.datetime(2026, 1, 1, 12, 30, tzinfo=UTC))
    assert cron_missed_since(schedule, UTC, since, dt.datetime(2026, 1, 1, 12, 0, tzinfo=UTC))


def test_missed_since_is_false_without_a_time_in_the_gap() -> None:
    """Prove cron_missed_since is false before the time and for a run exactly at 'since'."""
    schedule = parse_schedule("0 12 * * *")
    since = dt.datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    assert not cron_missed_since(schedule, UTC, since, dt.datetime(2026, 1, 1, 11, 59, tzinfo=UTC))
    at_noon = dt.datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert not cron_missed_since(schedule, UTC, at_noon, at_noon + dt.timedelta(hours=23))


def test_missed_since_reads_the_entry_time_zone() -> None:
    """Prove a missed 09:00 Berlin run is found from UTC instants (08:00 UTC in winter)."""
    schedule = parse_schedule("0 9 * * *")
    since = dt.datetime(2026, 1, 10, 7, 30, tzinfo=UTC)
    assert not cron_missed_since(schedule, BERLIN, since, since + dt.timedelta(minutes=29))
    assert cron_missed_since(schedule, BERLIN, since, since + dt.timedelta(minutes=31))


def test_day_of_month_and_weekday_both_set_fire_on_either_like_crontab() -> None:
    """Prove '0 9 1 * mon' fires on the 1st and on every Monday, as crontab does."""
    after = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    times = cron_fire_times(parse_schedule("0 9 1 * mon"), ZoneInfo("UTC"), after, 4)
    assert [(t.day, t.strftime("%a")) for t in times] == [
        (30, "Mon"),
        (1, "Tue"),
        (7, "Mon"),
        (14, "Mon"),
    ]


def test_either_day_schedule_runs_in_the_live_scheduler() -> None:
    """Prove a cron entry with both day fields is accepted by the running scheduler."""

    async def scenario() -> dt.datetime | None:
        scheduler = RotationScheduler(lambda _entry: None)
        scheduler.start()
        try:
            scheduler.schedule_cron("e", parse_schedule("0 9 1 * mon"), ZoneInfo("UTC"))
            return scheduler.next_due("e")
        finally:
            scheduler.shutdown()

    when = asyncio.run(scenario())
    assert when is not None
    assert when.hour == 9
    assert when.day == 1 or when.strftime("%a") == "Mon"


def test_entries_due_at_the_same_instant_fire_in_config_order() -> None:
    """Prove ties in due time fire in config order (not by id), and time still comes first."""
    config_order = ["zeta", "mid", "alpha", "omega", "beta"]  # ids sort otherwise

    async def scenario() -> list[str]:
        fired: list[str] = []
        scheduler = RotationScheduler(fired.append)
        scheduler.set_order(config_order)
        now = dt.datetime.now(dt.UTC)
        tie = now + dt.timedelta(seconds=0.4)
        for entry_id in reversed(config_order):  # added in the opposite order
            scheduler.schedule_at(entry_id, tie)
        scheduler.schedule_at("last-in-config", now + dt.timedelta(seconds=0.2))
        scheduler.start()
        try:
            for _ in range(100):
                if len(fired) == len(config_order) + 1:
                    break
                await asyncio.sleep(0.05)
        finally:
            scheduler.shutdown()
        return fired

    assert asyncio.run(scenario()) == ["last-in-config", *config_order]


def test_without_an_order_ties_fire_in_the_order_first_scheduled() -> None:
    """Prove that without set_order, ties fire in the order the entries were first scheduled."""
    first_scheduled = ["c", "a", "b"]

    async def scenario() -> list[str]:
        fired: list[str] = []
        scheduler = RotationScheduler(fired.append)
        tie = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.2)
        for entry_id in first_scheduled:
            scheduler.schedule_at(entry_id, tie)
        scheduler.start()
        try:
            for _ in range(100):
                if len(fired) == len(first_scheduled):
                    break
                await asyncio.sleep(0.05)
        finally:
            scheduler.shutdown()
        return fired

    assert asyncio.run(scenario()) == first_scheduled


def test_entries_sharing_a_schedule_keep_their_own_due_times_and_removal() -> None:
    """Prove entries sharing a schedule each fire and can be removed or moved one by one."""

    async def scenario() -> tuple[list[str], dict[str, dt.datetime | None]]:
        fired: list[str] = []
        scheduler = RotationScheduler(fired.append)
        scheduler.start()
        try:
            cron = parse_schedule("0 9 * * *")
            for entry_id in ("a", "b", "c"):
                scheduler.schedule_cron(entry_id, cron, BERLIN)
            scheduler.remove("b")
            scheduler.schedule_cron("c", parse_schedule("30 9 * * *"), BERLIN)  # moved
            soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.2)
            for entry_id in ("x", "y", "z"):
                scheduler.schedule_at(entry_id, soon)
            scheduler.remove("y")
            dues = {entry_id: scheduler.next_due(entry_id) for entry_id in "abcxyz"}
            for _ in range(100):
                if len(fired) == 2:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
            dues["x after firing"] = scheduler.next_due("x")
        finally:
            scheduler.shutdown()
        return fired, dues

    fired, dues = asyncio.run(scenario())
    assert fired == ["x", "z"]
    a, c = dues["a"], dues["c"]
    assert a is not None
    assert c is not None
    assert a.astimezone(BERLIN).strftime("%H:%M") == "09:00"
    assert c.astimezone(BERLIN).strftime("%H:%M") == "09:30"
    assert dues["b"] is None
    assert dues["y"] is None
    assert dues["x"] is not None
    assert dues["x after firing"] is None
