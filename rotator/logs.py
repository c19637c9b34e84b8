"""Structured logs: JSON lines (or console lines) on stdout, with the API key redacted.

The only module that imports structlog. Every event has a stable dotted name
(``avatar.uploaded``) and key-value fields; ``timestamp`` is ISO 8601 in UTC. A
redaction processor runs last before rendering, so no code path can print the key:
values equal to (or containing) a registered secret, and fields whose name says
they hold a secret, are masked.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from rotator import redaction

Logger = structlog.typing.FilteringBoundLogger

REDACTED = redaction.REDACTED
_SECRET_FIELD_NAMES = frozenset(
    {"api_key", "key_value", "x-api-key", "x_api_key", "authorization", "password", "secret"}
)
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_SURROGATE = re.compile("[\ud800-\udfff]")
_listeners: list[Callable[[Mapping[str, object]], None]] = []


def add_listener(listener: Callable[[Mapping[str, object]], None]) -> None:
    """Call ``listener`` with every event emitted from now on (the metrics count them)."""
    _listeners.append(listener)


def remove_listener(listener: Callable[[Mapping[str, object]], None]) -> None:
    """Stop calling ``listener``."""
    if listener in _listeners:
        _listeners.remove(listener)


def add_secret(value: str) -> None:
    """Register a value that must never appear in any log line (the API key)."""
    redaction.add_secret(value)


def redact_text(text: str) -> str:
    """Return ``text`` with every registered secret, and long fragments of it, masked."""
    return redaction.redact(text)


def _printable(text: str) -> str:
    """Escape what cannot be written as UTF-8 (a file name's non-UTF-8 bytes: ``\\xe9``)."""
    if not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub(
        lambda found: (
            f"\\x{ord(found[0]) - 0xDC00:02x}"
            if 0xDC80 <= ord(found[0]) <= 0xDCFF
            else f"\\u{ord(found[0]):04x}"
        ),
        text,
    )


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return _printable(redact_text(value))
    if isinstance(value, dict):
        return {
            key: REDACTED if str(key).lower() in _SECRET_FIELD_NAMES else _redact_value(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if value is None or isinstance(value, bool | int | float):
        return value
    # Anything else is rendered through its repr, which may carry the key (an exception).
    return redact_text(repr(value))


def redacted(fields: Mapping[str, object]) -> dict[str, object]:
    """Return ``fields`` as a log line would show them: secrets masked, values plain."""
    return {
        key: REDACTED if key.lower() in _SECRET_FIELD_NAMES else _redact_value(value)
        for key, value in fields.items()
    }


def _redact(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key.lower() in _SECRET_FIELD_NAMES:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


class _StdlibBridge(logging.Handler):
    """Send warnings of third-party libraries (APScheduler, watchdog, ...) through our log."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a broken log call in a library must not break the daemon
            message = str(record.msg)
        level = "error" if record.levelno >= logging.ERROR else "warning"
        get_logger().log(
            logging.ERROR if level == "error" else logging.WARNING,
            "library.log",
            library=record.name,
            message=message,
        )


# sd-daemon(3): the journal reads a leading "<N>" as the line's syslog priority.
_SYSLOG_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def writes_to_journal(stream: TextIO) -> bool:
    """Tell whether ``stream`` is the journal's stream that systemd named in $JOURNAL_STREAM.

    systemd sets JOURNAL_STREAM to the "device:inode" of the stream it connected stdout and
    stderr to; comparing it with the stream's own identity tells a redirected stdout
    (``rotator run > file`` inside a unit) from the journal itself.
    """
    expected = os.environ.get("JOURNAL_STREAM", "")
    device, sep, inode = expected.partition(":")
    if not sep:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # a StringIO or a closed stream
        return False
    return f"{info.st_dev}:{info.st_ino}" == f"{device}:{inode}"


def wants_colour(stream: TextIO) -> bool:
    """Tell whether to colour lines for ``stream``: only a terminal, and never under NO_COLOR.

    no-color.org: a set, non-empty ``NO_COLOR`` turns colour off whatever else holds.
    """
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (OSError, ValueError, AttributeError):
        return False


def _with_priority(renderer: structlog.typing.Processor) -> structlog.typing.Processor:
    """Wrap ``renderer`` so each line starts with its syslog priority (``<4>{...}``)."""

    def render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        priority = _SYSLOG_PRIORITIES.get(str(event_dict.get("level", "info")), 6)
        line = renderer(logger, method, event_dict)
        if isinstance(line, bytes):
            return f"<{priority}>".encode() + line
        return f"<{priority}>{line}"

    return render


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Set up structlog (and the stdlib bridge) for the whole process.

    When the output is the journal, every line carries its ``<N>`` syslog priority, so
    ``journalctl -p warning`` finds warnings and errors; the JSON after it is unchanged.
    """
    output = stream or sys.stdout
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=wants_colour(output))
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    if writes_to_journal(output):
        renderer = _with_priority(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            # Plain text tracebacks: dict tracebacks would render local variables.
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(output),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(_StdlibBridge(level=logging.WARNING))
    root.setLevel(logging.WARNING)
    # These log request details at INFO/DEBUG; job chatter is ours to log.
    # pydantic-settings logs every source's values (the key too) when debugging is on.
    for name in ("httpx", "httpcore", "apscheduler", "watchdog", "pydantic_settings"):
        logging.getLogger(name).setLevel(logging.WARNING)


def get_logger() -> Logger:
    """Return the process logger."""
    logger: Logger = structlog.get_logger("rotator")
    return logger


# Events that deserve a level above info; everything else is info.
EVENT_LEVELS = {
    "image.rejected": "warning",
    "avatar.failed": "warning",
    "avatar.uncertain": "warning",
    "rotation.skipped": "warning",
    "rotation.merged": "debug",  # one per blocked due time: kept out of the info log
    "pause.started": "warning",
    "watch.fallback": "warning",
    "daemon.reload_failed": "error",
    "daemon.crashed": "error",
    "library.log": "warning",
    "notify.failed": "warning",
    "notify.dropped": "warning",
}


def library_warning(library: str, message: str) -> None:
    """Log what a library said (a Pillow or libtiff warning) as a ``library.log`` event."""
    emit("library.log", library=library, message=message)


def emit(event: str, **fields: object) -> None:
    """Log ``event`` with ``fields`` at the level the event deserves.

    Listeners hear every event, whatever the log level lets through: the metrics
    must not depend on it.
    """
    for listener in list(_listeners):
        try:
            listener({"event": event, **fields})
        except Exception as exc:  # a broken listener must not break the caller
            get_logger().error("daemon.listener_failed", error=f"{type(exc).__name__}: {exc}")
    level = EVENT_LEVELS.get(event, "info")
    getattr(get_logger(), level)(event, **fields)
