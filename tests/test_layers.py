"""Imports flow one way, down the data flow of docs/architecture.md, and nothing is re-exported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROTATOR = REPO / "rotator"

# The layers of rotator/, highest first; docs/architecture.md shows the same table. A
# module imports only modules of the layers below its own, never its own layer or one
# above it. A new module joins the table (here and in the document) before it can pass.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    # `python -m rotator`: the command line, run.
    ("program", frozenset({"__main__"})),
    # The command line: parse arguments, call the command, turn errors into exit codes.
    ("command line", frozenset({"cli"})),
    # One function per command; `run` starts the daemon, the others read or change state.
    ("commands", frozenset({"commands"})),
    # The daemon's lifecycle: start, signals, heartbeat, reload (a new bundle, swapped), drain.
    ("daemon", frozenset({"service"})),
    # The entries in force: their schedules, due times and rotations.
    ("entries", frozenset({"entries"})),
    # What the daemon is made of: the bundle of parts built from the settings, the folders.
    ("assembly", frozenset({"library", "parts"})),
    # Control by hand (pause, resume, skip, exclude, include, rotate now), daemon or state.
    ("by hand", frozenset({"manual"})),
    # One rotation: pick, load, send, act on the decision, record.
    ("rotation", frozenset({"rotation"})),
    # The components a rotation or the daemon drives; none of them imports another.
    (
        "components",
        frozenset(
            {
                "catalog",
                "client",
                "control",
                "metrics",
                "notify",
                "pacer",
                "pauses",
                "planner",
                "scheduling",
                "systemd",
                "watcher",
            }
        ),
    ),
    # Images fitted once (resized, re-encoded) and kept by content, for the catalogs.
    ("fitted copies", frozenset({"fitted"})),
    # What comes in and goes out as plain data: settings, server answers, images, the
    # state, log lines, and the next step a person takes.
    (
        "readings and records",
        frozenset({"advice", "answers", "config", "heartbeat", "images", "logs", "state"}),
    ),
    # Pure rules: the fault table, cron's grammar, where the key is, config error lines.
    ("rules", frozenset({"config_errors", "cron", "keys", "policy"})),
    # Words and values every layer shares; they import no other rotator module.
    (
        "base",
        frozenset({"__init__", "clock", "durations", "errors", "names", "outcomes", "redaction"}),
    ),
)

LEVEL = {module: level for level, (_, modules) in enumerate(LAYERS) for module in modules}
MODULES = sorted(path.stem for path in ROTATOR.glob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def rotator_imports(path: Path) -> list[tuple[int, str]]:
    """Return ``(line, module)`` for each rotator module the file imports, lazily or for types."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module == "rotator":
            for alias in node.names:  # `from rotator import manual, __version__`
                module = alias.name if alias.name in MODULES else "__init__"
                found.append((node.lineno, module))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rotator."):
            found.append((node.lineno, str(node.module).split(".")[1]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rotator."):
                    found.append((node.lineno, alias.name.split(".")[1]))
    return found


def test_every_module_has_a_layer() -> None:
    """A module the table does not name fails here, by name, until it is given a layer."""
    unknown = [name for name in MODULES if name not in LEVEL]
    assert not unknown, (
        ", ".join(f"rotator/{name}.py" for name in unknown)
        + " in no layer: add each to LAYERS in tests/test_layers.py and to the layer table "
        "of docs/architecture.md"
    )


def test_each_module_is_in_one_layer() -> None:
    """The table gives no module two layers."""
    names = [module for _, modules in LAYERS for module in modules]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("module", MODULES)
def test_a_module_imports_only_lower_layers(module: str) -> None:
    """No import goes up the data flow, or sideways within a layer."""
    if module not in LEVEL:
        pytest.skip(f"{module} has no layer (test_every_module_has_a_layer names it)")
    upward = [
        f"rotator/{module}.py:{line} imports {imported} "
        f"({LAYERS[LEVEL[imported]][0]!r} layer, not below {LAYERS[LEVEL[module]][0]!r})"
        for line, imported in rotator_imports(ROTATOR / f"{module}.py")
        if imported in LEVEL and LEVEL[imported] <= LEVEL[module]
    ]
    assert not upward, "\n".join(upward)


def test_the_architecture_document_has_the_same_layers() -> None:
    """docs/architecture.md's layer table lists these layers, in this order, with these modules."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text[text.index("## Layers") :]
    rows = [line for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
    documented = [
        (cells[2].strip(), frozenset(re.findall(r"`([a-z_]+)\.py`", cells[3])))
        for cells in (row.split("|") for row in rows)
    ]
    assert documented == list(LAYERS)


def _names_bound_by_import(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def test_no_name_is_imported_from_a_module_that_only_imported_it() -> None:
    """Every name is imported from the module that defines it: nothing is passed on."""
    imported_into = {
        name: _names_bound_by_import(_tree(ROTATOR / f"{name}.py")) for name in MODULES
    }
    sources = [
        *ROTATOR.glob("*.py"),
        *(REPO / "tests").rglob("*.py"),
        *(REPO / "bench").rglob("*.py"),
    ]
    passed_on = []
    for path in sources:
        tree = _tree(path)
        # Modules bound by `from rotator import manual`: `manual.X` must be manual's own X.
        aliases = {
            alias.asname or alias.name: alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "rotator"
            for alias in node.names
            if alias.name in MODULES
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rotator."):
                module = str(node.module).split(".")[1]
                passed_on += [
                    f"{path.relative_to(REPO)}:{node.lineno}: {alias.name} from rotator.{module}"
                    for alias in node.names
                    if alias.name in imported_into.get(module, set())
                ]
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr in imported_into[aliases[node.value.id]]
            ):
                module = aliases[node.value.id]
                passed_on.append(f"{path.relative_to(REPO)}:{node.lineno}: {module}.{node.attr}")
    assert not passed_on, "import these from the module that defines them:\n" + "\n".join(passed_on)
