"""Fixtures for the reliability suite: the end-to-end harness, daemons that are always reaped."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The suite drives the real CLI with the end-to-end harness.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from fake_xquik import FakeXquik
from harness import DaemonProcess, cli_env

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
