"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from contract import contract_problems
from fake_xquik import FakeXquik
from hypothesis import settings

# Deterministic property tests: the same examples on every run, nothing written to disk.
settings.register_profile("rotator", derandomize=True, deadline=None, database=None)
settings.load_profile("rotator")


@pytest.fixture
def fake_xquik() -> Iterator[FakeXquik]:
    """Yield a running fake Xquik API with a random key and accounts myxaccount, alice, bob."""
    with FakeXquik(accounts=["myxaccount", "alice", "bob"]) as server:
        yield server
    # Crashes inside the fake's handler would otherwise only show as odd client outcomes.
    assert server.errors == [], f"the fake Xquik server failed: {server.errors!r}"
    # Every answer the fake made must parse with the official SDK's models.
    assert contract_problems(server.own_answers) == []
