"""Keep the heartbeat: a small JSON file in the state directory saying the daemon is alive.

A file beside the SQLite store, not a table in it: ``rotator health`` and ``status`` read
it without opening the database, so they never wait on a lock. The daemon replaces it
atomically every few seconds with the time and a summary, and removes it at a clean stop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from rotator.errors import StateError, StateVersionError

HEARTBEAT_NAME = "heartbeat.json"
HEARTBEAT_VERSION = 1


class EncodedJson(str):
    """A summary value encoded once, written as is by every heartbeat until it changes."""

    @classmethod
    def of(cls, value: object) -> EncodedJson:
        """Encode ``value`` as JSON."""
        return cls(json.dumps(value, sort_keys=True))


def write_heartbeat(state_dir: Path, now: dt.datetime, summary: Mapping[str, object]) -> None:
    """Replace ``heartbeat.json`` in ``state_dir`` atomically with ``now`` and ``summary``."""
    if now.utcoffset() is None:
        raise ValueError(f"naive datetime {now!r}: pass an aware datetime")
    encoded = {key: value for key, value in summary.items() if isinstance(value, EncodedJson)}
    plain = {key: f"\0{key}" if key in encoded else value for key, value in summary.items()}
    body = json.dumps(
        {
            "version": HEARTBEAT_VERSION,
            "time": now.astimezone(dt.UTC).isoformat(timespec="microseconds"),
            "summary": plain,
        },
        sort_keys=True,
    )
    for key, text in encoded.items():  # spliced in, not encoded again at every beat
        body = body.replace(json.dumps(f"\0{key}"), text, 1)
    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=state_dir, prefix=".heartbeat.", delete=False
        ) as tmp:
            tmp_name = tmp.name
            tmp.write(body)
        # No fsync: a heartbeat lost to a power cut is stale anyway.
        os.replace(tmp_name, Path(state_dir) / HEARTBEAT_NAME)
    except OSError as exc:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        raise StateError(f"cannot write the heartbeat in {state_dir}: {exc}") from exc


def read_heartbeat(state_dir: Path) -> tuple[dt.datetime, dict[str, object]] | None:
    """Return the last heartbeat's time and summary, or None if there is none usable."""
    try:
        data = json.loads((Path(state_dir) / HEARTBEAT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    version = data.get("version")
    if isinstance(version, int) and version > HEARTBEAT_VERSION:
        raise StateVersionError(
            f"the heartbeat in {state_dir} was written by a newer rotator (version {version}; "
            f"this one knows up to {HEARTBEAT_VERSION}); upgrade rotator"
        )
    summary = data.get("summary")
    try:
        when = dt.datetime.fromisoformat(str(data["time"])).astimezone(dt.UTC)
    except (KeyError, ValueError):
        return None
    return (when, summary) if isinstance(summary, dict) else None


def remove_heartbeat(state_dir: Path) -> None:
    """Delete the heartbeat (a clean stop), so no one takes an old pid for a live daemon."""
    with contextlib.suppress(FileNotFoundError):
        (Path(state_dir) / HEARTBEAT_NAME).unlink()
