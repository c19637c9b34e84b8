"""The control socket: commands to the running daemon over a Unix socket in its state directory.

The protocol is one JSON object per line each way: the client sends a request
(``{"version": 1, "command": "pause", "account": "alice", "seconds": 3600}``) and reads one
answer (``{"ok": true, "exit": 0, "message": "..."}``), then the connection closes.

Only the daemon's own user (and root) may talk to it: the socket is created 0600 in the
0700 state directory, and the peer's uid is checked on every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rotator.errors import ConfigError, RotatorError
from rotator.logs import emit, redact_text

SOCKET_NAME = "control.sock"
PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last one a NUL
ANSWER_TIMEOUT = 600.0  # a rotation by hand may wait for retries; then the client gives up

Request = dict[str, Any]
Answer = dict[str, Any]
Handler = Callable[[Request], Awaitable[Answer]]


def socket_path(state_dir: Path) -> Path:
    """Return the control socket's path in ``state_dir``."""
    return Path(state_dir) / SOCKET_NAME


def answer(exit_code: int, message: str, **fields: Any) -> Answer:
    """Return an answer: ``ok`` when the exit code is 0."""
    return {"ok": exit_code == 0, "exit": exit_code, "message": message, **fields}


class ControlServer:
    """Serve the control socket on the running event loop."""

    def __init__(self, state_dir: Path, handler: Handler) -> None:
        self.path = socket_path(state_dir)
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket (owner-only) and start serving; raise OSError if it cannot be."""
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise OSError(f"the path is longer than {MAX_SOCKET_PATH} bytes")
        # The daemon holds the state directory's lock: a socket left here is a dead daemon's.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        # Bound under a temporary name, made 0600, then renamed: it never exists unprotected.
        temporary = self.path.with_name(f".{SOCKET_NAME}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(temporary))
            temporary.chmod(0o600)
            temporary.rename(self.path)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise

    async def close(self) -> None:
        """Stop serving and remove the socket."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._answer(reader, writer)
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: the work it asked for goes on regardless
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Answer:
        uid = _peer_uid(writer)
        if uid is not None and uid not in (os.getuid(), 0):
            emit("control.refused", uid=uid)
            return answer(1, "refused: only the daemon's own user may control it")
        try:
            line = await reader.readline()
        except ValueError:  # longer than MAX_LINE
            return answer(2, "the request is too long")
        try:
            request = json.loads(line)
        except ValueError:
            return answer(2, "the request is not a JSON object on one line")
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return answer(2, "the request names no command")
        if request.get("version") != PROTOCOL_VERSION:
            return answer(2, f"protocol version {request.get('version')!r} is not supported")
        try:
            # Shielded: a client that hangs up does not cancel a rotation half-way.
            return await asyncio.shield(self._handler(request))
        except RotatorError as exc:
            code = 2 if isinstance(exc, ConfigError) else exc.exit_code
            return answer(code, redact_text(str(exc)))
        except Exception as exc:  # a bug of ours: answer it, keep serving
            emit("control.failed", command=request["command"], error=f"{type(exc).__name__}")
            return answer(1, f"internal error: {type(exc).__name__}: {redact_text(str(exc))}")


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def ask(state_dir: Path, request: Request, timeout: float = ANSWER_TIMEOUT) -> Answer | None:
    """Send ``request`` to the daemon of ``state_dir``; None when no daemon listens there."""
    path = socket_path(state_dir)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None  # no daemon, or a socket a killed daemon left behind
        except PermissionError as exc:
            raise RotatorError(f"cannot reach the daemon at {path}: {exc.strerror}") from None
        body = {"version": PROTOCOL_VERSION, **request}
        try:
            sock.sendall(json.dumps(body).encode() + b"\n")
            reply = _read_line(sock)
        except TimeoutError:
            raise RotatorError(
                f"the daemon did not answer within {timeout:g}s (it goes on; see its log)"
            ) from None
        except OSError as exc:
            raise RotatorError(f"lost the daemon at {path}: {exc.strerror or exc}") from None
    if not reply:
        raise RotatorError(
            f"the daemon at {path} closed the connection without an answer (is it stopping?)"
        )
    try:
        parsed = json.loads(reply)
    except ValueError:
        raise RotatorError(f"the daemon at {path} gave an answer that is not JSON") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("exit"), int):
        raise RotatorError(f"the daemon at {path} gave an answer without an exit code")
    return parsed


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > 16 * MAX_LINE:
            break
    return data
