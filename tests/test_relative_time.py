"""Tests for the relative times `rotator status` prints beside each instant."""

from __future__ import annotations

import datetime as dt

import pytest

from rotator.commands import relative_time

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (NOW + dt.timedelta(hours=2, minutes=5), "(in 2h 5m)"),
        (NOW - dt.timedelta(minutes=3), "(3m ago)"),
        (NOW + dt.timedelta(days=1, hours=4, minutes=12, seconds=9), "(in 1d 4h)"),
        (NOW - dt.timedelta(seconds=45), "(45s ago)"),
        (NOW, "(now)"),
    ],
)
def test_instants_read_at_a_glance(when: dt.datetime, expected: str) -> None:
    """Each instant keeps its ISO form and gains the two largest units of its distance."""
    assert relative_time(when.isoformat(), NOW) == f"{when.isoformat()} {expected}"


def test_nothing_to_show_is_a_dash() -> None:
    """No instant (nothing due) prints as a dash."""
    assert relative_time(None, NOW) == "-"
