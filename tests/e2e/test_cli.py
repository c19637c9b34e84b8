"""Every CLI command as a user runs it: a subprocess, real files, the fake Xquik on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DaemonFactory
from fake_xquik import FakeXquik, Reply
from harness import cli_env, make_image, run_cli, write_config

import rotator
from rotator.heartbeat import write_heartbeat
from rotator.state import Pause, StateStore

COMMANDS = (
    "run",
    "check",
    "plan",
    "rotate",
    "status",
    "history",
    "resume",
    "pause",
    "skip",
    "exclude",
    "include",
    "reload",
    "health",
)


def _setup(
    tmp_path: Path,
    server: FakeXquik,
    *,
    schedules: tuple[str, str] = ("every 6h", "every 6h"),
    sections: dict[str, dict[str, object]] | None = None,
) -> tuple[Path, dict[str, bytes]]:
    """Write alice's folder (img1, img2, img10) and bob's (one, two) and a config for both."""
    images = {
        "alice/img1.png": make_image(tmp_path / "alice" / "img1.png", seed=1),
        "alice/img2.jpg": make_image(tmp_path / "alice" / "img2.jpg", seed=2),
        "alice/img10.png": make_image(tmp_path / "alice" / "img10.png", seed=10),
        "bob/one.png": make_image(tmp_path / "bob" / "one.png", seed=3),
        "bob/two.png": make_image(tmp_path / "bob" / "two.png", seed=4),
    }
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=server.base_url,
        entries=[
            {"account": "alice", "folder": "alice", "schedule": schedules[0]},
            {"account": "bob", "folder": "bob", "schedule": schedules[1]},
        ],
        sections=sections,
    )
    return config, images


def _cli(
    config: Path, *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``rotator COMMAND --config CONFIG ...``; assert no traceback whatever happened."""
    result = run_cli(args[0], "--config", str(config), *args[1:], env=env, cwd=cwd, timeout=30)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def _assert_key_nowhere(key: str, state_dir: Path, *texts: str) -> None:
    """Assert the key is in no output and in no byte of any file of the state dir."""
    for text in texts:
        assert key not in text
    files = [path for path in state_dir.rglob("*") if path.is_file()]
    assert any(path.name == "state.db" or path.suffix == ".db" for path in files), files
    for path in files:
        assert key.encode() not in path.read_bytes(), f"the API key is in {path.name}"


def _wait_for_file(path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


# -- version, help -----------------------------------------------------------------------


def test_version_and_help(tmp_path: Path) -> None:
    """--version prints the package version; python -m rotator --help lists every command."""
    version = run_cli("--version", env=cli_env(None), cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout.strip() == f"rotator {rotator.__version__}"
    helped = run_cli("--help", env=cli_env(None), cwd=tmp_path)
    assert helped.returncode == 0
    for command in COMMANDS:
        assert command in helped.stdout
    assert helped.stderr == ""


# -- the key ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [("run",), ("rotate",), ("check", "--online")], ids=["run", "rotate", "check-online"]
)
def test_no_key_exits_2_naming_the_variable(
    tmp_path: Path, fake_xquik: FakeXquik, args: tuple[str, ...]
) -> None:
    """Without a key (and not --dry-run) a command that writes or reads the API exits 2."""
    config, _ = _setup(tmp_path, fake_xquik)
    result = _cli(config, *args, env=cli_env(None))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "XQUIK_API_KEY" in line
    assert fake_xquik.requests() == []


def test_dry_run_daemon_needs_no_key(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """run --dry-run with no key logs avatar.would_upload and sends nothing."""
    config, images = _setup(tmp_path, fake_xquik, schedules=("every 1h", "every 1h"))
    daemon = start_daemon(config, "--dry-run", env=cli_env(None))
    started = daemon.wait_for("daemon.started")[0]
    assert started["dry_run"] is True
    would = daemon.wait_for("avatar.would_upload", count=2, timeout=20)
    assert {(event["account"], event["image"]) for event in would} == {
        ("alice", "img1.png"),
        ("bob", "one.png"),
    }
    assert {event["bytes"] for event in would} == {
        len(images["alice/img1.png"]),
        len(images["bob/one.png"]),
    }
    assert daemon.stop() == 0
    assert fake_xquik.requests() == []


def test_rotate_dry_run_needs_no_key(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """rotate --dry-run with no key: exit 0, would_upload per entry, nothing sent."""
    config, _ = _setup(tmp_path, fake_xquik)
    result = _cli(config, "rotate", "--dry-run", env=cli_env(None))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]  # logs: stderr
    assert {e["account"] for e in events if e["event"] == "avatar.would_upload"} == {
        "alice",
        "bob",
    }
    assert fake_xquik.requests() == []


def test_rotate_dry_run_previews_the_next_real_image_and_changes_nothing(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """After img1 and img2 went out, --dry-run names img10 (twice), then the real one sends it."""
    config, _ = _setup(tmp_path, fake_xquik)
    env = cli_env(fake_xquik.api_key)
    for _ in range(2):
        assert _cli(config, "rotate", "--account", "alice", env=env).returncode == 0
    state_files = {
        path: path.read_bytes() for path in (tmp_path / "state").rglob("*") if path.is_file()
    }

    def previewed() -> list[str]:
        result = _cli(config, "rotate", "--account", "alice", "--dry-run", env=cli_env(None))
        assert result.returncode == 0, result.stderr
        events = [json.loads(line) for line in result.stderr.splitlines()]
        return [e["image"] for e in events if e["event"] == "avatar.would_upload"]

    assert previewed() == ["img10.png"]
    assert previewed() == ["img10.png"], "a dry run must not move the real position"
    assert not (tmp_path / "state" / "dry-run").exists()
    for path, content in state_files.items():
        if path.suffix == ".db":
            assert path.read_bytes() == content, f"{path.name} changed"
    # It also works beside a running daemon, whose lock it never needs.
    daemon = start_daemon(config)
    (uploaded,) = daemon.wait_for("avatar.uploaded")  # bob's first; alice is not due
    assert uploaded["account"] == "bob"
    assert previewed() == ["img10.png"]
    assert daemon.stop() == 0


def test_key_from_key_file(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """api.key_file (relative to the config, chmod 600) supplies the key; it is never shown."""
    secret = tmp_path / "secret" / "xquik.key"
    secret.parent.mkdir()
    secret.write_text(fake_xquik.api_key + "\n", encoding="utf-8")
    secret.chmod(0o600)
    config, _ = _setup(tmp_path, fake_xquik, sections={"api": {"key_file": "secret/xquik.key"}})
    result = _cli(config, "rotate", env=cli_env(None))
    assert result.returncode == 0, result.stderr
    writes = fake_xquik.writes()
    assert len(writes) == 2
    assert all(w.headers.get("x-api-key") == fake_xquik.api_key for w in writes)
    online = _cli(config, "check", "--online", env=cli_env(None))
    assert online.returncode == 0, online.stdout
    assert "from api.key_file" in online.stdout
    _assert_key_nowhere(
        fake_xquik.api_key,
        tmp_path / "state",
        result.stdout,
        result.stderr,
        online.stdout,
        online.stderr,
    )


def test_key_from_credentials_directory(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """$CREDENTIALS_DIRECTORY/xquik-api-key (systemd LoadCredential=) supplies the key."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "xquik-api-key").write_text(fake_xquik.api_key, encoding="utf-8")
    (credentials / "xquik-api-key").chmod(0o400)
    config, _ = _setup(tmp_path, fake_xquik)
    env = cli_env(None, {"CREDENTIALS_DIRECTORY": str(credentials)})
    result = _cli(config, "rotate", "--account", "bob", env=env)
    assert result.returncode == 0, result.stderr
    (write,) = fake_xquik.writes()
    assert write.headers.get("x-api-key") == fake_xquik.api_key
    assert write.account == "bob"
    status = _cli(config, "status", "--json", env=env)
    _assert_key_nowhere(
        fake_xquik.api_key, tmp_path / "state", result.stdout, result.stderr, status.stdout
    )


def test_key_in_readable_config_warns_and_still_works(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """api.key in a chmod 644 config: a config.warning event, and rotations still go out."""
    config, _ = _setup(
        tmp_path,
        fake_xquik,
        schedules=("every 1h", "every 1h"),
        sections={"api": {"key": fake_xquik.api_key}},
    )
    config.chmod(0o644)
    daemon = start_daemon(config, env=cli_env(None))
    started = daemon.wait_for("daemon.started")[0]
    assert started["key_source"] == "api.key"
    warning = daemon.wait_for("config.warning")[0]
    assert "key_file" in warning["message"] or "XQUIK_API_KEY" in warning["message"]
    daemon.wait_for("avatar.uploaded", count=2, timeout=20)
    _wait_for_file(tmp_path / "state" / "heartbeat.json")
    assert daemon.stop() == 0
    assert all(w.headers.get("x-api-key") == fake_xquik.api_key for w in fake_xquik.writes())
    _assert_key_nowhere(fake_xquik.api_key, tmp_path / "state", daemon.output())


def test_key_in_private_config_does_not_warn(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """api.key in a chmod 600 config: no warning, and it works."""
    config, _ = _setup(
        tmp_path,
        fake_xquik,
        schedules=("every 1h", "every 1h"),
        sections={"api": {"key": fake_xquik.api_key}},
    )
    config.chmod(0o600)
    daemon = start_daemon(config, env=cli_env(None))
    daemon.wait_for("avatar.uploaded", count=2, timeout=20)
    assert daemon.stop() == 0
    assert daemon.named("config.warning") == []


def test_key_echoed_by_the_server_is_masked_everywhere(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """An error message quoting the key is masked in the log, the report and the state."""
    config, _ = _setup(tmp_path, fake_xquik)
    echo = Reply(
        status=400, json={"error": "x_rejected", "message": f"key {fake_xquik.api_key} refused"}
    )
    fake_xquik.script(*[echo] * 6)
    env = cli_env(fake_xquik.api_key)
    result = _cli(config, "rotate", "--account", "alice", env=env)
    assert result.returncode == 1
    status = _cli(config, "status", "--json", env=env)
    assert "x_rejected" in status.stdout
    fake_xquik.script_read(
        "account",
        Reply(status=401, json={"error": "unauthenticated", "message": fake_xquik.api_key}),
    )
    online = _cli(config, "check", "--online", env=env)
    assert online.returncode == 1
    assert "unauthenticated" in online.stdout
    _assert_key_nowhere(
        fake_xquik.api_key,
        tmp_path / "state",
        result.stdout,
        result.stderr,
        status.stdout,
        online.stdout,
        online.stderr,
    )


# -- check -----------------------------------------------------------------------------------


def test_check_all_good_lists_every_file(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """check on good folders: exit 0, each file listed ok, in natural order."""
    config, _ = _setup(tmp_path, fake_xquik)
    result = _cli(config, "check", env=cli_env(None))
    assert result.returncode == 0, result.stdout
    listed = re.findall(r"^  (\w+) +(\S+)  ", result.stdout, re.MULTILINE)
    assert listed == [
        ("ok", "img1.png"),
        ("ok", "img2.jpg"),
        ("ok", "img10.png"),
        ("ok", "one.png"),
        ("ok", "two.png"),
    ]
    assert result.stdout.rstrip().endswith("all good")
    assert fake_xquik.requests() == [], "check without --online asks nothing"


def test_check_lists_rejected_files_with_reasons(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """A text file named bad.png and a truncated JPEG are rejected with a reason: exit 1."""
    config, _ = _setup(tmp_path, fake_xquik)
    (tmp_path / "alice" / "bad.png").write_text("this is not a picture\n", encoding="utf-8")
    whole = make_image(tmp_path / "scratch.jpg", seed=7, size=200)
    (tmp_path / "bob" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    result = _cli(config, "check", env=cli_env(None))
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    bad = next(line for line in lines if "bad.png" in line)
    cut = next(line for line in lines if "cut.jpg" in line)
    assert bad.split()[0] == "rejected"
    assert "not an image" in bad
    assert cut.split()[0] == "rejected"
    assert "truncated" in cut
    assert next(line for line in lines if "img10.png" in line).split()[0] == "ok"
    assert "problem" in result.stdout
    assert result.stdout.rstrip().endswith("problems found")


def test_check_entry_without_usable_image_fails(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """An entry whose folder holds no usable image: exit 1, 'no usable image' said."""
    config, _ = _setup(tmp_path, fake_xquik)
    for path in (tmp_path / "bob").iterdir():
        path.unlink()
    result = _cli(config, "check", env=cli_env(None))
    assert result.returncode == 1
    assert "no usable image" in result.stdout


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_check_names_a_folder_that_is_not_there(
    tmp_path: Path, fake_xquik: FakeXquik, kind: str
) -> None:
    """An entry whose folder is missing (or is a file): exit 1, and the report says so."""
    config, _ = _setup(tmp_path, fake_xquik)
    for path in (tmp_path / "bob").iterdir():
        path.unlink()
    (tmp_path / "bob").rmdir()
    if kind == "file":
        (tmp_path / "bob").write_text("not a folder", encoding="utf-8")
    result = _cli(config, "check", env=cli_env(None))
    assert result.returncode == 1
    bob = result.stdout.split("\n\nbob  ")[1].split("\n\n")[0]
    wanted = ("does not exist", "no such", "not found", "missing", "not a folder")
    assert any(words in bob.lower() for words in wanted), bob


def test_check_json_has_per_entry_files(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """check --json parses and lists each entry's files with their state and detail."""
    config, _ = _setup(tmp_path, fake_xquik)
    (tmp_path / "bob" / "notes.png").write_bytes(b"\x89PNG\r\n\x1a\nthen nothing useful")
    result = _cli(config, "check", "--json", env=cli_env(None))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    by_account = {entry["account"]: entry for entry in report["entries"]}
    assert set(by_account) == {"alice", "bob"}
    alice = by_account["alice"]
    assert [f["path"] for f in alice["files"]] == ["img1.png", "img2.jpg", "img10.png"]
    assert {f["state"] for f in alice["files"]} == {"ok"}
    assert alice["problems"] == []
    bob = {f["path"]: f for f in by_account["bob"]["files"]}
    assert bob["notes.png"]["state"] == "rejected"
    assert bob["notes.png"]["detail"]
    assert bob["one.png"]["state"] == "ok"
    assert by_account["bob"]["problems"]


def test_check_online_all_good(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """check --online: the balance and each account's health are shown; exit 0; free reads only."""
    config, _ = _setup(tmp_path, fake_xquik)
    result = _cli(config, "check", "--online", env=cli_env(fake_xquik.api_key))
    assert result.returncode == 0, result.stdout
    assert "credits: 1000" in result.stdout
    for account in ("alice", "bob"):
        online = result.stdout.split("online:")[1].splitlines()
        line = next(line for line in online if line.strip().startswith(f"{account}:"))
        assert "connected" in line
        assert "healthy" in line
    assert fake_xquik.writes() == []
    as_json = json.loads(
        _cli(config, "check", "--online", "--json", env=cli_env(fake_xquik.api_key)).stdout
    )
    assert as_json["online"]["balance"] == 1000
    assert as_json["online"]["accounts"]["alice"]["health"] == "healthy"
    assert as_json["online"]["problems"] == []


@pytest.mark.parametrize(
    ("breakage", "problem"),
    [
        pytest.param("disconnect", "alice: not connected", id="account-not-connected"),
        pytest.param("reauth", "alice: active/needsReauth", id="account-needs-reauth"),
        pytest.param("wrong-key", "key was not accepted", id="wrong-key"),
        pytest.param("no-plan", "the plan is 'inactive'", id="inactive-plan"),
        pytest.param("no-credits", "credits: 5 is less than one write", id="low-balance"),
        pytest.param("unreachable", "the API could not be reached", id="api-unreachable"),
    ],
)
def test_check_online_problems_exit_1(
    tmp_path: Path, fake_xquik: FakeXquik, breakage: str, problem: str
) -> None:
    """check --online: a missing or unhealthy account, a bad key, plan or balance: exit 1."""
    config, _ = _setup(tmp_path, fake_xquik)
    key = fake_xquik.api_key
    if breakage == "disconnect":
        fake_xquik.disconnect_account("alice")
    elif breakage == "reauth":
        fake_xquik.set_health("alice", "needsReauth")
    elif breakage == "no-plan":
        fake_xquik.plan = "inactive"
    elif breakage == "no-credits":
        fake_xquik.balance = 5
    elif breakage == "unreachable":
        fake_xquik.stop()  # a refused connection says nothing about the key
    else:
        key = "xq_" + "0" * 64
    result = _cli(config, "check", "--online", env=cli_env(key))
    assert result.returncode == 1, result.stdout
    problems = [line.strip() for line in result.stdout.splitlines() if "problem: " in line]
    assert any(problem in line for line in problems), result.stdout
    if breakage == "unreachable":
        assert not any("not accepted" in line for line in problems), result.stdout
    assert fake_xquik.writes() == []
    assert key not in result.stdout + result.stderr


# -- plan ------------------------------------------------------------------------------------

PLAN_LINE = re.compile(r"^  (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\S+)  (\S+)", re.MULTILINE)


def _plan_blocks(stdout: str) -> list[list[tuple[dt.datetime, str, str]]]:
    """Split plan output into per-entry lists of (time, zone abbreviation, image)."""
    blocks = []
    for block in stdout.split("\n\n"):
        found = PLAN_LINE.findall(block)
        if found:
            blocks.append(
                [(dt.datetime.fromisoformat(when), zone, image) for when, zone, image in found]
            )
    return blocks


def test_plan_every_6h_costs_1200_credits_a_month(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """every 6h: N times 6 h apart, images in natural order, 4 calls/day, 1,200 credits/month."""
    make_image(tmp_path / "pics" / "img10.png", seed=10)
    make_image(tmp_path / "pics" / "img2.png", seed=2)
    make_image(tmp_path / "pics" / "img1.png", seed=1)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "pics", "schedule": "every 6h"}],
        sections={"api": {"credits_per_call": 10}},
    )
    result = _cli(config, "plan", "--count", "4", env=cli_env(None))
    assert result.returncode == 0, result.stderr
    (block,) = _plan_blocks(result.stdout)
    assert [image for _, _, image in block] == ["img1.png", "img2.png", "img10.png", "img1.png"]
    times = [when for when, _, _ in block]
    assert all(b - a == dt.timedelta(hours=6) for a, b in itertools.pairwise(times))
    assert "4.0 calls/day" in result.stdout
    assert "total: 4.0 calls/day, 120 calls/month, 1,200 credits/month at 10 credits per call" in (
        result.stdout
    )
    assert fake_xquik.requests() == []


def test_plan_cron_in_a_time_zone(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """Cron '30 9 * * 1-5' in Asia/Kolkata: weekdays at 09:30 local; totals add up."""
    config, _ = _setup(
        tmp_path,
        fake_xquik,
        schedules=("every 12h", "30 9 * * 1-5"),
        sections={"api": {"credits_per_call": 5}},
    )
    text = config.read_text(encoding="utf-8")
    text = text.replace(
        'schedule = "30 9 * * 1-5"', 'schedule = "30 9 * * 1-5"\ntimezone = "Asia/Kolkata"'
    )
    config.write_text(text, encoding="utf-8")
    result = _cli(config, "plan", "--count", "6", env=cli_env(None))
    assert result.returncode == 0, result.stderr
    alice, bob = _plan_blocks(result.stdout)
    assert len(alice) == 6
    assert len(bob) == 6
    for when, zone, _ in bob:
        assert (when.hour, when.minute) == (9, 30)
        assert zone == "IST"
        assert when.weekday() < 5
    assert [when.date() for when, _, _ in bob] == sorted({when.date() for when, _, _ in bob})
    assert [image for _, _, image in bob] == ["one.png", "two.png"] * 3
    # every 12h = 2/day; weekdays only = 5/7 a day; at 5 credits per call. A zone without
    # DST keeps 5 fires in every 7-day window, so the numbers are exact.
    per_day = 2 + 5 / 7
    assert "2.0 calls/day" in result.stdout
    assert "0.7 calls/day" in result.stdout
    assert (
        f"total: {per_day:.1f} calls/day, {per_day * 30:.0f} calls/month, "
        f"{per_day * 30 * 5:,.0f} credits/month at 5 credits per call"
    ) in result.stdout


def test_plan_continues_after_the_last_rotation(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """After a rotation sent img1, plan starts at img2, at last success + the interval."""
    config, _ = _setup(tmp_path, fake_xquik)
    env = cli_env(fake_xquik.api_key)
    assert _cli(config, "rotate", "--account", "alice", env=env).returncode == 0
    result = _cli(config, "plan", "--count", "3", env=env)
    assert result.returncode == 0
    alice, bob = _plan_blocks(result.stdout)
    assert [image for _, _, image in alice] == ["img2.jpg", "img10.png", "img1.png"]
    assert [image for _, _, image in bob] == ["one.png", "two.png", "one.png"]
    sent = fake_xquik.writes("alice")[0].arrived_wall
    first = alice[0][0].replace(tzinfo=dt.UTC).timestamp()
    assert abs(first - (sent + 6 * 3600)) < 60


def test_plan_from_json_shows_the_dst_edges(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """plan --from --json: per entry its account, schedule, zone and cron(8)'s instants."""
    make_image(tmp_path / "pics" / "a.png", seed=1)
    entries: list[dict[str, object]] = [
        {"account": "alice", "folder": "pics", "schedule": "30 2 * * *"},
        {"account": "bob", "folder": "pics", "schedule": "*/30 * * * *"},
        {"account": "carol", "folder": "pics", "schedule": "59 23 31 12 *"},
        {"account": "dave", "folder": "pics", "schedule": "@hourly"},
    ]
    for entry in entries:
        entry["timezone"] = "America/New_York"
    config = write_config(tmp_path / "rotator.toml", base_url=fake_xquik.base_url, entries=entries)
    args = ("plan", "--from", "2026-11-01T05:10:00Z", "--count", "4", "--json")
    result = _cli(config, *args, env=cli_env(None))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["from"] == "2026-11-01T05:10:00+00:00"
    by_account = {item["account"]: item for item in report["entries"]}
    # Written by hand from cron(8): 01:xx happens twice on 1 November 2026 in New York;
    # a fixed-time job runs in the first pass only, a wildcard one in both.
    assert by_account["alice"]["timezone"] == "America/New_York"
    assert by_account["alice"]["schedule"] == "30 2 * * *"
    assert by_account["alice"]["instants"] == [
        "2026-11-01T02:30:00-05:00",
        "2026-11-02T02:30:00-05:00",
        "2026-11-03T02:30:00-05:00",
        "2026-11-04T02:30:00-05:00",
    ]
    assert by_account["bob"]["instants"] == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T01:30:00-05:00",
        "2026-11-01T02:00:00-05:00",
    ]
    assert by_account["carol"]["instants"][:2] == [
        "2026-12-31T23:59:00-05:00",
        "2027-12-31T23:59:00-05:00",
    ]
    assert by_account["dave"]["instants"] == [
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T02:00:00-05:00",
        "2026-11-01T03:00:00-05:00",
        "2026-11-01T04:00:00-05:00",
    ]
    assert by_account["bob"]["calls_per_day"] == pytest.approx(48.0)
    assert report["calls_per_day"] == pytest.approx(48.0 + 1.0 + 24.0 + 4 / 1461)


def test_plan_from_spring_forward_in_text(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """plan --from (text): 02:30 skipped in New York on 8 March 2026 is shown at 03:00 EDT."""
    make_image(tmp_path / "pics" / "a.png", seed=1)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[
            {
                "account": "alice",
                "folder": "pics",
                "schedule": "30 2 * * *",
                "timezone": "America/New_York",
            }
        ],
    )
    result = _cli(
        config, "plan", "--from", "2026-03-07T12:00-05:00", "--count", "2", env=cli_env(None)
    )
    assert result.returncode == 0, result.stderr
    (block,) = _plan_blocks(result.stdout)
    assert [(str(when), zone) for when, zone, _ in block] == [
        ("2026-03-08 03:00:00", "EDT"),
        ("2026-03-09 02:30:00", "EDT"),
    ]


@pytest.mark.parametrize("start", ["9999-12-31T23:00:00Z", "0001-01-01T00:00:00Z"])
def test_plan_from_the_ends_of_the_calendar_never_overflows(
    tmp_path: Path, fake_xquik: FakeXquik, start: str
) -> None:
    """plan --from at year 1 or 9999, in zones either side of UTC: exit 0, no traceback."""
    make_image(tmp_path / "pics" / "a.png", seed=1)
    entries = [
        {"account": f"u{n}", "folder": "pics", "schedule": schedule, "timezone": zone}
        for n, (schedule, zone) in enumerate(
            itertools.product(
                ["59 23 31 12 *", "* * * * *", "every 1h"],
                ["America/New_York", "Australia/Lord_Howe"],
            )
        )
    ]
    config = write_config(tmp_path / "rotator.toml", base_url=fake_xquik.base_url, entries=entries)
    result = _cli(config, "plan", "--from", start, "--json", env=cli_env(None))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["entries"]) == len(entries)
    for item in report["entries"]:
        assert len(item["instants"]) <= 5
        for when in item["instants"]:
            assert dt.datetime.fromisoformat(when) >= dt.datetime.fromisoformat(start)


@pytest.mark.parametrize("value", ["2026-03-08T06:00", "yesterday", "2026-13-01T00:00Z"])
def test_plan_from_needs_an_instant_with_an_offset(
    tmp_path: Path, fake_xquik: FakeXquik, value: str
) -> None:
    """plan --from without a UTC offset, or not a date: one line naming --from, exit 2."""
    config, _ = _setup(tmp_path, fake_xquik)
    result = _cli(config, "plan", "--from", value, env=cli_env(None))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("rotator: argument --from: ")
    assert len(result.stderr.splitlines()) == 1


# -- rotate ----------------------------------------------------------------------------------


def test_rotate_once_for_every_entry(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """rotate: exit 0 and exactly one write per entry, the first image of each, byte for byte."""
    config, images = _setup(tmp_path, fake_xquik)
    result = _cli(config, "rotate", env=cli_env(fake_xquik.api_key))
    assert result.returncode == 0, result.stderr
    assert len(fake_xquik.writes()) == 2
    (alice,) = fake_xquik.writes("alice")
    (bob,) = fake_xquik.writes("bob")
    assert alice.file is not None
    assert bob.file is not None
    assert alice.file.data == images["alice/img1.png"]
    assert bob.file.data == images["bob/one.png"]
    # Results on stdout, log lines on stderr: `rotator rotate | ...` reads only results.
    assert sorted(result.stdout.splitlines()) == [
        "alice: uploaded img1.png",
        "bob: uploaded one.png",
    ]
    uploaded = [json.loads(line) for line in result.stderr.splitlines()]
    assert len([e for e in uploaded if e["event"] == "avatar.uploaded"]) == 2
    again = _cli(config, "rotate", "--json", env=cli_env(fake_xquik.api_key))
    assert sorted(
        (item["account"], item["result"], item["image"], item["ok"])
        for item in json.loads(again.stdout)
    ) == [("alice", "uploaded", "img2.jpg", True), ("bob", "uploaded", "two.png", True)]


def test_rotate_one_account(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """rotate --account bob writes bob's avatar only."""
    config, _ = _setup(tmp_path, fake_xquik)
    result = _cli(config, "rotate", "--account", "bob", env=cli_env(fake_xquik.api_key))
    assert result.returncode == 0, result.stderr
    assert [w.account for w in fake_xquik.writes()] == ["bob"]


def test_rotate_a_chosen_image_byte_for_byte(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """rotate --image (relative to the cwd) sends exactly that file, bytes unchanged."""
    config, images = _setup(tmp_path, fake_xquik)
    result = _cli(
        config, "rotate", "--image", "alice/img2.jpg", env=cli_env(fake_xquik.api_key), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (write,) = fake_xquik.writes()
    assert write.account == "alice"
    assert write.file is not None
    assert write.file.filename == "img2.jpg"
    assert write.file.content_type == "image/jpeg"
    assert write.file.data == images["alice/img2.jpg"]


def test_rotate_image_outside_the_folders_exits_2(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """rotate --image with a file outside every entry's folder: exit 2, one line, no write."""
    config, _ = _setup(tmp_path, fake_xquik)
    outside = tmp_path / "elsewhere.png"
    make_image(outside, seed=42)
    result = _cli(config, "rotate", "--image", str(outside), env=cli_env(fake_xquik.api_key))
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("rotator: ")]
    assert "--image" in line
    assert "elsewhere.png" in line
    assert fake_xquik.writes() == []


@pytest.mark.parametrize("name", ["missing.png", "bad.png"], ids=["no-such-file", "rejected"])
def test_rotate_unusable_chosen_image_sends_nothing(
    tmp_path: Path, fake_xquik: FakeXquik, name: str
) -> None:
    """rotate --image naming a missing or rejected file inside the folder: exit 2, no write.

    Sending some other image instead would do what the user did not ask for.
    """
    config, _ = _setup(tmp_path, fake_xquik)
    (tmp_path / "alice" / "bad.png").write_text("not a picture", encoding="utf-8")
    chosen = tmp_path / "alice" / name
    result = _cli(config, "rotate", "--image", str(chosen), env=cli_env(fake_xquik.api_key))
    assert fake_xquik.writes() == [], "a different image was sent instead of the chosen one"
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("rotator: ")]
    assert len(lines) == 1
    assert name in lines[0]


@pytest.mark.parametrize("failure", ["x_rejected", "needs_reauth"])
def test_rotate_failing_write_exits_1(tmp_path: Path, fake_xquik: FakeXquik, failure: str) -> None:
    """A write X keeps rejecting, or an account that needs reconnecting: exit 1, reason shown."""
    config, _ = _setup(tmp_path, fake_xquik)
    if failure == "x_rejected":
        fake_xquik.script(
            *[Reply(status=400, json={"error": "x_rejected", "message": "X said no"})] * 10
        )
    else:
        fake_xquik.set_health("alice", "needsReauth")
    result = _cli(config, "rotate", "--account", "alice", env=cli_env(fake_xquik.api_key))
    assert result.returncode == 1, result.stderr
    writes = fake_xquik.writes("alice")
    assert writes
    assert all(w.status in (400, 403) for w in writes)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("alice:")]
    assert "uploaded" not in line
    if failure == "needs_reauth":  # status says what to do about it
        status = _cli(config, "status", env=cli_env(fake_xquik.api_key)).stdout
        assert "next step:     reconnect or unlock @alice in the Xquik dashboard" in status


def test_rotate_unknown_account_exits_2(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """rotate --account with no such entry: exit 2, one line naming it, nothing sent."""
    config, _ = _setup(tmp_path, fake_xquik)
    result = _cli(config, "rotate", "--account", "carol", env=cli_env(fake_xquik.api_key))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "carol" in line
    assert fake_xquik.requests() == []


# -- status, resume --------------------------------------------------------------------------


def test_status_without_state_says_so_and_exits_1(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """status, resume and health where no daemon ever ran: exit 1, naming the directory."""
    config, _ = _setup(tmp_path, fake_xquik)
    for command in ("status", "resume"):
        result = _cli(config, command, env=cli_env(None))
        assert result.returncode == 1, result.stderr
        assert f"no state in {tmp_path / 'state'}" in result.stderr
        assert result.stdout == ""
    health = _cli(config, "health", env=cli_env(None))
    assert health.returncode == 1
    assert "unhealthy: no heartbeat" in health.stdout


def test_status_before_any_rotation_says_never(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """status once the state exists but nothing rotated: exit 0, 'never', JSON with nulls."""
    config, _ = _setup(tmp_path, fake_xquik)
    StateStore.open(tmp_path / "state").close()
    result = _cli(config, "status", env=cli_env(None))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("last success:  never") == 2
    assert "daemon: not running" in result.stdout
    report = json.loads(_cli(config, "status", "--json", env=cli_env(None)).stdout)
    assert [e["last_success"] for e in report["entries"]] == [None, None]
    assert report["pauses"] == []


def test_commands_find_the_state_beside_the_config_from_any_directory(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """With no state.dir, rotate run in one directory and status run in another share state."""
    config, _ = _setup(tmp_path, fake_xquik)
    text = config.read_text()
    config.write_text(re.sub(r"(?m)^dir = .*\n", "", text))  # [state] left empty
    assert "dir = " not in config.read_text()
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    env = cli_env(fake_xquik.api_key)
    assert _cli(config, "rotate", "--account", "alice", env=env, cwd=here).returncode == 0
    result = _cli(config, "status", "--json", env=env, cwd=there)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["state_dir"] == str(config.parent / "state")
    assert report["entries"][0]["current_image"] == "img1.png"
    assert not (here / "state").exists()
    assert not (there / "state").exists()


def test_status_after_a_rotation(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """After rotate: status shows the last success, the current image and next due (+6 h)."""
    config, _ = _setup(tmp_path, fake_xquik)
    env = cli_env(fake_xquik.api_key)
    assert _cli(config, "rotate", "--account", "alice", env=env).returncode == 0
    text = _cli(config, "status", env=env)
    assert text.returncode == 0
    alice_block = text.stdout.split("\n\n")[1]
    assert alice_block.splitlines()[0].startswith("alice")
    assert "current image: img1.png" in alice_block
    assert "never" not in alice_block
    report = json.loads(_cli(config, "status", "--json", env=env).stdout)
    alice, bob = report["entries"]
    assert alice["current_image"] == "img1.png"
    assert alice["last_outcome"] == "success"
    last = dt.datetime.fromisoformat(alice["last_success"])
    assert dt.datetime.fromisoformat(alice["next_due"]) - last == dt.timedelta(hours=6)
    assert abs(last.timestamp() - fake_xquik.writes()[0].arrived_wall) < 60
    assert bob["last_success"] is None


def test_credits_pause_shown_then_resumed(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """A 402 stores a key-wide pause; status shows it; resume ends it; status shows none."""
    config, _ = _setup(tmp_path, fake_xquik, sections={"pause": {"credits": "1h", "max": "12h"}})
    env = cli_env(fake_xquik.api_key)
    no_credits = Reply(
        status=402,
        json={"error": "insufficient_credits", "message": "Insufficient credits", "balance": "0"},
    )
    fake_xquik.script(*[no_credits] * 4)
    rotated = _cli(config, "rotate", "--account", "alice", env=env)
    assert rotated.returncode == 1
    assert any(json.loads(line)["event"] == "pause.started" for line in rotated.stderr.splitlines())

    report = json.loads(_cli(config, "status", "--json", env=env).stdout)
    (pause,) = report["pauses"]
    assert pause["scope"] == "key"
    assert pause["kind"] == "credits"
    shown = _cli(config, "status", env=env).stdout
    assert "pauses: none" not in shown
    assert "all accounts: credits" in shown

    resumed = _cli(config, "resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "ended the pause of all accounts" in resumed.stdout
    assert json.loads(_cli(config, "status", "--json", env=env).stdout)["pauses"] == []
    assert "pauses: none" in _cli(config, "status", env=env).stdout


def test_resume_tells_the_running_daemon(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """resume while the daemon waits out a credits pause: it ends it, rotates, does not reload."""
    config, _ = _setup(
        tmp_path,
        fake_xquik,
        schedules=("every 1h", "every 1h"),
        sections={"pause": {"credits": "1h", "max": "12h"}},
    )
    fake_xquik.script(Reply(status=402, json={"error": "insufficient_credits", "balance": "0"}))
    daemon = start_daemon(config)
    daemon.wait_for("pause.started", lambda e: e["scope"] == "key")
    _wait_for_file(tmp_path / "state" / "heartbeat.json")
    result = _cli(config, "resume", env=cli_env(fake_xquik.api_key))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ended the pause of all accounts\n"
    daemon.wait_for("pause.ended", lambda e: e["scope"] == "key")
    daemon.wait_for("avatar.uploaded", count=2, timeout=20)
    assert daemon.named("daemon.reloaded") == []
    assert daemon.stop() == 0


def test_resume_signals_no_stranger_after_the_daemon_stopped(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """resume with a stale heartbeat sends no SIGHUP to whatever process now has that pid."""
    config, _ = _setup(tmp_path, fake_xquik, sections={"pause": {"credits": "1h", "max": "12h"}})
    env = cli_env(fake_xquik.api_key)
    fake_xquik.script(Reply(status=402, json={"error": "insufficient_credits", "balance": "0"}))
    assert _cli(config, "rotate", "--account", "alice", env=env).returncode == 1
    # A process that now holds the pid the last heartbeat names (it shrugs SIGHUP off).
    stranger = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stranger.stdout is not None
        assert stranger.stdout.readline().strip() == "ready"
        an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        write_heartbeat(tmp_path / "state", an_hour_ago, {"pid": stranger.pid})
        result = _cli(config, "resume", env=env)
        assert result.returncode == 0, result.stderr
        assert "ended the pause of all accounts" in result.stdout
        assert "told the running daemon" not in result.stdout, "SIGHUP went to a stranger"
    finally:
        stranger.kill()
        stranger.wait(10)
        if stranger.stdout is not None:
            stranger.stdout.close()


def test_resume_unknown_account_exits_2(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """resume --account with no such entry: exit 2 naming it, like rotate --account."""
    config, _ = _setup(tmp_path, fake_xquik)
    result = _cli(config, "resume", "--account", "carol", env=cli_env(None))
    assert result.returncode == 2, result.stdout
    (line,) = result.stderr.splitlines()
    assert "carol" in line


# -- typos and argument order ---------------------------------------------------------------


def test_a_mistyped_command_gets_a_suggestion(tmp_path: Path) -> None:
    """rotator stauts: exit 2, one line suggesting status; nonsense lists the commands."""
    typo = run_cli("stauts", env=cli_env(None))
    assert typo.returncode == 2
    assert typo.stderr.splitlines() == [
        "rotator: unknown command 'stauts'; did you mean 'status'? (see 'rotator --help')"
    ]
    nonsense = run_cli("frobnicate", env=cli_env(None))
    assert nonsense.returncode == 2
    (line,) = nonsense.stderr.splitlines()
    assert "did you mean" not in line
    commands = "run, check, plan, rotate, status, history, resume, pause, skip, exclude, include"
    assert f"commands: {commands}, reload, health" in line


def test_config_may_come_before_or_after_the_command(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """rotator --config P status and rotator status --config P read the same config."""
    config, _ = _setup(tmp_path, fake_xquik)
    StateStore.open(tmp_path / "state").close()
    before = run_cli("--config", str(config), "status", "--json", env=cli_env(None))
    after = run_cli("status", "--json", "--config", str(config), env=cli_env(None))
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    reports = [json.loads(result.stdout) for result in (before, after)]
    assert [report["state_dir"] for report in reports] == [str(tmp_path / "state")] * 2
    folders = [[entry["folder"] for entry in report["entries"]] for report in reports]
    assert folders == [[str(tmp_path / "alice"), str(tmp_path / "bob")]] * 2


def test_a_rotator_variable_that_sets_nothing_is_a_warning(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """ROTATOR_RATELIMIT__WRITES: check still passes, and stderr names the real variable."""
    config, _ = _setup(tmp_path, fake_xquik)
    result = _cli(config, "check", env=cli_env(None, {"ROTATOR_RATELIMIT__WRITES": "3"}))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "rotator: warning: ROTATOR_RATELIMIT__WRITES sets nothing and is ignored (no section "
        "'ratelimit'); did you mean ROTATOR_RATE_LIMIT__WRITES?"
    ]


@pytest.mark.parametrize(
    "args",
    [
        ("check",),
        ("plan", "--count", "1"),
        ("rotate", "--dry-run"),
        ("status",),
        ("history",),
        ("pause", "--account", "alice", "--for", "1h"),
        ("resume",),
        ("skip", "--account", "alice"),
        ("exclude", "--account", "alice", "--image", "img2.jpg"),
        ("include", "--account", "alice", "--image", "img2.jpg"),
        ("health",),
        ("reload",),
    ],
    ids=lambda args: args[0],
)
def test_every_command_but_run_prints_json(
    tmp_path: Path, fake_xquik: FakeXquik, args: tuple[str, ...]
) -> None:
    """--json on every command but run: stdout is one JSON document, whatever the exit code."""
    config, _ = _setup(tmp_path, fake_xquik)
    StateStore.open(tmp_path / "state").close()
    if args[0] == "include":
        _cli(config, "exclude", "--account", "alice", "--image", "img2.jpg", env=cli_env(None))
    result = _cli(config, *args, "--json", env=cli_env(None), cwd=tmp_path / "alice")
    # health and reload find no daemon (exit 1); the others succeed.
    assert result.returncode == (1 if args[0] in ("health", "reload") else 0), result.stderr
    if args[0] == "reload":
        assert result.stdout == ""  # no daemon: nothing to report but the error line
        return
    json.loads(result.stdout)


# -- history ---------------------------------------------------------------------------------


def test_history_shows_what_was_sent_when_and_failures(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """history: successes and refusals oldest first, with request ids; filters and JSON."""
    config, _ = _setup(tmp_path, fake_xquik)
    env = cli_env(fake_xquik.api_key)
    fake_xquik.script(
        Reply(status=422, json={"error": "x_rejected", "message": "X said no"}), account="bob"
    )
    assert _cli(config, "rotate", env=env).returncode == 0
    assert _cli(config, "rotate", "--account", "alice", env=env).returncode == 0
    text = _cli(config, "history", env=env)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    alice = [line for line in lines if "  alice  " in line]
    assert [line.split()[2:4] for line in alice] == [
        ["success", "img1.png"],
        ["success", "img2.jpg"],
    ]
    bob = [line for line in lines if "  bob  " in line]
    # The refused image is passed over in the same rotation: the next one goes out.
    assert [line.split()[2:4] for line in bob] == [["error", "one.png"], ["success", "two.png"]]
    assert "x_rejected: X said no" in bob[0]
    assert all("(request req_" in line for line in lines)
    report = json.loads(_cli(config, "history", "--json", "--account", "bob", env=env).stdout)
    assert [(row["image"], row["outcome"], row["error"]) for row in report["history"]] == [
        ("one.png", "error", "x_rejected"),
        ("two.png", "success", None),
    ]
    recent = _cli(config, "history", "--since", "1h", "--limit", "1", env=env).stdout
    assert len(recent.splitlines()) == 1
    assert "img2.jpg" in recent  # the newest row
    future = _cli(config, "history", "--since", "2999-01-01", env=env)
    assert future.returncode == 0
    assert future.stdout.startswith("no history since 2999-01-01")
    _assert_key_nowhere(fake_xquik.api_key, tmp_path / "state", text.stdout, text.stderr)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--since", "last tuesday"), "--since: 'last tuesday' is neither a duration"),
        (("--account", "carol"), "--account: no [[accounts]] entry has account 'carol'"),
        (("--limit", "0"), "--limit"),
    ],
)
def test_history_bad_arguments_exit_2(
    tmp_path: Path, fake_xquik: FakeXquik, args: tuple[str, ...], needle: str
) -> None:
    """history with a bad --since, --account or --limit: exit 2 and one line naming it."""
    config, _ = _setup(tmp_path, fake_xquik)
    StateStore.open(tmp_path / "state").close()
    result = _cli(config, "history", *args, env=cli_env(None))
    assert result.returncode == 2, result.stdout
    (line,) = result.stderr.splitlines()
    assert needle in line


# -- health ----------------------------------------------------------------------------------


def test_health_while_running_then_stale(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """health: 0 while the daemon beats (rotate goes through it); 1 once the beat is 30 s old."""
    config, _ = _setup(tmp_path, fake_xquik, schedules=("every 1h", "every 1h"))
    state_dir = tmp_path / "state"
    env = cli_env(fake_xquik.api_key)
    daemon = start_daemon(config)
    daemon.wait_for("daemon.started")
    _wait_for_file(state_dir / "heartbeat.json")
    healthy = _cli(config, "health", env=env)
    assert healthy.returncode == 0, healthy.stdout
    (line,) = healthy.stdout.splitlines()
    assert line.startswith("healthy")
    assert f"pid {daemon.proc.pid}" in line
    assert "daemon: running" in _cli(config, "status", env=env).stdout
    fake_xquik.wait_for_writes(2)
    by_daemon = _cli(config, "rotate", env=env)
    assert by_daemon.returncode == 0, by_daemon.stderr
    assert by_daemon.stdout == "alice: uploaded img2.jpg\nbob: uploaded two.png\n"
    assert [e["command"] for e in daemon.named("control.command")] == ["rotate"]
    assert len(fake_xquik.writes()) == 4, "the daemon made the writes rotate asked for"
    assert daemon.stop() == 0

    old = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=45)
    write_heartbeat(state_dir, old, {"pid": daemon.proc.pid, "pause_kinds": []})
    stale = _cli(config, "health", env=env)
    assert stale.returncode == 1
    (line,) = stale.stdout.splitlines()
    assert line.startswith("unhealthy")
    age = re.search(r"(\d+)s ago", line)
    assert age is not None, line
    assert 45 <= int(age.group(1)) < 120


LONG_PAUSES = {"pause": {"credits": "1h", "account": "1h", "auth": "1h", "max": "12h"}}


def test_health_is_unhealthy_while_credits_stop_every_rotation(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """Out of credits: the daemon lives but health exits 1 with the next step; --allow-paused 0."""
    fake_xquik.balance = 0
    fake_xquik.enforce_credits = True
    config, _ = _setup(tmp_path, fake_xquik, sections=LONG_PAUSES)
    env = cli_env(fake_xquik.api_key)
    daemon = start_daemon(config)
    (started,) = daemon.wait_for("pause.started")
    assert started["kind"] == "credits"
    assert "top up credits" in str(started["next_step"])
    _wait_for_file(tmp_path / "state" / "heartbeat.json")
    sick = _cli(config, "health", env=env)
    assert sick.returncode == 1, sick.stdout
    (line,) = sick.stdout.splitlines()
    assert line.startswith("unhealthy: all accounts paused: credits (insufficient_credits)")
    assert "next step: top up credits" in line
    verdict = json.loads(_cli(config, "health", "--json", env=env).stdout)
    assert verdict["healthy"] is False
    assert verdict["paused"] == ["credits"]
    assert verdict["pid"] == daemon.proc.pid
    assert verdict["line"] == line
    alive = _cli(config, "health", "--allow-paused", env=env)
    assert alive.returncode == 0, alive.stdout
    assert alive.stdout.startswith("healthy")
    assert "paused: credits" in alive.stdout
    status = _cli(config, "status", env=env).stdout
    assert "next step: top up credits" in status
    assert daemon.stop() == 0


def test_health_is_unhealthy_only_when_every_account_is_paused(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """An account pause on alice alone is healthy; on alice and bob it is not (exit 1)."""
    config, _ = _setup(tmp_path, fake_xquik)
    state_dir = tmp_path / "state"
    now = dt.datetime.now(dt.UTC)
    with StateStore.open(state_dir) as state:
        state.set_pause(
            Pause(
                scope="account",
                account="alice",
                kind="account",
                reason="account_needs_reauth",
                until=now + dt.timedelta(hours=1),
                level=0,
                started=now,
            ),
            now=now,
        )
    write_heartbeat(state_dir, now, {"pid": 1, "pause_kinds": ["account"]})
    one = _cli(config, "health", env=cli_env(None))
    assert one.returncode == 0, one.stdout
    with StateStore.open(state_dir) as state:
        state.set_pause(
            Pause(
                scope="account",
                account="bob",
                kind="x_rate_limited",
                reason="x_rate_limited",
                until=now + dt.timedelta(minutes=5),
                level=0,
                started=now,
            ),
            now=now,
        )
    throttled = _cli(config, "health", env=cli_env(None))
    assert throttled.returncode == 0, "a throttle of minutes is not a reason to restart"
    with StateStore.open(state_dir) as state:
        state.set_pause(
            Pause(
                scope="account",
                account="bob",
                kind="daily",
                reason="x_daily_limit",
                until=now + dt.timedelta(hours=20),
                level=0,
                started=now,
            ),
            now=now,
        )
    both = _cli(config, "health", env=cli_env(None))
    assert both.returncode == 1, both.stdout
    (line,) = both.stdout.splitlines()
    assert line.startswith("unhealthy: every account is paused")
    assert "reconnect or unlock @alice in the Xquik dashboard" in line
    assert "rotator resume --account alice" in line


def test_health_without_heartbeat_exits_1(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """health with no daemon ever run: exit 1 with one line saying why."""
    config, _ = _setup(tmp_path, fake_xquik)
    result = _cli(config, "health", env=cli_env(None))
    assert result.returncode == 1
    (line,) = result.stdout.splitlines()
    assert line.startswith("unhealthy")
    assert "heartbeat" in line


def test_health_of_a_dry_run_daemon(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """health (same config) reports a running --dry-run daemon as healthy."""
    config, _ = _setup(tmp_path, fake_xquik, schedules=("every 1h", "every 1h"))
    daemon = start_daemon(config, "--dry-run", env=cli_env(None))
    daemon.wait_for("avatar.would_upload", count=2, timeout=20)
    deadline = time.monotonic() + 15
    while not list((tmp_path / "state").rglob("heartbeat.json")):
        assert time.monotonic() < deadline, "the dry-run daemon wrote no heartbeat"
        time.sleep(0.05)
    result = _cli(config, "health", env=cli_env(None))
    assert daemon.stop() == 0
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("healthy")


def test_status_lists_images_the_server_refused(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """An image refused by the server (x_rejected) shows in status with its code."""
    config, _ = _setup(tmp_path, fake_xquik)
    env = cli_env(fake_xquik.api_key)
    fake_xquik.script(
        Reply(status=422, json={"error": "x_rejected", "message": "no"}), account="alice"
    )
    assert _cli(config, "rotate", "--account", "alice", env=env).returncode == 0
    result = _cli(config, "status", "--json", env=env)
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["refused_images"] == [{"path": "img1.png", "code": "x_rejected"}]
    text = _cli(config, "status", env=env).stdout
    assert "img1.png  (x_rejected)" in text
