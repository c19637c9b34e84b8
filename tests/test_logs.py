"""Tests for rotator.logs: real log lines rendered to a buffer, parsed back and searched."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import pty
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from rotator import logs

LIBRARY_LOGGERS = ("httpx", "httpcore", "apscheduler", "watchdog")

Configure = Callable[..., io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """Yield a function that sets our logging up on a fresh buffer; undo it all afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    library_levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}

    def configure_logs(level: str = "debug", fmt: str = "json") -> io.StringIO:
        buffer = io.StringIO()
        logs.configure(level=level, fmt=fmt, stream=buffer)
        return buffer

    yield configure_logs
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, library_level in library_levels.items():
        logging.getLogger(name).setLevel(library_level)


@pytest.fixture
def api_key() -> str:
    """Return a fresh API key-shaped secret, registered for redaction."""
    key = f"xq_{secrets.token_hex(32)}"
    logs.add_secret(key)
    return key


def parsed(buffer: io.StringIO) -> list[dict[str, Any]]:
    """Return the JSON log lines written to ``buffer``."""
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line]


def test_json_lines_carry_utc_timestamp_level_and_event(configure: Configure) -> None:
    """Every JSON line has an ISO 8601 UTC timestamp, a level, the event name and its fields."""
    buffer = configure()
    logs.emit("avatar.uploaded", account="alice", bytes=1234)
    [line] = parsed(buffer)
    assert line["event"] == "avatar.uploaded"
    assert line["level"] == "info"
    assert (line["account"], line["bytes"]) == ("alice", 1234)
    stamp = line["timestamp"]
    assert stamp.endswith(("Z", "+00:00"))
    when = dt.datetime.fromisoformat(stamp)
    assert when.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.UTC) - when) < dt.timedelta(hours=1)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_registered_secret_never_appears(configure: Configure, api_key: str, fmt: str) -> None:
    """A registered key is masked in the message, fields, nested dicts, lists and tuples."""
    buffer = configure(fmt=fmt)
    log = logs.get_logger()
    log.info(f"sending with {api_key} now")
    logs.emit(
        "request.sent",
        header=f"x-api-key: {api_key}",
        nested={"outer": {"inner": f"key={api_key}", "list": [api_key, ("t", api_key)]}},
        keys=[api_key, f"prefix-{api_key}-suffix"],
        pair=(api_key, 1),
    )
    with structlog.contextvars.bound_contextvars(bound=api_key):
        logs.emit("avatar.failed", message=f"401 for {api_key}")
    text = buffer.getvalue()
    assert api_key not in text
    assert text.count(logs.REDACTED) >= 9
    if fmt == "json":
        first, second, third = parsed(buffer)
        assert first["event"] == f"sending with {logs.REDACTED} now"
        assert second["nested"]["outer"]["list"] == [logs.REDACTED, ["t", logs.REDACTED]]
        assert second["keys"][1] == f"prefix-{logs.REDACTED}-suffix"
        assert third["bound"] == logs.REDACTED


def test_objects_whose_text_holds_the_secret_are_masked(configure: Configure, api_key: str) -> None:
    """A field that is not a string (an exception, any object) cannot print the key either."""

    class Request:
        def __repr__(self) -> str:
            return f"<Request headers={{'x-api-key': '{api_key}'}}>"

    buffer = configure()
    logs.emit(
        "avatar.failed",
        error=RuntimeError(f"rejected {api_key}"),
        request=Request(),
        seen={api_key},
    )
    text = buffer.getvalue()
    assert api_key not in text
    [line] = parsed(buffer)
    assert logs.REDACTED in line["error"]


def test_secret_field_names_are_masked_whatever_their_value(configure: Configure) -> None:
    """Fields named like secrets (api_key, authorization, ...) are masked, nested ones too."""
    buffer = configure()
    logs.emit(
        "request.sent",
        api_key="unregistered-key-value-1",
        Authorization="Bearer unregistered-token-2",
        headers={"Authorization": "Bearer unregistered-3", "X-Api-Key": "unregistered-4"},
        account="alice",
    )
    text = buffer.getvalue()
    for value in ["unregistered-key-value-1", "unregistered-token-2", "-3", "unregistered-4"]:
        assert value not in text
    [line] = parsed(buffer)
    assert line["api_key"] == logs.REDACTED
    assert line["Authorization"] == logs.REDACTED
    assert line["headers"] == {"Authorization": logs.REDACTED, "X-Api-Key": logs.REDACTED}
    assert line["account"] == "alice"


def test_short_secrets_are_not_registered(configure: Configure) -> None:
    """A secret shorter than 4 characters is ignored rather than garbling ordinary words."""
    logs.add_secret("ab")
    buffer = configure()
    logs.emit("catalog.scanned", folder="abacus")
    [line] = parsed(buffer)
    assert line["folder"] == "abacus"


def _explode(api_key: str) -> None:
    local_note = "local-variable-value-5e1f"
    raise RuntimeError(f"server refused key {api_key} ({len(local_note)})")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_exception_traceback_is_redacted_and_shows_no_locals(
    configure: Configure, api_key: str, fmt: str
) -> None:
    """A logged exception's traceback has the key masked and no local variable values."""
    buffer = configure(fmt=fmt)
    try:
        _explode(api_key)
    except RuntimeError:
        logs.get_logger().error("daemon.crashed", exc_info=True)
    text = buffer.getvalue()
    assert "RuntimeError" in text
    assert "_explode" in text  # the traceback is there
    assert f"server refused key {logs.REDACTED}" in text
    assert api_key not in text
    assert "local-variable-value-5e1f" not in text
    if fmt == "json":
        [line] = parsed(buffer)
        assert "Traceback" in line["exception"]


def test_library_warnings_go_through_as_library_log(configure: Configure, api_key: str) -> None:
    """Standard-library logging warnings and errors of other libraries become library.log."""
    buffer = configure()
    logging.getLogger("apscheduler.scheduler").warning(
        "Run time of job %r was missed by %s", "rotate-alice", "0:00:02"
    )
    logging.getLogger("somelib").error("request to %s failed", f"https://x/?key={api_key}")
    logging.getLogger("somelib").info("chatter that must not show")
    logging.getLogger("httpx").info("HTTP Request: PATCH with x-api-key")
    warning, error = parsed(buffer)
    assert (warning["event"], warning["level"]) == ("library.log", "warning")
    assert warning["library"] == "apscheduler.scheduler"
    assert warning["message"] == "Run time of job 'rotate-alice' was missed by 0:00:02"
    assert (error["event"], error["level"], error["library"]) == ("library.log", "error", "somelib")
    assert error["message"] == f"request to https://x/?key={logs.REDACTED} failed"
    assert api_key not in buffer.getvalue()


def test_configuring_twice_does_not_double_library_lines(configure: Configure) -> None:
    """A reload that configures logging again keeps one bridge: each library line shows once."""
    configure()
    buffer = configure()
    logging.getLogger("watchdog.observers").warning("inotify watch limit reached")
    assert [line["event"] for line in parsed(buffer)] == ["library.log"]


@pytest.mark.parametrize(
    ("event", "level"),
    [
        ("image.rejected", "warning"),
        ("avatar.failed", "warning"),
        ("avatar.uncertain", "warning"),
        ("rotation.skipped", "warning"),
        ("pause.started", "warning"),
        ("watch.fallback", "warning"),
        ("daemon.reload_failed", "error"),
        ("daemon.crashed", "error"),
        ("avatar.uploaded", "info"),
        ("pause.ended", "info"),
        ("some.new_event", "info"),
    ],
)
def test_emit_logs_each_event_at_its_level(configure: Configure, event: str, level: str) -> None:
    """emit() picks the level from the event table, info for events not in it."""
    buffer = configure()
    logs.emit(event, account="alice")
    [line] = parsed(buffer)
    assert (line["event"], line["level"]) == (event, level)


def test_level_setting_filters_lower_events(configure: Configure) -> None:
    """With level "warning", info events are dropped and warnings still show."""
    buffer = configure(level="warning")
    logs.emit("avatar.uploaded", account="alice")
    logs.emit("image.rejected", account="alice")
    assert [line["event"] for line in parsed(buffer)] == ["image.rejected"]


# sd-daemon(3): SD_ERR "<3>", SD_WARNING "<4>", SD_INFO "<6>", SD_DEBUG "<7>".
JOURNAL_PRIORITIES = {"error": "<3>", "warning": "<4>", "info": "<6>", "debug": "<7>"}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo a logs.configure() call made by the test."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("event", "level"),
    [
        ("daemon.reload_failed", "error"),
        ("pause.started", "warning"),
        ("avatar.uploaded", "info"),
        ("rotation.merged", "debug"),
    ],
)
def test_journal_lines_carry_their_syslog_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None, event: str, level: str
) -> None:
    """On the stream $JOURNAL_STREAM names, each JSON line starts with sd-daemon's <N>."""
    path = tmp_path / "journal"
    with path.open("w", encoding="utf-8") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        logs.configure(level="debug", stream=stream)
        logs.emit(event, account="alice")
    line = path.read_text(encoding="utf-8").strip()
    prefix = JOURNAL_PRIORITIES[level]
    assert line.startswith(prefix), line
    assert json.loads(line.removeprefix(prefix))["event"] == event


def test_other_streams_get_no_priority_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    """stdout redirected away from the journal (another inode) stays plain JSON lines."""
    journal = tmp_path / "journal"
    journal.write_text("")
    info = os.stat(journal)
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    path = tmp_path / "redirected"
    with path.open("w", encoding="utf-8") as stream:
        logs.configure(level="debug", stream=stream)
        logs.emit("pause.started", account="alice")
    assert json.loads(path.read_text(encoding="utf-8"))["event"] == "pause.started"


def test_colour_only_on_a_terminal_and_never_under_no_color(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A pseudo-terminal gets colour; a file does not; NO_COLOR=1 turns it off (no-color.org)."""
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal, (tmp_path / "file").open("w") as plain:
        monkeypatch.delenv("NO_COLOR", raising=False)
        assert logs.wants_colour(terminal) is True
        assert logs.wants_colour(plain) is False
        monkeypatch.setenv("NO_COLOR", "1")
        assert logs.wants_colour(terminal) is False
        monkeypatch.setenv("NO_COLOR", "")  # empty: as if unset
        assert logs.wants_colour(terminal) is True
    os.close(leader)
