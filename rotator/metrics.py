"""Prometheus metrics at ``/metrics`` and a liveness answer at ``/healthz``.

The only module that imports prometheus_client. Counters follow the log events
(``avatar.uploaded``, ``avatar.failed``, ...), so every metric has a log line behind
it; gauges come from a snapshot the daemon refreshes with its heartbeat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Info,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from rotator import __version__
from rotator.errors import ConfigError

_NO_POLLING = 24 * 3600.0  # seconds serve_forever waits for a request before looking again
StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def entry_label(account: str, folder: Path, config_dir: Path) -> str:
    """Return the ``entry`` label of one entry without the host's absolute paths.

    A folder under the config's directory is named relative to it (``alice:avatars/day``);
    any other by its last part and a short hash of the whole path, which keeps two
    folders of the same name apart (``alice:day~3f2a9c``).
    """
    try:
        return f"{account}:{folder.relative_to(config_dir).as_posix()}"
    except ValueError:
        digest = hashlib.sha256(os.fsencode(folder)).hexdigest()[:6]
        return f"{account}:{folder.name}~{digest}"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)  # one per entry: no __dict__
class EntryFigures:
    """What one entry looks like right now."""

    account: str
    entry: str
    next_rotation: float | None  # epoch seconds
    last_success: float | None  # epoch seconds
    usable_images: int
    rejected_images: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The gauges' values, refreshed by the daemon with each heartbeat."""

    entries: tuple[EntryFigures, ...] = ()
    pauses_by_scope: Mapping[str, int] = dataclasses.field(default_factory=dict)
    taken_at: float = 0.0  # time.monotonic() of the refresh


class _SnapshotCollector:
    """Turn the latest snapshot into gauge families at scrape time."""

    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self._read()
        pauses = GaugeMetricFamily(
            "rotator_pauses_active", "Pauses in force, by scope", labels=["scope"]
        )
        for scope in ("key", "account"):
            pauses.add_metric([scope], snapshot.pauses_by_scope.get(scope, 0))
        next_rotation = GaugeMetricFamily(
            "rotator_next_rotation_timestamp_seconds",
            "When each entry rotates next (Unix time)",
            labels=["account", "entry"],
        )
        last_success = GaugeMetricFamily(
            "rotator_last_success_timestamp_seconds",
            "When each entry last changed its avatar (Unix time)",
            labels=["account", "entry"],
        )
        images = GaugeMetricFamily(
            "rotator_images", "Images per entry by state", labels=["account", "entry", "state"]
        )
        for item in snapshot.entries:
            labels = [item.account, item.entry]
            if item.next_rotation is not None:
                next_rotation.add_metric(labels, item.next_rotation)
            if item.last_success is not None:
                last_success.add_metric(labels, item.last_success)
            images.add_metric([*labels, "usable"], item.usable_images)
            images.add_metric([*labels, "rejected"], item.rejected_images)
        yield from (pauses, next_rotation, last_success, images)


class Metrics:
    """The daemon's metrics and the HTTP server that serves them."""

    def __init__(self, *, credits_per_call: Callable[[], int], stale_after: float = 60.0) -> None:
        # Read at each upload, not kept: a reload may change ``api.credits_per_call``.
        self._credits_per_call = credits_per_call
        self._stale_after = stale_after
        self._snapshot = Snapshot(taken_at=time.monotonic())
        self.registry = CollectorRegistry()
        self._uploads = Counter(
            "rotator_uploads",
            "Avatar writes by account and outcome",
            ["account", "outcome"],
            registry=self.registry,
        )
        self._credits = Counter(
            "rotator_credits_spent", "Credits spent on avatar writes", registry=self.registry
        )
        self._reloads = Counter(
            "rotator_reloads",
            "Config reloads (SIGHUP) by result",
            ["result"],
            registry=self.registry,
        )
        Info("rotator_build", "The running rotator", registry=self.registry).info(
            {"version": __version__, "python": platform.python_version()}
        )
        # CPU, memory, open files and start time of this process (Linux /proc).
        ProcessCollector(registry=self.registry)
        collector: Collector = _SnapshotCollector(lambda: self._snapshot)
        self.registry.register(collector)
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def update(self, snapshot: Snapshot) -> None:
        """Take the daemon's latest figures."""
        self._snapshot = snapshot

    def observe(self, event: Mapping[str, object]) -> None:
        """Count what a log event says happened (called for every event, any thread)."""
        name = event.get("event")
        account = str(event.get("account", ""))
        if name == "avatar.uploaded":
            self._uploads.labels(account, "success").inc()
        elif name == "avatar.failed":
            self._uploads.labels(account, str(event.get("error") or "error")).inc()
        elif name == "avatar.uncertain":
            self._uploads.labels(account, "uncertain").inc()
        elif name == "daemon.reloaded":
            self._reloads.labels("success").inc()
        elif name == "daemon.reload_failed":
            self._reloads.labels("failure").inc()
        if name in {"avatar.uploaded", "avatar.uncertain"}:
            # What the write's record says it cost (billing.charged / chargedCredits);
            # without a figure in the event, an upload costs credits_per_call.
            credits = event.get("credits")
            if isinstance(credits, int) and not isinstance(credits, bool):
                self._credits.inc(max(0, credits))
            elif name == "avatar.uploaded":
                self._credits.inc(self._credits_per_call())

    def app(self) -> WsgiApp:
        """Return the WSGI app: ``/metrics`` (Prometheus text) and ``/healthz``."""
        metrics_app: WsgiApp = make_wsgi_app(self.registry)

        def route(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                age = time.monotonic() - self._snapshot.taken_at
                if age <= self._stale_after:
                    start_response("200 OK", [("Content-Type", "text/plain")])
                    return [b"ok\n"]
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [f"stale: no heartbeat for {age:.0f}s\n".encode()]
            if path == "/metrics":
                return metrics_app(environ, start_response)
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics or /healthz\n"]

        return route

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve in a background thread; return the address bound (port 0 picks one)."""
        try:
            server = make_server(
                host, port, self.app(), ThreadingWSGIServer, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ConfigError(f"metrics.listen: cannot listen on {host}:{port}: {exc}") from exc
        self._server = server
        # No polling timeout: an idle daemon must not wake up twice a second for nothing.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": _NO_POLLING}, daemon=True
        )
        self._thread.start()
        bound_host, bound_port = server.server_address[:2]
        return str(bound_host), int(bound_port)

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            server = self._server
            stopper = threading.Thread(target=server.shutdown)
            stopper.start()
            # serve_forever only looks at the stop flag between requests: knock until it does.
            address = server.server_address[:2]
            while stopper.is_alive():
                with contextlib.suppress(OSError):
                    socket.create_connection((str(address[0]), int(address[1])), 1).close()
                stopper.join(0.05)
            server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


class _QuietHandler(WSGIRequestHandler):
    """Keep scrapes out of stderr: the daemon's logs are JSON on stdout."""

    def log_message(self, format: str, *args: Any) -> None:
        del format, args
