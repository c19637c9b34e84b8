"""Generated configs: each is accepted and usable, or refused with ``path: problem`` lines."""

from __future__ import annotations

import datetime as dt
import json
import math
import signal
from pathlib import Path
from typing import Any

from harness import DaemonProcess, cli_env, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rotator.config import Settings, load_settings
from rotator.errors import ConfigError
from rotator.parts import fit_settings
from rotator.scheduling import cron_fire_times

FOLDER = "img"
SECTION_KEYS = {
    "api": ["base_url", "key_file", "timeout", "upload", "public_base_url", "credits_per_call"],
    "rate_limit": ["writes", "window", "concurrency"],
    "retry": ["initial", "max", "attempts"],
    "pause": ["credits", "account", "auth", "max"],
    "watch": ["mode", "settle", "poll_interval", "rescan"],
    "images": ["fit", "size", "crop", "max_bytes", "max_source_bytes", "max_pixels", "min_size"],
    "state": ["dir"],
    "log": ["level", "format"],
    "metrics": ["listen"],
}
ENTRY_KEYS = ["account", "folder", "schedule", "timezone", "order", "jitter", "public_base_url"]
HOSTILE_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
PLAUSIBLE = st.sampled_from(
    [
        "1s",
        "30s",
        "5m",
        "1h",
        "2d",
        "400d",
        "3000000d",
        "0",
        "-1",
        "1e400",
        "auto",
        "file",
        "url",
        "center",
        "none",
        "json",
        "console",
        "debug",
        "native",
        "polling",
        "https://xquik.com/api/v1",
        "http://127.0.0.1:9",
        "https://exa mple.com",
        "https://img.example.com",
        "127.0.0.1:9464",
        "[::1]:9464",
        "bad host:1",
        "alice",
        "@Alice",
        "ALICE",
        "bob_2",
        "every 1h",
        "every 3000000d",
        "*/5 * * * *",
        "61 * * * *",
        "UTC",
        "Europe/Paris",
        "Mars/Base",
        "sequential",
        "shuffle",
        "random",
        FOLDER,
        "state",
        "a\x00b",
        "d" * 300,
        "~nosuchuser/x",
        "",
    ]
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 16, 100, 4096, 716800, 2**63, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(PLAUSIBLE, PLAUSIBLE, NUMBERS, HOSTILE_TEXT, st.booleans())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "code"]), inner, max_size=2),
    ),
    max_leaves=6,
)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """Draw a config: known sections and keys, mostly plausible values, some hostile ones."""
    data: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTION_KEYS)), max_size=4, unique=True)):
        keys = SECTION_KEYS[section] + ["unknown_key"]
        data[section] = draw(st.dictionaries(st.sampled_from(keys), VALUES, max_size=3))
    entries = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        entry: dict[str, Any] = {"account": "alice", "folder": FOLDER, "schedule": "every 1h"}
        entry.update(draw(st.dictionaries(st.sampled_from(ENTRY_KEYS), VALUES, max_size=2)))
        entries.append(entry)
    if entries:
        data["accounts"] = entries
    return data


VALID = {
    "base_url": ["https://xquik.com/api/v1", "http://127.0.0.1:9"],
    "timeout": ["1s", "10m", 30],
    "upload": ["file"],
    "credits_per_call": [0, 10, 1_000_000],
    "writes": [1, 100_000],
    "window": ["1s", "1d"],
    "concurrency": [1, 64],
    "initial": ["1s", "1d"],
    "max": ["1d", "30d"],
    "attempts": [1, 100],
    "credits": ["1s", "30d"],
    "account": ["1s", "30d"],
    "auth": ["1s", "30d"],
    "mode": ["auto", "polling"],
    "settle": ["0s", "1h"],
    "poll_interval": ["1s", "1h"],
    "rescan": ["1s", "7d"],
    "fit": ["auto", "always", "off"],
    "size": [16, 4096],
    "crop": ["center", "none"],
    "max_bytes": [1024, 716800],
    "max_source_bytes": [1, 1024**3],
    "max_pixels": [1, 1_000_000_000],
    "min_size": [1, 4096],
    "dir": ["state", "deep/er/state"],
    "level": ["debug", "error"],
    "format": ["json", "console"],
}
ENTRY_VALID = {
    "account": ["alice", "@Bob_2", "x" * 15],
    "schedule": ["every 1h", "*/5 * * * *", "0 9 * * 1-5"],
    "timezone": ["UTC", "Europe/Paris", "Asia/Kolkata"],
    "order": ["sequential", "shuffle", "random"],
    "jitter": ["0s", "1d"],
}


@st.composite
def likely_valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    """Draw a config from in-range values, with now and then one hostile value."""
    data: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTION_KEYS)), max_size=5, unique=True)):
        keys = [key for key in SECTION_KEYS[section] if key in VALID]
        chosen = draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)) if keys else []
        data[section] = {key: draw(st.sampled_from(VALID[key])) for key in chosen}
    if "retry" in data:
        data["retry"].pop("max", None)  # max >= initial is a cross-key rule
    if "pause" in data:
        data["pause"] = {"max": "30d", **{k: v for k, v in data["pause"].items() if k != "max"}}
    entry: dict[str, Any] = {"account": "alice", "folder": FOLDER, "schedule": "every 1h"}
    for key in draw(st.lists(st.sampled_from(sorted(ENTRY_VALID)), max_size=3, unique=True)):
        entry[key] = draw(st.sampled_from(ENTRY_VALID[key]))
    data["accounts"] = [entry]
    if draw(st.integers(0, 3)) == 0:  # sometimes one hostile value somewhere
        section = draw(st.sampled_from(sorted(SECTION_KEYS)))
        data.setdefault(section, {})[draw(st.sampled_from(SECTION_KEYS[section]))] = draw(VALUES)
    return data


def toml_text(data: dict[str, Any]) -> str:
    """Render generated data as TOML (tables, then [[accounts]] entries)."""
    lines = []
    for name, values in data.items():
        if name == "accounts":
            continue
        lines.append(f"[{name}]")
        lines += [f"{json.dumps(key)} = {_value(value)}" for key, value in values.items()]
    for entry in data.get("accounts", []):
        lines.append("[[accounts]]")
        lines += [f"{json.dumps(key)} = {_value(value)}" for key, value in entry.items()]
    return "\n".join(lines) + "\n"


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items()) + "}"


def _use_like_the_daemon(loaded: Settings) -> None:
    """Build what the daemon builds from settings at start, so accepted means usable."""
    fit_settings(loaded)
    _ = loaded.metrics.address, loaded.state_dir, loaded.key_source
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for entry in loaded.accounts:
        if entry.schedule.every is None:
            cron_fire_times(entry.schedule, entry.timezone, now, 2)
        else:
            now + dt.timedelta(seconds=entry.schedule.every + entry.jitter)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(configs(), likely_valid_configs()))
def test_generated_configs_load_or_fail_with_path_lines(
    tmp_path: Path, data: dict[str, Any]
) -> None:
    """load_settings gives usable settings or ConfigError 'path: problem' lines, nothing else."""
    path = tmp_path / "rotator.toml"
    path.write_text(toml_text(data), encoding="utf-8")
    problems: list[str] = []
    try:
        loaded = load_settings(path, {})
    except ConfigError as exc:
        problems = exc.problems or ["(no problem given)"]
    else:
        _use_like_the_daemon(loaded)
    for line in problems:
        assert ": " in line, line
        assert "\n" not in line


@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=likely_valid_configs())
def test_generated_configs_through_the_cli(tmp_path: Path, data: dict[str, Any]) -> None:
    """check exits 2 with a line, or accepts and a dry-run daemon starts; never a traceback."""
    (tmp_path / FOLDER).mkdir(exist_ok=True)
    path = tmp_path / "rotator.toml"
    path.write_text(toml_text(data), encoding="utf-8")
    env = cli_env(None, {"STATE_DIRECTORY": str(tmp_path / "state-default")})
    done = run_cli("check", "--config", str(path), env=env, cwd=tmp_path, timeout=60)
    assert done.returncode in (0, 1, 2), done.stderr
    assert "Traceback" not in done.stderr
    assert "internal error" not in done.stderr
    if done.returncode == 2:
        assert done.stderr.startswith("rotator: "), done.stderr
        return
    if data.get("metrics", {}).get("listen"):
        return  # a fixed port may be taken on this machine: not the config's fault
    daemon = DaemonProcess(path, env, "--dry-run")
    try:
        daemon.wait_for("daemon.started", timeout=30)
        daemon.signal(signal.SIGTERM)
        assert daemon.stop() == 0, daemon.output()[-2000:]
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
    assert "Traceback" not in daemon.output()


ACCEPTED_SHAPES = [
    {"watch": {"rescan": "7d", "settle": "1h"}, "retry": {"initial": "1d", "max": "1d"}},
    {"images": {"max_source_bytes": 1024**3, "max_pixels": 1_000_000_000, "size": 4096}},
    {"pause": {"credits": "30d", "account": "30d", "auth": "30d", "max": "30d"}},
    {"rate_limit": {"writes": 100_000, "window": "1d", "concurrency": 64}},
]


def test_accepted_extremes_start_a_daemon(tmp_path: Path) -> None:
    """Configs at every accepted bound start a dry-run daemon that stops cleanly."""
    (tmp_path / FOLDER).mkdir()
    for number, sections in enumerate(ACCEPTED_SHAPES):
        data: dict[str, Any] = {"state": {"dir": str(tmp_path / f"state{number}")}, **sections}
        data["accounts"] = [{"account": "@Alice", "folder": FOLDER, "schedule": "every 1h"}]
        path = tmp_path / f"rotator{number}.toml"
        path.write_text(toml_text(data), encoding="utf-8")
        _use_like_the_daemon(load_settings(path, {}))
        daemon = DaemonProcess(path, cli_env(None), "--dry-run")
        daemon.wait_for("daemon.started", timeout=20)
        daemon.signal(signal.SIGTERM)
        assert daemon.stop() == 0, daemon.output()
