"""Each third-party library is imported by exactly one module of rotator/ (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROTATOR = Path(__file__).resolve().parent.parent / "rotator"
# The module table of docs/architecture.md, "the only module that imports" column.
OWNERS = {
    "PIL": "images.py",
    "argparse": "cli.py",
    "apscheduler": "scheduling.py",
    "httpx": "client.py",
    "prometheus_client": "metrics.py",
    "pydantic": "config.py",
    "pydantic_settings": "config.py",
    "structlog": "logs.py",
    "watchdog": "watcher.py",
    "sqlite3": "state.py",
}


def importers(library: str) -> set[str]:
    """Return the rotator modules that import ``library`` (or a submodule of it)."""
    found = set()
    for path in ROTATOR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if any(name == library or name.startswith(library + ".") for name in names):
                found.add(path.name)
    return found


@pytest.mark.parametrize(("library", "owner"), sorted(OWNERS.items()))
def test_a_library_is_imported_by_its_one_module(library: str, owner: str) -> None:
    """Swapping or upgrading a library touches one module: no other imports it."""
    assert importers(library) == {owner}


def test_the_architecture_table_names_the_same_owners() -> None:
    """docs/architecture.md's table says what this test enforces."""
    table = (ROTATOR.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    for library, owner in OWNERS.items():
        spelled = {"PIL": "Pillow", "prometheus_client": "prometheus-client"}.get(library, library)
        spelled = spelled.replace("_", "-") if library == "pydantic_settings" else spelled
        rows = [line for line in table.splitlines() if line.startswith(f"| `{owner}`")]
        assert rows, f"no row for {owner}"
        assert spelled in rows[0].split("|")[3], f"{owner}'s row does not name {spelled}"
