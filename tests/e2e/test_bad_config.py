"""Bad configs and bad command lines, as a user meets them: exit 2, one clear line each.

Every problem is one ``rotator: <dotted path>: <what is wrong>`` line on stderr; nothing
on stdout, never a traceback, never the API key. ``run`` and ``check`` load the config
the same way, so each case runs through both.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from harness import cli_env, make_image, run_cli

LOOPBACK = "http://127.0.0.1:9/api/v1"  # nothing listens: a bad config never gets that far
KEY = "xq_" + "5e" * 32  # looks like a real key, so a leak of it is easy to spot
ENTRY = 'account = "alice"\nfolder = "pics"\nschedule = "every 6h"\n'
COMMANDS = ["run", "check"]


def _config_text(
    *,
    base_url: str = LOOPBACK,
    api: str = "",
    sections: str = "",
    entries: tuple[str, ...] = (ENTRY,),
) -> str:
    text = f'[api]\nbase_url = "{base_url}"\n{api}\n[state]\ndir = "state"\n\n{sections}\n'
    for entry in entries:
        text += f"[[accounts]]\n{entry}\n"
    return text


def _write(tmp_path: Path, text: str) -> Path:
    make_image(tmp_path / "pics" / "one.png", seed=1)
    path = tmp_path / "rotator.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    # A key in the environment: a config that wrongly passed would start the daemon,
    # and the timeout turns that into a failure instead of a hang.
    return run_cli(*args, env=env if env is not None else cli_env(KEY), cwd=cwd, timeout=30)


def _run_each_command(
    config: Path, env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``run`` and ``check`` on ``config`` side by side (half the wall time)."""
    started = []
    for command in COMMANDS:
        args = [sys.executable, "-m", "rotator", command, "--config", str(config)]
        proc = subprocess.Popen(
            args,
            env=env if env is not None else cli_env(KEY),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append((args, proc))
    results = []
    for args, proc in started:
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        results.append(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
    return results


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Assert the shape every user error shares; return the stderr lines."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines, "an error must say what is wrong"
    assert all(line.startswith("rotator: ") for line in lines), lines
    return lines


BROKEN_TOML = _config_text(api='timeout = "5s"\n', sections="[retry]\nattempts = = 3\n")
BROKEN_LINE = BROKEN_TOML.splitlines().index("attempts = = 3") + 1

CASES = [
    pytest.param(
        BROKEN_TOML,
        [f"invalid TOML: Invalid value (at line {BROKEN_LINE}, column"],
        id="toml-syntax-error",
    ),
    pytest.param(
        _config_text(sections="[retyr]\nattempts = 3\n"),
        ["retyr: unknown section; did you mean 'retry'?"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        _config_text(sections="[retry]\nattemps = 3\n"),
        ["retry.attemps: unknown key; did you mean 'attempts'?"],
        id="unknown-key-in-section",
    ),
    pytest.param(
        _config_text(entries=(ENTRY + 'colour = "red"\n',)),
        ["accounts[0].colour: unknown key"],
        id="unknown-key-in-entry",
    ),
    pytest.param(
        _config_text(sections='[retry]\ninitial = "5 parsecs"\n'),
        ["retry.initial: '5 parsecs' is not a duration"],
        id="bad-duration",
    ),
    pytest.param(
        _config_text(entries=(ENTRY.replace("every 6h", "61 * * * *"),)),
        ['accounts[0].schedule: "61 * * * *" is not a valid cron expression'],
        id="bad-cron",
    ),
    pytest.param(
        _config_text(entries=(ENTRY, ENTRY.replace("alice", "bob").replace("6h", "soon"))),
        ["accounts[1].schedule: 'every soon' is not a valid schedule"],
        id="bad-every-in-second-entry",
    ),
    pytest.param(
        _config_text(
            entries=(
                ENTRY,
                ENTRY.replace("alice", "bob"),
                ENTRY.replace("alice", "carol").replace("every 6h", "0 0 30 2 *"),
            )
        ),
        ['accounts[2].schedule: "0 0 30 2 *" never fires (February has no 30th)'],
        id="cron-never-fires",
    ),
    pytest.param(
        _config_text(entries=(ENTRY.replace("every 6h", "0 9 * * fri-mon"),)),
        [
            'accounts[0].schedule: "0 9 * * fri-mon" is not a valid cron expression: '
            'day-of-week "fri-mon" is a reversed range, which cron never runs '
            "(write 'fri-sat,sun-mon')"
        ],
        id="cron-reversed-range",
    ),
    pytest.param(
        _config_text(entries=(ENTRY.replace("every 6h", "0 9 * * monkey"),)),
        [
            'accounts[0].schedule: "0 9 * * monkey" is not a valid cron expression: '
            "day-of-week 'monkey' is neither a number nor one of the names "
            "sun, mon, tue, wed, thu, fri, sat"
        ],
        id="cron-long-day-name",
    ),
    pytest.param(
        _config_text(entries=(ENTRY.replace("every 6h", "5/10 * * * *"),)),
        [
            'accounts[0].schedule: "5/10 * * * *" is not a valid cron expression: '
            "minute \"5/10\": a step needs a range or '*' (write '5-59/10')"
        ],
        id="cron-step-on-a-number",
    ),
    pytest.param(
        _config_text(entries=(ENTRY + 'timezone = "Mars/Olympus"\n',)),
        ["accounts[0].timezone: 'Mars/Olympus' is not a known IANA time zone"],
        id="bad-timezone",
    ),
    pytest.param(
        _config_text(base_url="http://api.example.com/api/v1"),
        ["api.base_url: 'http://api.example.com/api/v1' must use https"],
        id="http-to-non-loopback-host",
    ),
    pytest.param(
        _config_text(api='upload = "url"\n'),
        ["accounts[0].public_base_url: required when api.upload = 'url'"],
        id="url-upload-without-public-base-url",
    ),
    pytest.param(
        _config_text(entries=('account = "alice"\n',)),
        ["accounts[0].folder: required", "accounts[0].schedule: required"],
        id="missing-required-keys",
    ),
    pytest.param(
        _config_text(entries=()),
        ["accounts: at least one [[accounts]] entry is required"],
        id="no-accounts",
    ),
    pytest.param(
        _config_text(sections='[retry]\nattempts = "three"\n'),
        ["retry.attempts: must be an integer"],
        id="wrong-type",
    ),
    pytest.param(
        _config_text(
            sections="[retry]\nattemps = 3\n",
            entries=(ENTRY.replace("every 6h", "61 * * * *") + 'timezone = "Nowhere"\n',),
        ),
        [
            "retry.attemps: unknown key; did you mean 'attempts'?",
            'accounts[0].schedule: "61 * * * *" is not a valid cron expression',
            "accounts[0].timezone: 'Nowhere' is not a known IANA time zone",
        ],
        id="three-problems-three-lines",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_bad_config_exits_2_with_one_line_per_problem(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    """Each config problem is one line naming its dotted path and what is wrong; exit 2."""
    config = _write(tmp_path, text)
    for result in _run_each_command(config):
        lines = _error_lines(result)
        assert len(lines) == len(expected), (result.args, lines)
        for fragment in expected:
            assert any(fragment in line for line in lines), (result.args, fragment, lines)


def test_missing_config_file_names_the_path(tmp_path: Path) -> None:
    """A --config that does not exist: one line naming the path it looked for."""
    missing = tmp_path / "nowhere" / "rotator.toml"
    for result in _run_each_command(missing):
        (line,) = _error_lines(result)
        assert str(missing) in line
        assert "not found" in line


def test_default_config_missing_names_rotator_toml(tmp_path: Path) -> None:
    """Without --config or $ROTATOR_CONFIG, a missing ./rotator.toml is named as such."""
    (line,) = _error_lines(_run("check", cwd=tmp_path))
    assert "rotator.toml" in line
    assert "not found" in line


def test_rotator_config_env_names_its_path(tmp_path: Path) -> None:
    """$ROTATOR_CONFIG pointing at a missing file: that path is named."""
    missing = tmp_path / "from-env.toml"
    env = cli_env(KEY, {"ROTATOR_CONFIG": str(missing)})
    (line,) = _error_lines(_run("check", env=env, cwd=tmp_path))
    assert str(missing) in line


def test_config_that_is_a_directory(tmp_path: Path) -> None:
    """--config naming a directory: one line saying it is a directory."""
    for result in _run_each_command(tmp_path):
        (line,) = _error_lines(result)
        assert str(tmp_path) in line
        assert "directory" in line


def test_env_override_with_bad_value_is_named(tmp_path: Path) -> None:
    """ROTATOR_RETRY__ATTEMPTS=abc: the line names the field and the variable."""
    config = _write(tmp_path, _config_text())
    env = cli_env(KEY, {"ROTATOR_RETRY__ATTEMPTS": "abc"})
    for result in _run_each_command(config, env):
        (line,) = _error_lines(result)
        assert "retry.attempts" in line
        assert "ROTATOR_RETRY__ATTEMPTS" in line
        assert "integer" in line


def test_env_override_of_unknown_key_is_named(tmp_path: Path) -> None:
    """A misspelt ROTATOR_API__BASE_ULR is an error naming the variable."""
    config = _write(tmp_path, _config_text())
    env = cli_env(KEY, {"ROTATOR_API__BASE_ULR": "https://xquik.com/api/v1"})
    lines = _error_lines(_run("check", "--config", str(config), env=env))
    assert any("ROTATOR_API__BASE_ULR" in line for line in lines), lines


def test_key_in_config_never_shown_with_an_error_elsewhere(tmp_path: Path) -> None:
    """api.key set plus a bad cron, and the key also pasted into a field: it never shows."""
    text = _config_text(
        api=f'key = "{KEY}"\n',
        entries=(
            ENTRY.replace("every 6h", "61 * * * *"),
            ENTRY.replace("alice", "bob").replace("every 6h", KEY),
        ),
    )
    config = _write(tmp_path, text)
    for result in _run_each_command(config, cli_env(None)):
        lines = _error_lines(result)
        assert KEY not in result.stdout + result.stderr
        assert any(line.startswith("rotator: accounts[0].schedule: ") for line in lines), lines
        assert any(line.startswith("rotator: accounts[1].schedule: ") for line in lines), lines


def test_key_pasted_as_key_file_is_not_shown(tmp_path: Path) -> None:
    """api.key_file holding the key itself (a likely slip): exit 2, and the key never shows."""
    config = _write(tmp_path, _config_text(api=f'key_file = "{KEY}"\n'))
    result = _run("run", "--config", str(config), env=cli_env(None))
    lines = _error_lines(result)
    assert any("api.key_file" in line for line in lines), lines
    assert KEY not in result.stdout + result.stderr


def test_check_online_on_bad_config_exits_2(tmp_path: Path) -> None:
    """check --online reports the config problem (exit 2) before asking the API anything."""
    config = _write(tmp_path, _config_text(entries=(ENTRY + 'timezone = "Mars/Olympus"\n',)))
    (line,) = _error_lines(_run("check", "--online", "--config", str(config)))
    assert "accounts[0].timezone" in line


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        pytest.param([], "COMMAND", id="no-subcommand"),
        pytest.param(["rotate-all"], "unknown command 'rotate-all'", id="unknown-subcommand"),
        pytest.param(["check", "--frob"], "--frob", id="unknown-flag"),
        pytest.param(["plan", "--count", "0"], "--count", id="count-zero"),
        pytest.param(["plan", "--count", "many"], "--count", id="count-not-a-number"),
        pytest.param(["rotate", "--account"], "--account", id="flag-without-value"),
    ],
)
def test_bad_command_line_exits_2_with_one_line(
    tmp_path: Path, argv: list[str], fragment: str
) -> None:
    """A bad command line: exit 2, one line on stderr naming what is wrong, no traceback."""
    (line,) = _error_lines(_run(*argv, cwd=tmp_path))
    assert fragment in line


def test_a_busy_metrics_port_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    """metrics.listen on a port already taken: exit 2, one line naming it, no daemon.crashed."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _write(tmp_path, _config_text(sections=f'[metrics]\nlisten = "127.0.0.1:{port}"'))
        result = _run("run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"rotator: metrics.listen: cannot listen on 127.0.0.1:{port}")
    events = [json.loads(text)["event"] for text in result.stdout.splitlines() if text]
    assert "daemon.crashed" not in events
    stopped = [
        json.loads(text) for text in result.stdout.splitlines() if '"daemon.stopped"' in text
    ]
    assert [event["reason"] for event in stopped] == ["error"]
    assert "Traceback" not in result.stdout + result.stderr
