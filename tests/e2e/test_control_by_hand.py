"""Control by hand through the real CLI: with a running daemon (its socket), and without one."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
from pathlib import Path

from conftest import DaemonFactory
from fake_xquik import FakeXquik, Reply
from harness import DaemonProcess, cli_env, make_image, run_cli, write_config

IMAGES = ("img1.png", "img2.png", "img3.png", "img10.png")


def _setup(
    tmp_path: Path, server: FakeXquik, order: str = "sequential"
) -> tuple[Path, dict[str, str]]:
    """Write alice's folder of four images (natural order 1, 2, 3, 10) and a config."""
    hashes = {}
    for seed, name in enumerate(IMAGES, start=1):
        data = make_image(tmp_path / "alice" / name, seed=seed)
        hashes[hashlib.sha256(data).hexdigest()] = name
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=server.base_url,
        entries=[
            {"account": "alice", "folder": "alice", "schedule": "every 6h", "order": order},
            {"account": "bob", "folder": "alice", "schedule": "every 6h"},
        ],
        sections={"pause": {"credits": "1h", "account": "1h", "max": "12h"}},
    )
    return config, hashes


def _cli(config: Path, *args: str, server: FakeXquik) -> subprocess.CompletedProcess[str]:
    result = run_cli(
        args[0],
        "--config",
        str(config),
        *args[1:],
        env=cli_env(server.api_key),
        cwd=config.parent,  # so --image alice/x.png is a path from here
        timeout=60,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert server.api_key not in result.stdout + result.stderr
    return result


def _sent(server: FakeXquik, hashes: dict[str, str], account: str = "alice") -> list[str]:
    """Return the images the server applied for ``account``, in order."""
    return [hashes[w.file.sha256] for w in server.applied_writes(account) if w.file is not None]


def _started(start_daemon: DaemonFactory, config: Path) -> DaemonProcess:
    daemon = start_daemon(config)
    daemon.wait_for("control.listening")
    daemon.wait_for("avatar.uploaded", lambda e: e["account"] == "alice")
    daemon.wait_for("avatar.uploaded", lambda e: e["account"] == "bob")
    return daemon


def test_socket_is_owner_only_and_gone_after_stop(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """The control socket is a 0600 socket in the state dir while the daemon runs, then gone."""
    config, _ = _setup(tmp_path, fake_xquik)
    daemon = _started(start_daemon, config)
    path = tmp_path / "state" / "control.sock"
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert daemon.stop() == 0
    assert not path.exists()


def test_rotate_asks_the_running_daemon(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """rotate while the daemon runs: the daemon rotates now (exit 0); --image forces the image."""
    config, hashes = _setup(tmp_path, fake_xquik)
    daemon = _started(start_daemon, config)
    result = _cli(config, "rotate", "--account", "alice", server=fake_xquik)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "alice: uploaded img2.png\n"
    forced = _cli(
        config, "rotate", "--account", "alice", "--image", "alice/img10.png", server=fake_xquik
    )
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout == "alice: uploaded img10.png\n"
    assert _sent(fake_xquik, hashes) == ["img1.png", "img2.png", "img10.png"]
    by_hand = daemon.named("control.command")
    assert [(e["command"], e["exit"]) for e in by_hand] == [("rotate", 0), ("rotate", 0)]
    missing = _cli(config, "rotate", "--account", "alice", "--image", "nope.png", server=fake_xquik)
    assert missing.returncode == 2
    assert missing.stderr.startswith("rotator: --image: nope.png cannot be sent")
    assert len(fake_xquik.applied_writes("alice")) == 3
    assert daemon.stop() == 0


def test_pause_and_resume_through_the_daemon(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """pause holds alice's writes (rotate says paused, exit 1); resume ends it without a reload."""
    config, hashes = _setup(tmp_path, fake_xquik)
    daemon = _started(start_daemon, config)
    paused = _cli(config, "pause", "--account", "alice", "--for", "2h", server=fake_xquik)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout == "paused alice for 2h\n"
    (started,) = daemon.wait_for("pause.started")
    assert (started["account"], started["kind"], started["seconds"]) == ("alice", "manual", 7200)
    refused = _cli(config, "rotate", "--account", "alice", server=fake_xquik)
    assert refused.returncode == 1
    assert refused.stdout.startswith("alice: paused ")
    status = json.loads(_cli(config, "status", "--json", server=fake_xquik).stdout)
    assert [(p["account"], p["kind"]) for p in status["pauses"]] == [("alice", "manual")]
    bob = _cli(config, "rotate", "--account", "bob", server=fake_xquik)
    assert bob.returncode == 0, "only alice is paused"

    resumed = _cli(config, "resume", "--account", "alice", server=fake_xquik)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == "ended the pause of alice\n"
    (ended,) = daemon.wait_for("pause.ended")
    assert ended["why"] == "resumed by hand"
    assert _cli(config, "rotate", "--account", "alice", server=fake_xquik).returncode == 0
    assert _sent(fake_xquik, hashes) == ["img1.png", "img2.png"]
    assert daemon.named("daemon.reloaded") == [], "resume must not reload the config"
    nothing = _cli(config, "resume", server=fake_xquik)
    assert nothing.stdout == "no pause to end\n"
    assert daemon.stop() == 0


def test_skip_exclude_include_through_the_daemon(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """skip passes img2; exclude keeps img3 out until include; the next rotations show it."""
    config, hashes = _setup(tmp_path, fake_xquik)
    daemon = _started(start_daemon, config)
    skipped = _cli(config, "skip", "--account", "alice", server=fake_xquik)
    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stdout == "alice: skipped img2.png\n"
    excluded = _cli(
        config, "exclude", "--account", "alice", "--image", "img3.png", server=fake_xquik
    )
    assert excluded.returncode == 0, excluded.stderr
    folder = tmp_path / "alice"
    assert excluded.stdout == f"alice: img3.png excluded\nexcluded for alice ({folder}): img3.png\n"
    assert _cli(config, "rotate", "--account", "alice", server=fake_xquik).returncode == 0
    assert _cli(config, "rotate", "--account", "alice", server=fake_xquik).returncode == 0
    assert _sent(fake_xquik, hashes) == ["img1.png", "img10.png", "img1.png"]
    assert _cli(config, "rotate", "--account", "bob", server=fake_xquik).returncode == 0
    assert _sent(fake_xquik, hashes, "bob") == ["img1.png", "img2.png"], "bob is not touched"

    absolute = str(tmp_path / "alice" / "img3.png")
    included = _cli(config, "include", "--account", "alice", "--image", absolute, server=fake_xquik)
    assert included.returncode == 0, included.stderr
    assert (
        included.stdout == f"alice: img3.png included again\nnone excluded for alice ({folder})\n"
    )
    again = _cli(config, "include", "--account", "alice", "--image", absolute, server=fake_xquik)
    assert again.returncode == 1
    assert (
        again.stderr
        == f"rotator: alice: img3.png is not excluded; none excluded for alice ({folder})\n"
    )
    for _ in range(2):
        assert _cli(config, "rotate", "--account", "alice", server=fake_xquik).returncode == 0
    assert _sent(fake_xquik, hashes)[3:] == ["img2.png", "img3.png"]
    outside = _cli(
        config, "exclude", "--account", "alice", "--image", "/etc/passwd", server=fake_xquik
    )
    assert outside.returncode == 2
    assert "--image: /etc/passwd is not inside the folder" in outside.stderr
    unknown = _cli(config, "skip", "--account", "carol", server=fake_xquik)
    assert unknown.returncode == 2
    assert "carol" in unknown.stderr
    assert daemon.stop() == 0


def test_without_a_daemon_the_commands_act_on_the_state(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """No daemon: pause, skip and exclude change the state; a daemon started later keeps them."""
    config, hashes = _setup(tmp_path, fake_xquik)
    env = cli_env(fake_xquik.api_key)
    assert run_cli("rotate", "--config", str(config), env=env).returncode == 0
    paused = _cli(config, "pause", "--account", "bob", server=fake_xquik)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.startswith("paused bob until resumed")
    skipped = _cli(config, "skip", "--account", "alice", server=fake_xquik)
    assert skipped.stdout == "alice: skipped img2.png\n"
    excluded = _cli(
        config, "exclude", "--account", "alice", "--image", "img3.png", server=fake_xquik
    )
    assert excluded.returncode == 0, excluded.stderr
    daemon = start_daemon(config)
    daemon.wait_for("control.listening")
    assert _cli(config, "rotate", "--account", "alice", server=fake_xquik).returncode == 0
    assert _sent(fake_xquik, hashes) == ["img1.png", "img10.png"]
    refused = _cli(config, "rotate", "--account", "bob", server=fake_xquik)
    assert refused.returncode == 1, "bob's pause was kept by the daemon"
    assert daemon.stop() == 0
    resumed = _cli(config, "resume", "--account", "bob", server=fake_xquik)
    assert resumed.stdout == "ended the pause of bob\n"
    assert _cli(config, "rotate", "--account", "bob", server=fake_xquik).returncode == 0


def test_bad_durations_and_missing_arguments_exit_2(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """pause --for nonsense and exclude without --image: exit 2, one line, nothing changed."""
    config, _ = _setup(tmp_path, fake_xquik)
    for args in (
        ("pause", "--for", "soon"),
        ("pause", "--for", "0s"),
        ("pause", "--for", "99999999d"),
        ("exclude", "--account", "alice"),
        ("skip",),
    ):
        result = _cli(config, *args, server=fake_xquik)
        assert result.returncode == 2, args
        assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "state").exists()


def test_rotate_while_the_entry_is_rotating_is_refused(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """rotate while the daemon's own write for alice is on the wire: exit 1, nothing extra sent."""
    config, hashes = _setup(tmp_path, fake_xquik)
    fake_xquik.script(Reply(delay=4.0), account="alice")
    daemon = start_daemon(config)
    fake_xquik.wait_for(
        lambda reqs: any(r.is_write and r.account == "alice" for r in reqs), 15, "alice's write"
    )
    busy = _cli(config, "rotate", "--account", "alice", server=fake_xquik)
    assert busy.returncode == 1
    assert busy.stderr == "rotator: alice: a rotation is running already; try again soon\n"
    skipping = _cli(config, "skip", "--account", "alice", server=fake_xquik)
    assert skipping.returncode == 1
    assert "a rotation is running" in skipping.stderr
    daemon.wait_for("avatar.uploaded", lambda e: e["account"] == "alice")
    assert _sent(fake_xquik, hashes) == ["img1.png"]
    assert daemon.stop() == 0
