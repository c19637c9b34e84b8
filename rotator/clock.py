"""The one clock: every "now" in rotator comes from here, so tests can pass time in instead."""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    """Return the current time, timezone-aware in UTC."""
    return dt.datetime.now(dt.timezone.utc)
