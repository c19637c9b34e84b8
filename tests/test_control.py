"""Tests for rotator.control: the line-delimited JSON protocol over a real Unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rotator.control import ControlServer, answer, ask, socket_path
from rotator.errors import ConfigError, RotatorError

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def _echo(request: dict[str, Any]) -> dict[str, Any]:
    """Answer with the request, or fail the way the request asks."""
    failure = request.get("fail")
    if failure == "config":
        raise ConfigError("--account: no such account")
    if failure == "runtime":
        raise RotatorError("a rotation is running")
    if failure == "bug":
        raise KeyError("oops")
    return answer(0, "done", seen=request)


def _serve_and(state_dir: Path, handler: Handler, client: Callable[[], Any]) -> Any:
    """Serve the socket on a fresh loop while ``client`` runs in a thread; return its result."""

    async def main() -> Any:
        server = ControlServer(state_dir, handler)
        await server.start()
        try:
            return await asyncio.to_thread(client)
        finally:
            await server.close()

    return asyncio.run(main())


def _raw(path: Path, data: bytes) -> dict[str, Any]:
    """Send raw bytes on the socket and return the parsed answer line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    parsed: dict[str, Any] = json.loads(reply)
    return parsed


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """Return a 0700 state directory, as the state store makes it."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def test_round_trip_and_owner_only_socket(state_dir: Path) -> None:
    """ask() sends a versioned request and reads the answer; the socket is 0600, then removed."""

    def client() -> tuple[dict[str, Any] | None, int]:
        mode = socket_path(state_dir).stat().st_mode
        assert stat.S_ISSOCK(mode)
        return ask(state_dir, {"command": "ping", "account": "alice"}), stat.S_IMODE(mode)

    reply, mode = _serve_and(state_dir, _echo, client)
    assert mode == 0o600
    assert reply == {
        "ok": True,
        "exit": 0,
        "message": "done",
        "seen": {"version": 1, "command": "ping", "account": "alice"},
    }
    assert not socket_path(state_dir).exists()
    assert [p.name for p in state_dir.iterdir()] == [], "no temporary socket left behind"


@pytest.mark.parametrize(
    ("failure", "code", "message"),
    [
        ("config", 2, "--account: no such account"),
        ("runtime", 1, "a rotation is running"),
        ("bug", 1, "internal error: KeyError: 'oops'"),
    ],
)
def test_handler_errors_become_exit_codes(
    state_dir: Path, failure: str, code: int, message: str
) -> None:
    """A config error answers exit 2, a runtime one exit 1, a bug exit 1; the server goes on."""

    def client() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        return ask(state_dir, {"command": "x", "fail": failure}), ask(state_dir, {"command": "y"})

    failed, after = _serve_and(state_dir, _echo, client)
    assert failed == {"ok": False, "exit": code, "message": message}
    assert after is not None
    assert after["exit"] == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json\n", "the request is not a JSON object on one line"),
        (b"[1, 2]\n", "the request names no command"),
        (b'{"version": 1}\n', "the request names no command"),
        (b'{"version": 9, "command": "ping"}\n', "protocol version 9 is not supported"),
        (b'{"command": "ping"}\n', "protocol version None is not supported"),
        (b"x" * 70000 + b"\n", "the request is too long"),
    ],
)
def test_malformed_requests_get_exit_2(state_dir: Path, data: bytes, message: str) -> None:
    """Anything but a versioned JSON object with a command is refused with exit 2."""
    reply = _serve_and(state_dir, _echo, lambda: _raw(socket_path(state_dir), data))
    assert reply == {"ok": False, "exit": 2, "message": message}


def test_no_daemon_means_no_answer(state_dir: Path) -> None:
    """No socket, or one a killed daemon left (nobody listening): ask() returns None."""
    assert ask(state_dir, {"command": "ping"}) is None
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path(state_dir)))
    stale.close()
    assert socket_path(state_dir).exists()
    assert ask(state_dir, {"command": "ping"}) is None


def test_a_stale_socket_is_replaced_at_start(state_dir: Path) -> None:
    """A socket file left by a killed daemon does not keep the next one from serving."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path(state_dir)))
    stale.close()
    reply = _serve_and(state_dir, _echo, lambda: ask(state_dir, {"command": "ping"}))
    assert reply is not None
    assert reply["message"] == "done"


def test_too_long_a_path_is_refused_not_truncated(tmp_path: Path) -> None:
    """A state dir whose socket path exceeds sun_path: start() raises OSError, ask() says None."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    with pytest.raises(OSError, match="longer than 107 bytes"):
        asyncio.run(ControlServer(deep, _echo).start())
    assert ask(deep, {"command": "ping"}) is None
    assert os.listdir(deep) == []


def test_client_that_hangs_up_does_not_cancel_the_work(state_dir: Path) -> None:
    """The handler runs to its end even when the client goes away before the answer."""
    finished = asyncio.Event()

    async def slow(request: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.2)
        finished.set()
        return answer(0, "late", seen=request)

    async def main() -> bool:
        server = ControlServer(state_dir, slow)
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path(state_dir)))
            writer.write(b'{"version": 1, "command": "rotate"}\n')
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            del reader
            await asyncio.wait_for(finished.wait(), 5)
            return finished.is_set()
        finally:
            await server.close()

    assert asyncio.run(main())


def test_a_connection_closed_without_an_answer_is_an_error(state_dir: Path) -> None:
    """A daemon that hangs up mid-request (stopping) gives a clear exit-1 error, not a crash."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path(state_dir)))
    listener.listen(1)

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=hang_up)
    thread.start()
    try:
        with pytest.raises(RotatorError, match="closed the connection without an answer"):
            ask(state_dir, {"command": "ping"}, timeout=10)
    finally:
        thread.join(10)
        listener.close()


SYSTEM_PYTHON = Path("/usr/bin/python3")  # one that another user may run (the venv's is root's)


@pytest.mark.skipif(
    os.geteuid() != 0 or not SYSTEM_PYTHON.exists(),
    reason="needs root and a system python3 to run a client as another user",
)
def test_another_user_is_refused_even_through_an_open_socket() -> None:
    """With the socket's mode opened up by hand, a client of another uid is still refused."""
    open_dir = Path(tempfile.mkdtemp(prefix="rotator-control-"))
    try:
        open_dir.chmod(0o755)

        def client() -> subprocess.CompletedProcess[str]:
            socket_path(open_dir).chmod(0o666)
            code = (
                "import socket, sys\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                "s.connect(sys.argv[1])\n"
                # The daemon may refuse and hang up before the request is sent: its
                # answer is still waiting in this end of the (Unix) socket.
                "try:\n"
                '    s.sendall(b\'{"version": 1, "command": "pause"}\\n\')\n'
                "except BrokenPipeError:\n"
                "    pass\n"
                "print(s.recv(4096).decode(), end='')\n"
            )
            return subprocess.run(
                [str(SYSTEM_PYTHON), "-c", code, str(socket_path(open_dir))],
                user=65534,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )

        done = _serve_and(open_dir, _echo, client)
    finally:
        shutil.rmtree(open_dir)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "ok": False,
        "exit": 1,
        "message": "refused: only the daemon's own user may control it",
    }
