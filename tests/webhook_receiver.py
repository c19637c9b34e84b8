"""A webhook receiver speaking real HTTP on 127.0.0.1 that records every POST, for tests.

It answers the statuses it is scripted with, in order, then 204; ``hold`` makes it wait
before answering (a slow receiver) until ``release``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclasses.dataclass(frozen=True)
class Received:
    """One POST as it arrived."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        """Return the body parsed as JSON."""
        return json.loads(self.body)


class WebhookReceiver:
    """Record POSTs on an ephemeral loopback port; use it with ``with``."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.arrived = 0  # POSTs read, answered or still held
        self._statuses: collections.deque[int] = collections.deque()
        self._changed = threading.Condition()
        self._released = threading.Event()
        self._released.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                del format, args

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._changed:
                    receiver.arrived += 1
                    receiver._changed.notify_all()
                receiver._released.wait(30)
                with receiver._changed:
                    status = receiver._statuses.popleft() if receiver._statuses else 204
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                    receiver._changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def url(self) -> str:
        """Return the hook's URL (with a token in the query, as chat webhooks have)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook?token=s3cr3t-token"

    def answer(self, *statuses: int) -> None:
        """Answer the next POSTs with these statuses (then 204 again)."""
        with self._changed:
            self._statuses.extend(statuses)

    def hold(self) -> None:
        """Keep POSTs waiting until ``release`` (a receiver that hangs)."""
        self._released.clear()

    def release(self) -> None:
        """Answer the POSTs held so far and those to come."""
        self._released.set()

    def wait_for_arrivals(self, count: int, timeout: float = 15.0) -> None:
        """Wait until ``count`` POSTs have been read, held ones included."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.arrived < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"wanted {count} POSTs to arrive, got {self.arrived}"
                self._changed.wait(remaining)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """Wait until ``count`` POSTs arrived; return all of them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.received) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"wanted {count} POSTs, got {len(self.received)}"
                self._changed.wait(remaining)
            return list(self.received)
