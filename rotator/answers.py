"""Read the Xquik API's answers into plain data: outcomes, write actions, delays, accounts.

Pure functions of plain values (status, headers with lower-cased keys, body bytes, the
parsed JSON payload, ``now``), parsed leniently: flat or nested error bodies, text or
HTML pages from proxies, both success shapes. No I/O and no third-party imports: the
transport (``rotator.client``) builds an ``Answer`` and asks this module what it means.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import email.utils
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC
from typing import Any

from rotator.outcomes import UNCERTAIN_CODES, Outcome, WriteAction
from rotator.redaction import redact, redact_optional, safe_code, safe_token

MAX_RETRY_AFTER = 86400.0
MIN_POLL_DELAY = 0.2
MAX_POLL_DELAY = MAX_RETRY_AFTER  # the server's wait is honoured; the deadline bounds it
DEFAULT_POLL_DELAY = 1.0
MESSAGE_LIMIT = 200

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Answer:
    """One complete HTTP answer, body read; ``headers`` keys are lower-cased."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    payload: object  # the parsed JSON body, None if it is not JSON

    @property
    def is_success(self) -> bool:
        """Tell whether the status is 2xx."""
        return 200 <= self.status < 300


@dataclasses.dataclass(frozen=True, kw_only=True)
class PollNeeded:
    """An answer to a write whose fate only its write action can tell."""

    action: WriteAction | None  # the record the answer carried, if any
    verifying: bool  # x_write_ambiguous: poll at least once, from no known action
    unpollable: Outcome  # what the write came to if there is nothing to poll


@dataclasses.dataclass(frozen=True, kw_only=True)
class XAccount:
    """One X account connected to the Xquik account (``GET /x/accounts``)."""

    id: str
    username: str
    x_user_id: str | None = None
    status: str | None = None
    health: str | None = None  # healthy | needsReauth | locked | suspended | recovering | ...

    @property
    def usable(self) -> bool:
        """Tell whether writes can go through it (unknown fields count as fine)."""
        return self.health in {None, "", "healthy"} and self.status in {None, "", "active"}


def find_x_account(accounts: list[XAccount], name: str) -> XAccount | None:
    """Return the connected account an entry's ``account`` names (username or id), if any."""
    wanted = name.lower().lstrip("@")
    for known in accounts:
        if wanted == known.username.lower() or name in {known.id, known.x_user_id}:
            return known
    return None


def read_x_accounts(payload: object) -> list[XAccount] | None:
    """Return the accounts of a ``GET /x/accounts`` payload; None without an accounts list."""
    entries = payload.get("accounts") if isinstance(payload, dict) else payload
    if not isinstance(entries, list):
        return None
    return [
        XAccount(
            id=str(entry.get("id", "")),
            username=str(entry.get("xUsername") or entry.get("username") or ""),
            x_user_id=_optional_str(entry.get("xUserId")),
            status=_optional_str(entry.get("status")),
            health=_optional_str(entry.get("health")),
        )
        for entry in entries
        if isinstance(entry, dict)
    ]


def read_balance(payload: object) -> int | None:
    """Return the integer ``balance`` of a ``GET /credits`` payload, None if unreadable."""
    return _integer(payload.get("balance")) if isinstance(payload, dict) else None


def json_or_none(body: bytes) -> object:
    """Return the parsed JSON of ``body``, or None if it is empty or not JSON."""
    try:
        return json.loads(body) if body.strip() else None
    except ValueError:
        return None


def server_wait(headers: Mapping[str, str | None], body: object, now: float) -> float | None:
    """Return the largest wait an answer asks for before a retry or poll, or None.

    Reads ``Retry-After`` (seconds or HTTP-date), ``retry-after-ms``, the body's
    ``retryAfter`` / ``retryAfterMs`` (flat or nested under ``error``), ``pollAfterMs`` and
    ``nextAction.afterMs``. An HTTP-date is taken relative to ``now`` (epoch seconds);
    garbage is ignored. Clamped to [0, 86400].
    """
    waits: list[float] = []
    header = headers.get("retry-after")
    if header:
        seconds = _header_seconds(header.strip(), now)
        if seconds is not None:
            waits.append(seconds)
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        waits.append(millis / 1000)
    for record in _records(body):
        for name, scale in (("retryAfter", 1.0), ("retryAfterMs", 0.001), ("pollAfterMs", 0.001)):
            number = _number(record.get(name))
            if number is not None:
                waits.append(number * scale)
        next_action = record.get("nextAction")
        if isinstance(next_action, dict):
            after_ms = _number(next_action.get("afterMs"))
            if after_ms is not None:
                waits.append(after_ms / 1000)
    if not waits:
        return None
    return _clamp(max(waits), 0.0, MAX_RETRY_AFTER)


def poll_delay(answer: Answer, now: float) -> float:
    """Return how long to wait before the next poll: the largest wait asked for, or 1 s."""
    seconds = server_wait(answer.headers, answer.payload, now)
    return _clamp(
        DEFAULT_POLL_DELAY if seconds is None else seconds, MIN_POLL_DELAY, MAX_POLL_DELAY
    )


def should_retry(answer: Answer) -> bool | None:
    """Return the ``x-should-retry`` header as a flag, None when absent or garbled."""
    value = answer.headers.get("x-should-retry", "").strip().lower()
    return {"true": True, "false": False}.get(value)


def read_write_answer(
    answer: Answer, *, code: str | None, message: str, now: float
) -> Outcome | PollNeeded:
    """Return what the answer to a write came to, or that its write action must be polled.

    ``code`` and ``message`` are the answer's, from ``masked_error``.
    """
    action = read_write_action(answer.payload)
    common: dict[str, Any] = {
        "status": answer.status,
        "code": code,
        "retry_after": server_wait(answer.headers, answer.payload, now),
        "should_retry": should_retry(answer),
        "request_id": redact_optional(answer.headers.get("x-request-id")),
        "write_action": action,
    }
    if code == "x_write_ambiguous":
        # Verify before anything else: poll the write action when there is one.
        unpollable = Outcome(kind="uncertain", message=message, **common)
        return PollNeeded(action=action, verifying=True, unpollable=unpollable)
    if answer.is_success and action is not None and action.terminal:
        return terminal_outcome(
            action, answer.status, common["request_id"], common["retry_after"], message
        )
    if answer.is_success and (
        answer.status == 202 or action is not None or code == "x_write_unconfirmed"
    ):
        text = message if code else "the write was accepted but there is nothing to poll"
        unpollable = Outcome(kind="uncertain", message=text, **common)
        return PollNeeded(action=action, verifying=False, unpollable=unpollable)
    if code in UNCERTAIN_CODES:
        return Outcome(kind="uncertain", message=message, **common)
    if answer.is_success and code is None:
        if not isinstance(answer.payload, dict):
            # A 2xx that is not JSON (a portal, a proxy): nothing says the write happened.
            return Outcome(kind="uncertain", message=f"unexpected answer: {message}", **common)
        if answer.payload.get("success") is not False:
            return Outcome(kind="success", **common)
    return Outcome(kind="error", message=message, **common)


def terminal_outcome(
    action: WriteAction,
    status: int,
    request_id: str | None,
    retry_after: float | None,
    message: str,
) -> Outcome:
    """Return the Outcome of a terminal write action; ``message`` is its error's, if any."""
    if action.status == "success":
        return Outcome(kind="success", status=status, request_id=request_id, write_action=action)
    detail = "" if message.startswith("HTTP ") else f": {message}"
    return Outcome(
        kind="error",
        status=status,
        code=action.error_code,
        message=shorten(f"the write action ended {action.status}{detail}"),
        retry_after=retry_after,
        request_id=request_id,
        write_action=action,
    )


def read_write_action(payload: object) -> WriteAction | None:
    """Read an ``x_write_action`` record, leniently; None if the payload is not one."""
    if not isinstance(payload, dict):
        return None
    if payload.get("object") != "x_write_action" and not (
        "id" in payload and "terminal" in payload
    ):
        return None
    status = str(payload.get("status") or "").strip().lower()
    terminal = payload.get("terminal")
    next_action = payload.get("nextAction")
    if not isinstance(next_action, dict):
        next_action = {}
    billing = payload.get("billing")
    if not isinstance(billing, dict):
        billing = {}
    charged = billing.get("charged", payload.get("charged"))
    credits = billing.get("chargedCredits", payload.get("chargedCredits"))
    retryable = payload.get("retryable")
    return WriteAction(
        id=safe_token(payload.get("id") or payload.get("writeActionId")) or "",
        status=status,
        terminal=_flag(terminal)
        if terminal is not None
        else status in ("success", "failed", "expired"),
        safe_to_retry=_flag(payload.get("safeToRetry")),
        retryable=None if retryable is None else _flag(retryable),
        status_url=safe_token(payload.get("statusUrl")),
        requires_new_key=_flag(next_action.get("requiresNewIdempotencyKey")),
        next_action=_code(next_action.get("type")),
        error_code=_code(payload.get("error")),
        expires_at=_epoch(payload.get("expiresAt")),
        charged=None if charged is None else _flag(charged),
        charged_credits=_integer(credits) if credits is not None else None,
    )


def masked_error(answer: Answer, secret: str | None) -> tuple[str | None, str]:
    """Return the answer's error code and short message, ``secret`` masked if echoed.

    The secret is masked before the message is cut, so no part of it survives.
    """
    code, message = error_code_and_message(answer)
    return code, shorten(scrub(message, secret))


def error_code_and_message(answer: Answer) -> tuple[str | None, str]:
    """Return the error code (flat or nested) and the message of any answer, uncut."""
    payload = answer.payload
    if isinstance(payload, dict):
        error = payload.get("error")
        code = _code(error) or _code(payload.get("code"))
        message = payload.get("message")
        if isinstance(error, dict) and not isinstance(message, str):
            message = error.get("message")
        if isinstance(message, str) and message.strip():
            return code, message
        return code, code or f"HTTP {answer.status}"
    if payload is not None:
        return None, json.dumps(payload)
    return None, _text_message(answer)


def scrub(text: str, secret: str | None) -> str:
    """Return ``text`` with every occurrence of ``secret`` masked."""
    return redact(text, [secret], mask="***")


def shorten(text: str) -> str:
    """Return ``text`` on one line, cut to ``MESSAGE_LIMIT`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _text_message(answer: Answer) -> str:
    body = answer.body.strip()
    if not body:
        return f"HTTP {answer.status} with an empty body"
    content_type = answer.headers.get("content-type", "").lower()
    if "html" in content_type or body.startswith(b"<"):
        title = _TITLE.search(body)
        text = title.group(1).decode("utf-8", "replace").strip() if title else ""
        return f"HTML error page ({text})" if text else "HTML error page"
    return body.decode("utf-8", "replace").strip().splitlines()[0]


def _header_seconds(text: str, now: float) -> float | None:
    number = _number(text)
    if number is not None:
        return _clamp(number, 0.0, MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:  # older Pythons return None instead of raising
        return None
    if when.tzinfo is None:  # "-0000" dates are UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    return _clamp(when.timestamp() - now, 0.0, MAX_RETRY_AFTER)


def _records(body: object) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return []
    error = body.get("error")
    return [body, error] if isinstance(error, dict) else [body]


def _code(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("code") or value.get("type")
    if isinstance(value, str) and value.strip():
        return safe_code(value.strip().lower())  # the key echoed as a code becomes "unknown"
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        number = decimal.Decimal(str(value).strip())
    except decimal.InvalidOperation:
        return None
    return int(number) if number.is_finite() else None


def _flag(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _epoch(value: object) -> float | None:
    """Return an ISO 8601 time (or epoch milliseconds) as epoch seconds, None if unreadable."""
    if isinstance(value, str) and value.strip():
        try:
            when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    number = _number(value)
    return None if number is None else number / 1000


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))
