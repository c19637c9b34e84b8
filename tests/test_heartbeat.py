"""Tests for rotator.heartbeat: a real file in a real directory, read back as written."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from rotator.errors import StateError, StateVersionError
from rotator.heartbeat import HEARTBEAT_NAME, read_heartbeat, write_heartbeat

T0 = dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    """Return T0 plus some seconds."""
    return T0 + dt.timedelta(seconds=seconds)


def test_heartbeat_write_read_and_overwrite(tmp_path: Path) -> None:
    """A heartbeat reads back as written; a later one replaces it and leaves no temp file."""
    assert read_heartbeat(tmp_path) is None
    write_heartbeat(tmp_path, T0, {"entries": 2, "paused": []})
    assert read_heartbeat(tmp_path) == (T0, {"entries": 2, "paused": []})
    write_heartbeat(tmp_path, at(30), {"entries": 3})
    assert read_heartbeat(tmp_path) == (at(30), {"entries": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == [HEARTBEAT_NAME]


def test_unreadable_heartbeat_is_none_and_newer_is_refused(tmp_path: Path) -> None:
    """A corrupt heartbeat reads as None; one from a newer rotator raises StateVersionError."""
    path = tmp_path / HEARTBEAT_NAME
    for junk in ("{not json", "[]", '{"version": 1, "summary": {}}', '{"time": "x"}'):
        path.write_text(junk)
        assert read_heartbeat(tmp_path) is None, junk
    path.write_text(json.dumps({"version": 99, "time": T0.isoformat(), "summary": {}}))
    with pytest.raises(StateVersionError, match="version 99"):
        read_heartbeat(tmp_path)


def test_heartbeat_in_missing_dir_is_a_state_error(tmp_path: Path) -> None:
    """Writing a heartbeat where the directory is gone raises StateError."""
    with pytest.raises(StateError, match="heartbeat"):
        write_heartbeat(tmp_path / "gone", T0, {})
