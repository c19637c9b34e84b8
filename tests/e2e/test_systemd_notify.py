"""The daemon talks to systemd: READY, RELOADING, STOPPING, STATUS and watchdog pings."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DaemonFactory
from fake_xquik import FakeXquik
from harness import cli_env, make_image, write_config


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """Bind a real AF_UNIX datagram socket standing in for systemd's notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def _receive_until(sock: socket.socket, wanted: str, seen: list[str], timeout: float) -> None:
    """Collect datagrams into ``seen`` until one holds the line ``wanted``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        seen.append(message)
        if wanted in message.splitlines():
            return
    raise AssertionError(f"no {wanted!r} within {timeout}s; got {seen}")


def test_daemon_notifies_systemd_through_its_life(
    tmp_path: Path,
    fake_xquik: FakeXquik,
    start_daemon: DaemonFactory,
    notify_socket: socket.socket,
) -> None:
    """READY after the first scan, WATCHDOG pings, RELOADING..READY on SIGHUP, STOPPING."""
    make_image(tmp_path / "alice" / "1.png", seed=1)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "alice", "schedule": "every 1h"}],
    )
    env = cli_env(
        fake_xquik.api_key,
        {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"},
    )
    daemon = start_daemon(config, env=env)
    seen: list[str] = []
    _receive_until(notify_socket, "READY=1", seen, 15)
    ready = next(message for message in seen if "READY=1" in message.splitlines())
    assert any(line.startswith("STATUS=1 accounts, 1 entries") for line in ready.splitlines())
    scanned = daemon.named("catalog.scanned")
    assert scanned, "READY comes after the first catalog scan"
    assert (scanned[0]["folders"], scanned[0]["usable"]) == (1, 1)
    _receive_until(notify_socket, "WATCHDOG=1", seen, 5)
    _receive_until(notify_socket, "WATCHDOG=1", seen, 5)

    daemon.signal(signal.SIGHUP)
    _receive_until(notify_socket, "RELOADING=1", seen, 10)
    reloading = seen[-1].splitlines()
    assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
    _receive_until(notify_socket, "READY=1", seen, 10)

    daemon.signal(signal.SIGTERM)
    _receive_until(notify_socket, "STOPPING=1", seen, 10)
    assert daemon.stop() == 0
