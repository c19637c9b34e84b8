"""A state directory on a full file system: nothing is sent unrecorded, nothing is corrupted."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_xquik import FakeXquik
from harness import DaemonProcess, cli_env, make_image, run_cli, write_config

from rotator.state import StateStore

TMPFS_BYTES = 2 * 1024 * 1024


@contextlib.contextmanager
def _small_tmpfs(where: Path) -> Iterator[None]:
    """Mount a small tmpfs at ``where``, or skip saying why that is not permitted here."""
    where.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8); not available here")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; return the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def test_full_state_disk_sends_nothing_unrecorded_and_recovers(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """With the state disk full no write leaves; freed again, the daemon or a restart goes on."""
    state_dir = tmp_path / "state"
    with _small_tmpfs(state_dir):
        for n in range(3):
            make_image(tmp_path / "img" / f"{n}.png", seed=n)
        config = write_config(
            tmp_path / "rotator.toml",
            base_url=fake_xquik.base_url,
            entries=[{"account": "alice", "folder": "img", "schedule": "every 1s"}],
        )
        env = cli_env(fake_xquik.api_key)
        daemon = DaemonProcess(config, env)
        daemon.wait_for("avatar.uploaded", timeout=20)
        filler = _fill(state_dir)
        time.sleep(0.5)
        sent_when_full = len(fake_xquik.writes())
        time.sleep(3)
        extra = len(fake_xquik.writes()) - sent_when_full
        assert extra <= 1, f"{extra} writes left while the state could not record them"
        filler.unlink()
        if daemon.proc.poll() is None:
            daemon.stop()
        else:
            daemon.kill()
        assert "Traceback" not in "".join(daemon.stderr_lines)
        assert fake_xquik.api_key not in daemon.output()
        with StateStore.open(state_dir, readonly=True) as state:  # not corrupted
            assert state.entries()
        status = run_cli("status", "--config", str(config), env=env)
        assert status.returncode == 0, status.stderr
        again = DaemonProcess(config, env)
        before = len(fake_xquik.applied_writes())
        again.wait_for("avatar.uploaded", lambda _: True, timeout=20)
        assert again.stop() == 0
        assert len(fake_xquik.applied_writes()) > before
