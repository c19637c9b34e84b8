"""Fixtures for the reliability suite: the end-to-end harness, daemons that are always reaped."""

from __future__ import annotations

import sys
from pathlib import Path

# The suite drives the real CLI with the end-to-end harness and its fixtures.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from harness import DaemonFactory, start_daemon

__all__ = ["DaemonFactory", "start_daemon"]
