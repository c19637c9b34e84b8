"""The systemd unit: what the issue requires of it, and what systemd-analyze says about it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rotator.config import choose_state_dir

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "rotator.service"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
EXEC_START_BINARY = "/usr/local/bin/rotator"
MAX_EXPOSURE = 1.5
DRAIN_SECONDS = 10.0

_SPAN_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Return each section's (key, value) pairs in order; repeated keys are kept."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=value line: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(key: str) -> list[str]:
    """Return every value given to ``key`` in the [Service] section."""
    return [value for name, value in parse_unit(UNIT.read_text())["Service"] if name == key]


def single(key: str) -> str:
    """Return the one value of ``key`` in [Service], failing if it is absent or repeated."""
    found = values(key)
    assert len(found) == 1, f"{key}= should appear once in [Service], found {found}"
    return found[0]


def timespan_seconds(text: str) -> float:
    """Convert a systemd time span ("30s", "1min 30s", "90") to seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    assert parts, f"not a time span: {text!r}"
    assert re.fullmatch(r"(\s*\d+(\.\d+)?\s*[a-z]+)+\s*", text), f"not a time span: {text!r}"
    return sum(float(number) * _SPAN_UNITS[unit] for number, unit in parts)


def systemd_analyze() -> str:
    """Return the systemd-analyze path, or skip (fail under CI) when it is not installed."""
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/deploy-checks should have installed it")
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    return found


def verify(unit: Path) -> tuple[int, list[str]]:
    """Run ``systemd-analyze verify`` on ``unit``; return its exit code and output lines."""
    result = subprocess.run(
        [systemd_analyze(), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in lines if line.strip()]


def measured_exposure() -> float:
    """Return the "Overall exposure level" systemd-analyze gives the unit offline."""
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    match = re.search(r"Overall exposure level for rotator\.service: (\d+\.\d+)", result.stdout)
    assert match, f"no exposure line in:\n{result.stdout}{result.stderr}"
    return float(match.group(1))


def test_unit_is_valid_apart_from_the_missing_binary() -> None:
    """systemd-analyze verify reports nothing but the missing rotator binary."""
    code, lines = verify(UNIT)
    expected = (
        f"rotator.service: Command {EXEC_START_BINARY} is not executable: No such file or directory"
    )
    if Path(EXEC_START_BINARY).exists():
        assert (code, lines) == (0, [])
    else:  # once for ExecStart=, once for ExecReload=
        assert lines == [expected, expected]


def test_unit_is_clean_when_the_binary_exists(tmp_path: Path) -> None:
    """With ExecStart pointing at a real executable, verify prints nothing and succeeds."""
    copy = tmp_path / "rotator.service"
    copy.write_text(UNIT.read_text().replace(EXEC_START_BINARY, sys.executable))
    assert verify(copy) == (0, [])


def test_exposure_is_at_most_the_target() -> None:
    """The offline security review scores the unit at most 1.5 (systemd's "OK")."""
    assert measured_exposure() <= MAX_EXPOSURE


def test_exposure_threshold_gate_passes() -> None:
    """systemd-analyze's own --threshold gate (tenths: 15 = 1.5) accepts the unit."""
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--threshold=15", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_documented_exposure_is_the_measured_one() -> None:
    """docs/deploy.md records the score systemd-analyze measures today."""
    score = measured_exposure()
    assert f"exposure level {score:.1f}" in DEPLOY_DOC.read_text()


def test_lifecycle_settings() -> None:
    """Type=notify with main-only notify access, watchdog, a reload that reports, restart policy."""
    assert single("Type") == "notify"
    assert single("NotifyAccess") == "main"
    assert timespan_seconds(single("WatchdogSec")) >= 2
    assert single("Restart") == "on-failure"
    assert "2" in single("RestartPreventExitStatus").split()
    # `rotator reload` signals the daemon and exits with its verdict on the new config.
    assert single("ExecReload") == f"{EXEC_START_BINARY} reload"
    assert timespan_seconds(single("TimeoutStopSec")) > DRAIN_SECONDS


def test_start_command_and_config_path() -> None:
    """The daemon starts as `rotator run` and finds its config under /etc/rotator."""
    assert single("ExecStart") == f"{EXEC_START_BINARY} run"
    assert "ROTATOR_CONFIG=/etc/rotator/rotator.toml" in values("Environment")


def test_identity_directories_and_credential() -> None:
    """A dynamic user, its state/config directories, and the API key as a credential."""
    assert single("DynamicUser") == "yes"
    assert single("StateDirectory") == "rotator"
    assert single("ConfigurationDirectory") == "rotator"
    assert single("LoadCredential") == "xquik-api-key:/etc/rotator/api-key"


def test_network_is_limited_to_what_the_daemon_uses() -> None:
    """Only AF_UNIX (notify socket) and AF_INET/AF_INET6 (HTTPS) sockets; no blanket IP deny."""
    assert sorted(single("RestrictAddressFamilies").split()) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert "any" not in " ".join(values("IPAddressDeny")).split()


def test_timespan_parser_reads_systemd_spans() -> None:
    """The test's own span parser agrees with systemd's spelling of the spans used."""
    assert timespan_seconds("30s") == 30
    assert timespan_seconds("1min 30s") == 90
    assert timespan_seconds("5min") == 300
    assert timespan_seconds("45") == 45
    with pytest.raises(AssertionError):
        timespan_seconds("soon")


def test_documentation_points_at_the_docs_the_install_guide_installs() -> None:
    """Documentation= names file: URIs of repo documents that docs/deploy.md installs there."""
    unit = parse_unit(UNIT.read_text())["Unit"]
    uris = " ".join(value for name, value in unit if name == "Documentation").split()
    files = [uri.removeprefix("file:") for uri in uris if uri.startswith("file:")]
    assert files, "the unit names no documentation file"
    guide = DEPLOY_DOC.read_text()
    for path in files:
        name = Path(path).name
        assert (REPO / name).exists() or (REPO / "docs" / name).exists(), name
        assert str(Path(path).parent) in guide, f"docs/deploy.md never installs {path}"
    assert all(re.match(r"^(file|man|https?|info):", uri) for uri in uris), uris


def test_commands_find_the_state_where_the_unit_keeps_it() -> None:
    """systemd.exec(5): StateDirectory=X is /var/lib/X, ConfigurationDirectory=X is /etc/X.

    ``rotator status --config /etc/rotator/rotator.toml`` run without $STATE_DIRECTORY must
    read the service's state, so the rule in the config loader must match the unit.
    """
    state = Path("/var/lib") / single("StateDirectory")
    config = Path("/etc") / single("ConfigurationDirectory") / "rotator.toml"
    assert f"ROTATOR_CONFIG={config}" in values("Environment")
    assert choose_state_dir(None, {}, config) == state
