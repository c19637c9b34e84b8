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
from harness import cli_env, make_image, run_cli, write_config


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


def test_reload_command_reports_the_daemons_verdict(
    tmp_path: Path,
    fake_xquik: FakeXquik,
    start_daemon: DaemonFactory,
    notify_socket: socket.socket,
) -> None:
    """rotator reload (ExecReload=): 0 on a good config; 1 naming the problem on a bad one."""
    make_image(tmp_path / "alice" / "1.png", seed=1)
    make_image(tmp_path / "bob" / "1.png", seed=2)
    entries = [{"account": "alice", "folder": "alice", "schedule": "every 1h"}]
    config = write_config(tmp_path / "rotator.toml", base_url=fake_xquik.base_url, entries=entries)
    env = cli_env(fake_xquik.api_key, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    daemon = start_daemon(config, env=env)
    seen: list[str] = []
    _receive_until(notify_socket, "READY=1", seen, 15)
    cli = cli_env(fake_xquik.api_key)

    entries.append({"account": "bob", "folder": "bob", "schedule": "every 1h"})
    write_config(tmp_path / "rotator.toml", base_url=fake_xquik.base_url, entries=entries)
    good = run_cli("reload", "--config", str(config), env=cli)
    assert good.returncode == 0, good.stderr
    assert good.stdout == f"reloaded (pid {daemon.proc.pid})\n"
    assert daemon.named("daemon.reloaded")
    _receive_until(notify_socket, "READY=1", seen, 10)  # the good reload's

    good_text = config.read_text()
    config.write_text(good_text.replace('schedule = "every 1h"', 'schedule = "every soon"', 1))
    bad = run_cli("reload", "--config", str(config), env=cli)
    assert bad.returncode == 1
    lines = bad.stderr.splitlines()
    # The command cannot read the config either: it says so, then the daemon's verdict.
    assert lines[0].startswith("rotator: accounts[0].schedule:")
    assert any(line.startswith("rotator: reload failed: accounts[0].schedule:") for line in lines)
    assert lines[-1] == "rotator: the daemon keeps running on its previous config"
    _receive_until(notify_socket, "READY=1", seen, 10)
    status = [line for line in seen[-1].splitlines() if line.startswith("STATUS=")]
    assert status
    assert status[0].startswith("STATUS=reload failed (accounts[0].schedule:")

    config.write_text(good_text)
    again = run_cli("reload", "--config", str(config), env=cli)
    assert again.returncode == 0, again.stderr
    _receive_until(notify_socket, "READY=1", seen, 10)
    assert "reload failed" not in seen[-1]
    assert daemon.stop() == 0


def test_reload_without_a_daemon_exits_1(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """rotator reload with nothing running: exit 1 and one line saying so."""
    make_image(tmp_path / "alice" / "1.png", seed=1)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "alice", "schedule": "every 1h"}],
    )
    result = run_cli("reload", "--config", str(config), env=cli_env(None))
    assert result.returncode == 1
    assert (
        result.stderr
        == f"rotator: no running daemon (no fresh heartbeat in {tmp_path / 'state'})\n"
    )
