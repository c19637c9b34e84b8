"""Parse and format human durations such as ``"500ms"``, ``"5m"`` or ``"1h30m"``."""

from __future__ import annotations

import math
import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")


def parse_duration(value: object) -> float:
    """Return the number of seconds a duration string or number stands for.

    Accepts a non-negative number of seconds (int, float or a numeric string) or
    one or more ``<number><unit>`` parts with units ms, s, m, h, d (``"1h30m"``).
    Raises ``ValueError`` with a message naming the bad value.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            if not _WHOLE.fullmatch(text):
                raise ValueError(
                    f"{value!r} is not a duration (use e.g. '500ms', '30s', '5m', '6h', '1d', "
                    "'1h30m' or a number of seconds)"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
    else:
        raise ValueError(f"{value!r} is not a duration")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration (it must be zero or more seconds)")
    return seconds


def format_duration(seconds: float) -> str:
    """Return a short human form of a number of seconds (``"1h30m"``, ``"750ms"``)."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
