"""The CLI's command table: every command the parser knows reaches its own function."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rotator import cli

# The arguments a command requires besides --config (argparse refuses it without them).
REQUIRED = {
    "skip": ["--account", "alice"],
    "exclude": ["--account", "alice", "--image", "a.png"],
    "include": ["--account", "alice", "--image", "a.png"],
}


def _parser_commands() -> list[str]:
    """Return the subcommand names ``build_parser`` accepts, as ``--help`` lists them."""
    (sub,) = [
        action
        for action in cli.build_parser()._actions  # argparse keeps the subcommands there
        if isinstance(action, argparse._SubParsersAction)
    ]
    return list(sub.choices)


@pytest.mark.parametrize("name", _parser_commands())
def test_every_command_reaches_its_function(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command loads the config it is given: a missing file is its usage error, not a bug."""
    missing = tmp_path / "nowhere.toml"
    code = cli.main([name, "--config", str(missing), *REQUIRED.get(name, [])])
    err = capsys.readouterr().err
    assert "internal error" not in err
    assert f"{missing}: config file not found" in err
    # reload reads the config only to find the daemon: with none, it says so (exit 1).
    assert code == (1 if name == "reload" else 2)
