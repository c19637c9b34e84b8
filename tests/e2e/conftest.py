"""Fixtures for end-to-end tests: the real daemon against the fake Xquik server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_xquik import FakeXquik
from harness import DaemonProcess, cli_env

DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
def start_daemon(fake_xquik: FakeXquik) -> Iterator[DaemonFactory]:
    """Start daemons on demand; stop (or kill) every one at the end and check no key leaked."""
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
