"""Fixtures for end-to-end tests: the real daemon against the fake Xquik server."""

from __future__ import annotations

# Fixtures imported into a conftest are registered by pytest; the reliability suite uses
# the same ones, so they live in the harness.
from harness import DaemonFactory, start_daemon

__all__ = ["DaemonFactory", "start_daemon"]
