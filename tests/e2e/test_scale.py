"""A daemon of many folders: its thread count does not grow with them."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from conftest import DaemonFactory
from fake_xquik import FakeXquik
from harness import cli_env, make_image, write_config

FOLDERS = 300
MAX_THREADS = 8  # the loop, the worker pool (4), the metrics server, room for one more


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """Bind a real AF_UNIX datagram socket standing in for systemd's notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def _wait_ready(sock: socket.socket, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = sock.recv(65536).decode()
        except TimeoutError:
            continue
        if "READY=1" in message.splitlines():
            return
    raise AssertionError(f"no READY=1 within {timeout}s")


def _free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line in /proc/PID/status")


@pytest.mark.parametrize("mode", ["native", "polling"])
def test_three_hundred_folders_run_on_a_few_threads(
    tmp_path: Path,
    fake_xquik: FakeXquik,
    start_daemon: DaemonFactory,
    notify_socket: socket.socket,
    mode: str,
) -> None:
    """300 entries with a folder each: at most 8 threads, and a file dropped late still joins."""
    entries = []
    for number in range(FOLDERS):
        make_image(tmp_path / "folders" / f"a{number:03}" / "1.png", seed=number)
        entries.append(
            {"account": f"a{number:03}", "folder": f"folders/a{number:03}", "schedule": "0 0 1 1 *"}
        )
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=entries,
        sections={"watch": {"mode": mode}, "metrics": {"listen": f"127.0.0.1:{_free_port()}"}},
    )
    env = cli_env(fake_xquik.api_key, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    daemon = start_daemon(config, env=env)
    _wait_ready(notify_socket, 60)
    assert _threads(daemon.proc.pid) <= MAX_THREADS
    make_image(tmp_path / "folders" / f"a{FOLDERS - 1:03}" / "2.png", seed=1000)
    daemon.wait_for("image.added", lambda e: e["path"] == "2.png", timeout=20)
    assert _threads(daemon.proc.pid) <= MAX_THREADS
    assert daemon.stop() == 0
