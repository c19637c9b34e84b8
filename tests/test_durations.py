"""Tests for rotator.durations: parsing and formatting human durations."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rotator.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("6h", 21600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 93784.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        (" 2 m ", 120.0),
        ("10M", 600.0),
    ],
)
def test_parse_duration_reads_units(text: str, seconds: float) -> None:
    """Prove unit strings, alone and combined, become the right number of seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0.0), (5, 5.0), (2.5, 2.5), ("10", 10.0), ("0.25", 0.25), (" 7 ", 7.0)],
)
def test_parse_duration_reads_plain_numbers_as_seconds(value: object, seconds: float) -> None:
    """Prove numbers and numeric strings are taken as seconds."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    ["", "soon", "5x", "-5s", "-1", "1h30", "m5", "5 minutes", "1e400", "nan", "inf", "--1s"],
)
def test_parse_duration_rejects_bad_strings_naming_them(value: str) -> None:
    """Prove malformed or negative strings raise ValueError quoting the input."""
    with pytest.raises(ValueError, match="is not a duration") as info:
        parse_duration(value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [True, False, None, [], {}, -1, -0.5, math.nan, math.inf])
def test_parse_duration_rejects_bad_types_and_numbers(value: object) -> None:
    """Prove booleans, non-numbers, negatives and non-finite numbers are refused."""
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.75, "750ms"),
        (0.001, "1ms"),
        (1, "1s"),
        (90, "1m30s"),
        (5400, "1h30m"),
        (86400, "1d"),
        (3661, "1h1m1s"),
        (43200, "12h"),
    ],
)
def test_format_duration_gives_short_forms(seconds: float, text: str) -> None:
    """Prove format_duration writes the shortest unit string for a number of seconds."""
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**8))
def test_whole_seconds_round_trip(seconds: int) -> None:
    """Prove parse_duration(format_duration(s)) == s for every whole number of seconds."""
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=1, max_value=999))
def test_milliseconds_round_trip(millis: int) -> None:
    """Prove sub-second durations survive formatting and parsing to the millisecond."""
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=500), st.sampled_from(["d", "h", "m", "s"])),
        min_size=1,
        max_size=4,
    )
)
def test_parts_add_up(parts: list[tuple[int, str]]) -> None:
    """Prove a string of several <number><unit> parts is the sum of its parts."""
    size = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = "".join(f"{number}{unit}" for number, unit in parts)
    assert parse_duration(text) == sum(number * size[unit] for number, unit in parts)
