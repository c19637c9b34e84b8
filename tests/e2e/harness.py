"""Run the real ``rotator`` CLI in a subprocess and read its JSON log lines."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fake_xquik import FakeXquik
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
Event = dict[str, Any]


def make_image(path: Path, *, seed: int, fmt: str | None = None, size: int = 64) -> bytes:
    """Write a small distinct JPEG or PNG at ``path`` and return its bytes."""
    fmt = fmt or ("JPEG" if path.suffix.lower() in {".jpg", ".jpeg"} else "PNG")
    image = Image.new(
        "RGB", (size, size), ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256)
    )
    ImageDraw.Draw(image).text((4, 4), str(seed), fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def toml_value(value: object) -> str:
    """Render a Python value as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_config(
    path: Path,
    *,
    base_url: str,
    entries: Iterable[Mapping[str, object]],
    sections: Mapping[str, Mapping[str, object]] | None = None,
) -> Path:
    """Write a rotator TOML config with fast test defaults."""
    merged: dict[str, dict[str, object]] = {
        "api": {"base_url": base_url, "timeout": "5s"},
        "retry": {"initial": "100ms", "max": "500ms", "attempts": 3},
        "pause": {"credits": "1s", "account": "1s", "auth": "1s", "max": "4s"},
        "watch": {"settle": "300ms", "poll_interval": "200ms", "rescan": "1m"},
        "state": {"dir": str(path.parent / "state")},
        "images": {"min_size": 16},  # test images are small
    }
    for name, values in (sections or {}).items():
        merged.setdefault(name, {}).update(values)
    lines = []
    for name, values in merged.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    for entry in entries:
        lines.append("[[accounts]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in entry.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def cli_env(api_key: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return an environment for the CLI: our package importable, the key if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROTATOR_", "XQUIK_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NOTIFY_SOCKET", None)
    if api_key is not None:
        env["XQUIK_API_KEY"] = api_key
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: Mapping[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m rotator ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "rotator", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class DaemonProcess:
    """``rotator run`` in a subprocess; its stdout parsed as JSON events."""

    def __init__(self, config: Path, env: Mapping[str, str], *extra: str) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rotator", "run", "--config", str(config), *extra],
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[Event] = []
        self.raw_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.raw_lines.append(line)
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    self.events.append({"event": "<not json>", "line": line})
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.stderr_lines.append(line)

    def named(self, name: str) -> list[Event]:
        """Return the events called ``name`` seen so far."""
        with self._changed:
            return [event for event in self.events if event.get("event") == name]

    def wait_for(
        self,
        name: str,
        predicate: Callable[[Event], bool] = lambda _: True,
        *,
        count: int = 1,
        timeout: float = 15.0,
    ) -> list[Event]:
        """Wait until ``count`` events called ``name`` match ``predicate``; return them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [
                    event
                    for event in self.events
                    if event.get("event") == name and predicate(event)
                ]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not remaining > 0):
                    break
                if self.proc.poll() is not None:
                    # The process ended: give the reader a moment to drain, then stop.
                    self._changed.wait(0.2)
                    found = [e for e in self.events if e.get("event") == name and predicate(e)]
                    if len(found) >= count:
                        return found
                    break
                self._changed.wait(min(remaining, 0.5))
        seen = [event.get("event") for event in self.events]
        raise AssertionError(
            f"wanted {count} x {name}, saw {len(found)}; events: {seen[-40:]}; "
            f"stderr: {''.join(self.stderr_lines)[-2000:]}"
        )

    def signal(self, signum: int) -> None:
        """Send a signal to the daemon."""
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM the daemon and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._finish()
        return code

    def kill(self) -> None:
        """SIGKILL the daemon (a crash)."""
        self.proc.kill()
        self.proc.wait(10)
        self._finish()

    def _finish(self) -> None:
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def output(self) -> str:
        """Return everything the daemon printed so far, stdout and stderr."""
        with self._changed:
            return "".join(self.raw_lines) + "".join(self.stderr_lines)


DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
def start_daemon(fake_xquik: FakeXquik) -> Iterator[DaemonFactory]:
    """Start daemons on demand; kill any left at the end and check no key leaked."""
    started: list[DaemonProcess] = []
    key = fake_xquik.api_key

    def start(config: Path, *extra: str, env: dict[str, str] | None = None) -> DaemonProcess:
        daemon = DaemonProcess(config, env if env is not None else cli_env(key), *extra)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.kill()
        assert key not in daemon.output(), "the API key appeared in the daemon's output"
