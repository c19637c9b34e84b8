"""Tests for rotator.advice: every pause and error that needs a person names the step."""

from __future__ import annotations

import pytest

from rotator.advice import next_step, next_step_for_error


@pytest.mark.parametrize(
    ("kind", "account", "expected"),
    [
        ("account", "alice", "reconnect or unlock @alice in the Xquik dashboard"),
        ("account", "alice", "then run: rotator resume --account alice"),
        ("credits", None, "top up credits"),
        ("auth", None, "then run: rotator resume"),
        ("manual", "bob", "rotator resume --account bob"),
        ("daily", "bob", "nothing to do, it resumes by itself"),
        ("x_rate_limited", "bob", "nothing to do"),
        ("rate_limit", None, "nothing to do"),
    ],
)
def test_each_pause_kind_says_what_to_do(kind: str, account: str | None, expected: str) -> None:
    """A pause's next step names the action (and the command) or says none is needed."""
    assert expected in next_step(kind, account)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("account_needs_reauth", "reconnect or unlock @alice"),
        ("insufficient_credits", "top up credits"),
        ("unauthenticated", "the API key was refused"),
        ("x_image_invalid", "fix or replace the file"),
        ("x_write_ambiguous", "look at @alice's avatar on X"),
    ],
)
def test_errors_a_person_can_fix_name_the_step(code: str, expected: str) -> None:
    """The last error of an entry gets a next step when a person can do something."""
    step = next_step_for_error(code, "alice")
    assert step is not None
    assert expected in step


@pytest.mark.parametrize("code", ["x_transient_error", "internal_error", "no_such_code"])
def test_errors_that_time_fixes_have_no_step(code: str) -> None:
    """Transient and unknown errors need nobody: no step is printed."""
    assert next_step_for_error(code, "alice") is None
