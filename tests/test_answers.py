"""Reading the API's answers from plain values, without HTTP (rotator.answers)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import pytest

from rotator.answers import (
    Answer,
    PollNeeded,
    XAccount,
    find_x_account,
    json_or_none,
    masked_error,
    poll_delay,
    read_balance,
    read_write_action,
    read_write_answer,
    read_x_accounts,
    server_wait,
)
from rotator.outcomes import Outcome, WriteAction

NOW = 1_800_000_000.0  # a fixed wall clock for HTTP-date Retry-After
KEY = "xq_" + "a" * 64


def answer(status: int, payload: object = None, *, body: bytes = b"", **headers: str) -> Answer:
    """Build an Answer the way the transport does: lower-cased header names."""
    lowered = {name.replace("_", "-").lower(): value for name, value in headers.items()}
    return Answer(status, lowered, body, payload)


def read(reply: Answer) -> Outcome | PollNeeded:
    """Read the answer to a write as the client does."""
    code, message = masked_error(reply, KEY)
    return read_write_answer(reply, code=code, message=message, now=NOW)


# -- Retry-After and poll delays -------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        (email.utils.formatdate(NOW - 30, usegmt=True), None, 0.0),
        ("5, 7", {"retryAfter": 9}, 9.0),  # a repeated header, joined, is unreadable
        (" 2.5 ", None, 2.5),
        (None, {"retryAfter": 3, "error": {"retryAfter": 8}}, 8.0),
        (None, {"retryAfterMs": 250, "error": {"retryAfter": 8}}, 8.0),
        ("2", {"retryAfterMs": 2500}, 2.5),
        (None, {"retryAfter": True, "retryAfterMs": "1500"}, 1.5),
        (None, "retryAfter", None),
    ],
)
def test_retry_after_edge_cases(header: str | None, body: object, expected: float | None) -> None:
    """Undated zones, past dates, joined headers, nested bodies and booleans; the largest wins."""
    assert server_wait({"retry-after": header} if header else {}, body, NOW) == expected


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Put the process in a zone 5:30 east of UTC for one test, then restore the zone."""
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_http_date_without_zone_is_utc(far_from_utc: None) -> None:
    """An HTTP-date marked "-0000" counts as UTC, not as the machine's local time."""
    assert server_wait({"retry-after": email.utils.formatdate(NOW + 30)}, None, NOW) == 30.0


@pytest.mark.parametrize(
    ("headers", "payload", "expected"),
    [
        ({"retry-after": "3"}, {"pollAfterMs": 9000}, 9.0),
        ({"retry-after": "3"}, {"pollAfterMs": 900}, 3.0),
        ({}, {"pollAfterMs": 4000, "retryAfter": 9}, 9.0),
        ({"retry-after-ms": "1600"}, {"nextAction": {"type": "poll", "afterMs": 30000}}, 30.0),
        ({"retry-after-ms": "7500"}, {"pollAfterMs": 10}, 7.5),
        ({}, {"retryAfter": 5}, 5.0),
        ({"retry-after": "never"}, {"pollAfterMs": "soon"}, 1.0),
        ({}, {"pollAfterMs": -50}, 0.2),
    ],
)
def test_poll_delay_is_the_largest_wait_asked_for(
    headers: dict[str, str], payload: object, expected: float
) -> None:
    """Retry-After, retry-after-ms, pollAfterMs, nextAction.afterMs, retryAfter: the largest."""
    assert poll_delay(Answer(202, headers, b"", payload), NOW) == expected


# -- messages --------------------------------------------------------------------------


def test_key_is_masked_before_the_message_is_cut() -> None:
    """A key straddling the 200-character cut leaves no prefix of itself behind."""
    code, message = masked_error(
        answer(500, {"error": "internal_error", "message": "x" * 190 + KEY}), KEY
    )
    assert code == "internal_error"
    assert KEY[:8] not in message
    assert message.endswith("***")


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b"  \r\n ", None), (b'{"a": 1}', {"a": 1}), (b"<html>", None), (b"[1, 2]", [1, 2])],
)
def test_json_or_none(body: bytes, expected: object) -> None:
    """Blank and non-JSON bodies parse to None; JSON of any shape parses to itself."""
    assert json_or_none(body) == expected


# -- write actions and write answers ---------------------------------------------------


def test_write_action_is_read_leniently() -> None:
    """String flags, odd status case and a missing terminal flag are all understood."""
    action = read_write_action(
        {
            "object": "x_write_action",
            "id": 42,
            "status": " FAILED ",
            "safeToRetry": "True",
            "retryable": "yes",
            "nextAction": {"requiresNewIdempotencyKey": "true"},
            "error": {"type": "X_REJECTED"},
        }
    )
    assert action == WriteAction(
        id="42",
        status="failed",
        terminal=True,
        safe_to_retry=True,
        retryable=False,
        requires_new_key=True,
        error_code="x_rejected",
    )


@pytest.mark.parametrize("payload", [{"success": True}, {"id": "xwa_1"}, ["x_write_action"], None])
def test_other_payloads_are_not_write_actions(payload: object) -> None:
    """A legacy success, an id without terminal, a list or nothing is no write action."""
    assert read_write_action(payload) is None


def test_ambiguous_write_asks_for_verification() -> None:
    """x_write_ambiguous asks for a verifying poll, uncertain if there is nothing to poll."""
    reading = read(answer(500, {"error": "x_write_ambiguous", "message": "?"}, x_request_id="r1"))
    assert isinstance(reading, PollNeeded)
    assert reading.verifying
    assert reading.unpollable.kind == "uncertain"
    assert (reading.unpollable.code, reading.unpollable.request_id) == ("x_write_ambiguous", "r1")


def test_running_write_asks_for_a_poll_with_its_action() -> None:
    """A 202 running action asks for a plain poll that keeps the action it carried."""
    record = {"object": "x_write_action", "id": "xwa_1", "status": "accepted", "terminal": False}
    reading = read(answer(202, record, retry_after="2"))
    assert isinstance(reading, PollNeeded)
    assert not reading.verifying
    assert reading.action is not None
    assert reading.action.id == "xwa_1"
    assert reading.unpollable.message == "the write was accepted but there is nothing to poll"
    assert reading.unpollable.retry_after == 2.0


@pytest.mark.parametrize(
    ("reply", "kind", "code"),
    [
        (answer(200, {"success": True}), "success", None),
        (
            answer(200, {"object": "x_write_action", "id": "a", "status": "success"}),
            "success",
            None,
        ),
        (answer(500, {"error": "x_write_unconfirmed"}), "uncertain", "x_write_unconfirmed"),
        (answer(200, None, body=b"<html>portal</html>"), "uncertain", None),
        (answer(200, {"success": False}), "error", None),
        (answer(409, {"error": "idempotency_conflict"}), "error", "idempotency_conflict"),
    ],
)
def test_settled_write_answers(reply: Answer, kind: str, code: str | None) -> None:
    """Answers that need no poll come to the right kind and code at once."""
    reading = read(reply)
    assert isinstance(reading, Outcome)
    assert (reading.kind, reading.code) == (kind, code)


# -- free reads ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"balance": "1e3"}, 1000),
        ({"balance": True}, None),
        ({"balance": "inf"}, None),
        ({"balance": "NaN"}, None),
        ({"balance": None}, None),
        ({}, None),
        ([{"balance": 5}], None),
    ],
)
def test_balance_reading(payload: object, expected: int | None) -> None:
    """Only a finite number (or a string of one) is a balance; booleans are not."""
    assert read_balance(payload) == expected


def test_x_accounts_accept_a_bare_list_and_skip_junk() -> None:
    """A bare list of accounts is read too; entries that are not objects are skipped."""
    accounts = read_x_accounts([{"id": 7, "username": "Zed", "xUserId": 99}, "junk"])
    assert accounts == [XAccount(id="7", username="Zed", x_user_id="99")]
    assert read_x_accounts({"accounts": "none"}) is None


def test_find_x_account_by_username_or_id() -> None:
    """An entry's account matches a username (any case, optional @), an id or an X user id."""
    alice = XAccount(id="1", username="Alice", x_user_id="100", health="needsReauth")
    bob = XAccount(id="2", username="bob", status="active", health="healthy")
    accounts = [alice, bob]
    assert find_x_account(accounts, "@alice") is alice
    assert find_x_account(accounts, "2") is bob
    assert find_x_account(accounts, "100") is alice
    assert find_x_account(accounts, "carol") is None
    assert (alice.usable, bob.usable) == (False, True)
