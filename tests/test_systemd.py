"""sd_notify client tested against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rotator.systemd import SystemdNotifier, monotonic_usec, notify, watchdog_interval


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """Bind a datagram socket at a filesystem path, as systemd does for $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(5)
    yield str(path), listener
    listener.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[str, socket.socket]]:
    """Bind a datagram socket in the abstract namespace; yield its "@name" spelling."""
    name = f"rotator-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(5)
    yield "@" + name, listener
    listener.close()


def received(listener: socket.socket) -> list[str]:
    """Read one datagram and split it into its assignments."""
    return listener.recv(4096).decode().split("\n")


def test_ready_reaches_a_filesystem_socket(path_listener: tuple[str, socket.socket]) -> None:
    """READY=1 arrives as one datagram on a socket named by a filesystem path."""
    address, listener = path_listener
    notifier = SystemdNotifier(address)
    assert notifier.enabled
    assert notifier.ready() is True
    assert received(listener) == ["READY=1"]
    notifier.close()


def test_ready_reaches_an_abstract_socket(abstract_listener: tuple[str, socket.socket]) -> None:
    """An "@name" NOTIFY_SOCKET is sent to the abstract socket of that name."""
    address, listener = abstract_listener
    notifier = SystemdNotifier(address)
    assert notifier.ready("3 accounts") is True
    assert received(listener) == ["READY=1", "STATUS=3 accounts"]
    notifier.close()


def test_each_call_is_one_datagram_in_order(path_listener: tuple[str, socket.socket]) -> None:
    """Every lifecycle message is its own datagram, carrying exactly its fields, in order."""
    address, listener = path_listener
    notifier = SystemdNotifier(address)
    assert notifier.status("scanning")
    assert notifier.reloading(now_usec=123_456_789)
    assert notifier.watchdog()
    assert notifier.stopping()
    assert notifier.notify("STATUS=a", "EXTEND_TIMEOUT_USEC=5000000")
    assert received(listener) == ["STATUS=scanning"]
    assert received(listener) == ["RELOADING=1", "MONOTONIC_USEC=123456789"]
    assert received(listener) == ["WATCHDOG=1"]
    assert received(listener) == ["STOPPING=1"]
    assert received(listener) == ["STATUS=a", "EXTEND_TIMEOUT_USEC=5000000"]
    notifier.close()


def test_reloading_stamps_the_monotonic_clock(path_listener: tuple[str, socket.socket]) -> None:
    """Without an explicit stamp, MONOTONIC_USEC is CLOCK_MONOTONIC read at the call."""
    address, listener = path_listener
    notifier = SystemdNotifier(address)
    before = monotonic_usec()
    assert notifier.reloading()
    after = monotonic_usec()
    reloading, stamp = received(listener)
    assert reloading == "RELOADING=1"
    key, value = stamp.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    notifier.close()


def test_status_is_kept_on_one_line(path_listener: tuple[str, socket.socket]) -> None:
    """A status text with newlines cannot smuggle in a second assignment."""
    address, listener = path_listener
    notifier = SystemdNotifier(address)
    assert notifier.status("paused\nREADY=1  now")
    assert received(listener) == ["STATUS=paused READY=1 now"]
    notifier.close()


def test_malformed_fields_are_refused(path_listener: tuple[str, socket.socket]) -> None:
    """A field that is not one KEY=value assignment is a programming error and is not sent."""
    address, listener = path_listener
    notifier = SystemdNotifier(address)
    with pytest.raises(ValueError, match="KEY=value"):
        notifier.notify("READY")
    with pytest.raises(ValueError, match="KEY=value"):
        notifier.notify("STATUS=x\nREADY=1")
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.recv(4096)
    notifier.close()


@pytest.mark.parametrize("value", [None, "", "relative/notify", "vsock:2:1234"])
def test_no_usable_socket_is_a_silent_no_op(value: str | None) -> None:
    """Without a usable NOTIFY_SOCKET every call returns False and nothing is opened."""
    notifier = SystemdNotifier(value)
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


def test_missing_socket_file_returns_false(tmp_path: Path) -> None:
    """A socket path that does not exist (systemd went away) gives False, not an exception."""
    notifier = SystemdNotifier(str(tmp_path / "gone"))
    assert notifier.enabled
    assert notifier.ready() is False
    notifier.close()


def test_closed_listener_returns_false(tmp_path: Path) -> None:
    """A socket file left behind by a closed listener gives False, not an exception."""
    path = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.close()
    notifier = SystemdNotifier(str(path))
    assert notifier.watchdog() is False
    notifier.close()


def test_full_receive_queue_does_not_block(path_listener: tuple[str, socket.socket]) -> None:
    """When systemd stops reading, sends fail fast with False instead of stalling the loop."""
    address, listener = path_listener
    notifier = SystemdNotifier(address)
    results = [notifier.watchdog() for _ in range(2000)]
    assert results[0] is True
    assert False in results
    assert received(listener) == ["WATCHDOG=1"]
    notifier.close()


def test_from_environment_reads_and_forgets_the_variables(
    path_listener: tuple[str, socket.socket],
) -> None:
    """from_environment captures socket and watchdog, then removes them so children can't."""
    address, listener = path_listener
    env = {
        "NOTIFY_SOCKET": address,
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
        "HOME": "/nonexistent",
    }
    notifier = SystemdNotifier.from_environment(env)
    assert env == {"HOME": "/nonexistent"}
    assert notifier.watchdog_interval == 15.0
    assert notifier.ready()
    assert received(listener) == ["READY=1"]
    notifier.close()


def test_from_environment_can_keep_the_variables(
    abstract_listener: tuple[str, socket.socket],
) -> None:
    """With unset_environment=False the variables stay for whoever reads them next."""
    address, _ = abstract_listener
    env = {"NOTIFY_SOCKET": address}
    notifier = SystemdNotifier.from_environment(env, unset_environment=False)
    assert env == {"NOTIFY_SOCKET": address}
    assert notifier.enabled
    assert notifier.watchdog_interval is None


def test_repr_shows_the_socket_as_configured() -> None:
    """The repr spells an abstract socket with "@" rather than a NUL byte."""
    assert repr(SystemdNotifier("@sd", watchdog_interval=5.0)) == (
        "SystemdNotifier(notify_socket='@sd', watchdog_interval=5.0)"
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4242"}, 0.5),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_period_for_our_pid(
    env: dict[str, str], expected: float | None
) -> None:
    """watchdog_interval is half of WATCHDOG_USEC, and None if unset, invalid or not ours."""
    assert watchdog_interval(env, pid=4242) == expected


def test_watchdog_interval_defaults_to_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without arguments it reads os.environ and compares WATCHDOG_PID with our own pid."""
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 2.0


def test_module_notify_uses_the_current_environment(
    monkeypatch: pytest.MonkeyPatch, path_listener: tuple[str, socket.socket]
) -> None:
    """notify() sends to $NOTIFY_SOCKET as set now, and is a no-op once it is unset."""
    address, listener = path_listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert notify("STATUS=one-shot") is True
    assert received(listener) == ["STATUS=one-shot"]
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify("READY=1") is False


def test_sender_is_our_own_process(path_listener: tuple[str, socket.socket]) -> None:
    """The datagram carries our pid as sender, which is what NotifyAccess=main checks."""
    address, listener = path_listener
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notifier = SystemdNotifier(address)
    assert notifier.ready()
    data, ancillary, _, _ = listener.recvmsg(4096, socket.CMSG_SPACE(12))
    assert data == b"READY=1"
    (level, kind, creds), *_ = ancillary
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    pid, _uid, _gid = struct.unpack("=iII", creds)
    assert pid == os.getpid()
    notifier.close()
