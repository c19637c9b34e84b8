"""The README's table of log events and the events the code can emit are the same set."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EVENT = re.compile(r"[a-z]+\.[a-z_]+")
# Every way the package logs an event: emit(), a module's own log callback, structlog's
# level methods; the event's name is the first argument (a literal, or a conditional of two).
LOGGING_CALLS = {"emit", "_log", "_catalog_log", "log", "debug", "info", "warning", "error"}


def _events_in(expression: ast.expr) -> set[str]:
    return {
        node.value
        for node in ast.walk(expression)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and EVENT.fullmatch(node.value)
    }


def emitted_events() -> set[str]:
    """Return every event name passed as the first argument of a logging call in rotator/."""
    found: set[str] = set()
    for path in sorted((REPO / "rotator").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in LOGGING_CALLS:
                found |= _events_in(node.args[0] if name != "log" else node.args[-1])
    return found


def documented_events() -> set[str]:
    """Return the event names in the first column of the README's "Log events" table."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Log events") :]
    section = section[: section.index("\n## ", 1)]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([a-z]+\.[a-z_]+)`", line.split("|")[1]))
    return names


def test_every_emitted_event_is_in_the_readme_table() -> None:
    """A new log event cannot ship without its row in the README."""
    missing = emitted_events() - documented_events()
    assert not missing, f"events the code emits but the README's table lacks: {sorted(missing)}"


def test_every_row_of_the_readme_table_is_emitted_somewhere() -> None:
    """The README lists no event the code never emits (a renamed or removed one)."""
    stale = documented_events() - emitted_events()
    assert not stale, f"README rows no code emits: {sorted(stale)}"


def test_the_scan_finds_events_in_every_form() -> None:
    """The scan sees emit(), a module's own log callback and a conditional event name."""
    found = emitted_events()
    assert {"avatar.uploaded", "watch.fallback", "image.changed", "library.log"} <= found
