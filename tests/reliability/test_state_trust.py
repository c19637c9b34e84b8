"""A state that cannot be trusted stops every command with one line and exit 2."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fake_xquik import FakeXquik
from harness import cli_env, make_image, run_cli, write_config
from PIL import Image

from rotator.heartbeat import HEARTBEAT_NAME
from rotator.state import DB_NAME, StateStore, WriteRecord

COMMANDS = (("run",), ("status",), ("status", "--json"), ("health",), ("plan",), ("resume",))


def _setup(tmp_path: Path, server: FakeXquik) -> tuple[Path, Path, dict[str, str]]:
    make_image(tmp_path / "img" / "a.png", seed=1)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=server.base_url,
        entries=[{"account": "alice", "folder": "img", "schedule": "every 1h"}],
    )
    return config, tmp_path / "state", cli_env(server.api_key)


def _state_with_a_position(state_dir: Path) -> None:
    with StateStore.open(state_dir) as state:
        state.save_write(
            WriteRecord(
                entry_id="alice:x",
                account="alice",
                image="a.png",
                sha256="0" * 64,
                source_sha256="0" * 64,
                idempotency_key="k",
                rotation_id="r",
                started=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                last_status="sending",
            ),
            now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        )
        for n in range(300):  # enough rows for several pages
            state.cache_put(f"/img/{n:04}.png" + "x" * 200, 1, 1, {"usable": False})


def _assert_refused(config: Path, env: dict[str, str], words: str) -> None:
    for command in COMMANDS:
        done = run_cli(*command, "--config", str(config), env=env, timeout=30)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (command, done.stderr)
        assert words in lines[0], (command, lines[0])
        assert "Traceback" not in done.stderr
        assert "never" not in done.stdout


def test_garbage_database_is_refused_by_every_command(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """A db overwritten with junk: run, status, health, plan, resume all exit 2, one line."""
    config, state_dir, env = _setup(tmp_path, fake_xquik)
    state_dir.mkdir(mode=0o700)
    (state_dir / DB_NAME).write_bytes(b"not a database at all\n" * 200)
    _assert_refused(config, env, "not a SQLite database")


def test_zero_byte_database_is_refused_not_renewed(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """A db truncated to 0 bytes is refused with how to recover, and left as it is."""
    config, state_dir, env = _setup(tmp_path, fake_xquik)
    _state_with_a_position(state_dir)
    (state_dir / DB_NAME).write_bytes(b"")
    for wal in state_dir.glob(f"{DB_NAME}-*"):
        wal.unlink()
    _assert_refused(config, env, "empty (0 bytes)")
    assert (state_dir / DB_NAME).stat().st_size == 0


def test_truncated_database_is_refused(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """A db cut short (pages missing) is refused as damaged by every command."""
    config, state_dir, env = _setup(tmp_path, fake_xquik)
    _state_with_a_position(state_dir)
    db = state_dir / DB_NAME
    with db.open("r+b") as file:
        file.truncate(db.stat().st_size // 2)
    for wal in state_dir.glob(f"{DB_NAME}-*"):
        wal.unlink()
    _assert_refused(config, env, "state database")


def test_read_only_database_is_one_clear_line(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """A read-only rotator.db (mode 0400, or a read-only mount for root) stops run: exit 2."""
    config, state_dir, env = _setup(tmp_path, fake_xquik)
    _state_with_a_position(state_dir)
    (state_dir / DB_NAME).chmod(0o400)
    mounted = False
    if os.geteuid() == 0:  # root writes 0400 files: make the file system read-only instead
        bind = subprocess.run(
            ["mount", "--bind", "-o", "ro", str(state_dir), str(state_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        if bind.returncode != 0:
            pytest.skip(f"root ignores file modes and a read-only mount is refused: {bind.stderr}")
        mounted = True
    try:
        done = run_cli("run", "--config", str(config), env=env, timeout=30)
    finally:
        if mounted:
            subprocess.run(["umount", str(state_dir)], check=False)
    assert done.returncode == 2, done.stderr
    assert "must be able to write" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_world_writable_state_dir_is_refused(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """A state dir anyone can write to is refused by run, naming the fix."""
    config, state_dir, env = _setup(tmp_path, fake_xquik)
    state_dir.mkdir()
    state_dir.chmod(0o777)
    done = run_cli("run", "--config", str(config), env=env, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "writable by other users" in done.stderr
    assert "chmod 700" in done.stderr


def test_heartbeat_from_the_future_is_stale(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """health is 1 and status says not running when the heartbeat is dated ahead."""
    config, state_dir, env = _setup(tmp_path, fake_xquik)
    _state_with_a_position(state_dir)
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    (state_dir / HEARTBEAT_NAME).write_text(
        json.dumps({"version": 1, "time": ahead.isoformat(), "summary": {"pid": 1}})
    )
    health = run_cli("health", "--config", str(config), env=env)
    assert health.returncode == 1
    assert "future" in health.stdout
    status = run_cli("status", "--config", str(config), env=env)
    assert status.returncode == 0, status.stderr
    assert "daemon: not running" in status.stdout


def test_everything_created_is_private_under_umask_000(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """With umask 000 the state dir, fitted/ and every file in them are 0700/0600."""
    config, state_dir, env = _setup(tmp_path, fake_xquik)
    (tmp_path / "img" / "a.png").unlink()
    Image.new("RGB", (64, 64), "red").save(tmp_path / "img" / "a.webp")  # needs fitting
    daemon = subprocess.Popen(
        [sys.executable, "-m", "rotator", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        umask=0,
    )
    try:
        fake_xquik.wait_for_writes(1, timeout=20)
    finally:
        daemon.terminate()
        out, err = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, err
    assert fake_xquik.api_key.encode() not in out + err
    found = [state_dir, *state_dir.rglob("*")]
    assert state_dir / "fitted" in found
    for path in found:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path.name} is {mode:04o}: others may use it"
