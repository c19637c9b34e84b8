"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_xquik import FakeXquik


@pytest.fixture
def fake_xquik() -> Iterator[FakeXquik]:
    """Yield a running fake Xquik API with a random key and accounts myxaccount, alice, bob."""
    with FakeXquik(accounts=["myxaccount", "alice", "bob"]) as server:
        yield server
