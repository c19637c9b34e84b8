"""Talk to Xquik: avatar writes (file or URL), write-action polling and the free reads.

Every answer to a write becomes an ``Outcome`` (see ``rotator.outcomes``), parsed
leniently: flat or nested error bodies, text or HTML pages from proxies, both
success shapes. This is the only module that imports httpx; every httpx exception
is translated here. The API key travels in one request header and nowhere else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import decimal
import email.utils
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC
from typing import Any
from urllib.parse import quote

import httpx

from rotator import __version__
from rotator.errors import ApiError, ApiReadError
from rotator.outcomes import UNCERTAIN_CODES, Outcome, OutcomeKind, WriteAction

IDEMPOTENCY_KEY_PATTERN = re.compile(r"[!-~]{1,255}")
MAX_RETRY_AFTER = 86400.0
MIN_POLL_DELAY = 0.2
MAX_POLL_DELAY = 60.0
DEFAULT_POLL_DELAY = 1.0
MESSAGE_LIMIT = 200

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


@dataclasses.dataclass(frozen=True)
class FilePayload:
    """An image to upload, sent byte for byte with ``mime`` as the part's content type."""

    data: bytes = dataclasses.field(repr=False)
    filename: str
    mime: str


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


@dataclasses.dataclass(frozen=True)
class _Answer:
    """One complete HTTP answer, body read."""

    status: int
    headers: httpx.Headers
    body: bytes
    payload: object  # the parsed JSON body, None if it is not JSON

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


@dataclasses.dataclass(frozen=True)
class _Failure:
    """A request that got no answer, and whether any of it left this machine."""

    kind: OutcomeKind  # "not_sent" or "no_answer"
    message: str
    exc: BaseException


def idempotency_key(entry_id: str, image_sha256: str, rotation_id: str, generation: int = 0) -> str:
    """Return the Idempotency-Key of one write: the same inputs always give the same key.

    ``generation`` is bumped when the API demands a new key for the same image.
    """
    # A JSON list is an unambiguous encoding: no two input tuples share it.
    material = json.dumps([entry_id, image_sha256, rotation_id, generation], ensure_ascii=True)
    return "rot-" + hashlib.sha256(material.encode("ascii")).hexdigest()[:48]


def retry_after_seconds(header: str | None, body: object, now: float) -> float | None:
    """Return how long the server asked us to wait, in seconds, or None if it did not say.

    Reads the ``Retry-After`` header (seconds, fractional allowed, or an HTTP-date taken
    relative to ``now``, epoch seconds), else the body's ``retryAfter`` (seconds) or
    ``retryAfterMs``, flat or nested under ``error``. Garbage is ignored; the result is
    clamped to [0, 86400].
    """
    if header:
        seconds = _header_seconds(header.strip(), now)
        if seconds is not None:
            return seconds
    for record in _records(body):
        for name, scale in (("retryAfter", 1.0), ("retryAfterMs", 0.001)):
            number = _number(record.get(name))
            if number is not None:
                return _clamp(number * scale, 0.0, MAX_RETRY_AFTER)
    return None


class XquikClient:
    """Send avatar writes and free reads to Xquik over one keep-alive connection pool."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        user_agent: str = f"rotator/{__version__}",
        max_poll_time: float = 600.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # httpx and httpcore log request details at INFO/DEBUG.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpcore").setLevel(logging.WARNING)
        self._base_url = base_url.rstrip("/")
        try:
            self._origin = httpx.URL(self._base_url)
        except httpx.InvalidURL as exc:
            raise ApiError(f"the API base URL {base_url!r} is not a valid URL") from exc
        if self._origin.scheme not in ("http", "https") or not self._origin.host:
            raise ApiError(f"the API base URL {base_url!r} must be an http(s) URL with a host")
        if api_key is not None and not re.fullmatch(r"[!-~]+", api_key):
            raise ApiError("the API key contains characters that cannot be sent in a header")
        self._api_key = api_key
        self._timeout = timeout
        self._max_poll_time = max_poll_time
        self._sleep = sleep
        self._clock = clock
        headers = {"User-Agent": user_agent}
        if api_key is not None:
            headers["x-api-key"] = api_key
        # Retries happen at one layer only, ours: the transport never resends.
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            transport=httpx.AsyncHTTPTransport(retries=0),
        )

    def __repr__(self) -> str:
        key = "<set>" if self._api_key else None
        return f"XquikClient(base_url={self._base_url!r}, api_key={key})"

    async def __aenter__(self) -> XquikClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def update_avatar(
        self,
        account: str,
        *,
        idempotency_key: str,
        file: FilePayload | None = None,
        url: str | None = None,
        on_answer: Callable[[], None] | None = None,
    ) -> Outcome:
        """Change ``account``'s avatar to ``file`` or ``url`` and return what came of it.

        A durable write that is still running is polled until it is terminal (never
        resent); the outcome covers the write and its polls. ``on_answer`` is called
        once the write itself is over (answered or failed), before any poll: polls do
        not count against the write limit.
        """
        if (file is None) == (url is None):
            raise ValueError("update_avatar needs exactly one of file or url")
        if not IDEMPOTENCY_KEY_PATTERN.fullmatch(idempotency_key):
            raise ValueError("an Idempotency-Key must be 1-255 printable ASCII characters")
        started = time.monotonic()
        request: dict[str, Any] = {"headers": {"Idempotency-Key": idempotency_key}}
        if file is not None:
            request["data"] = {"account": account}
            request["files"] = {"file": (file.filename, file.data, file.mime)}
        else:
            request["json"] = {"account": account, "url": url}
        try:
            answer = await self._send("PATCH", f"{self._base_url}/x/profile/avatar", **request)
        finally:
            if on_answer is not None:
                on_answer()
        if isinstance(answer, _Failure):
            outcome = Outcome(kind=answer.kind, message=answer.message)
        else:
            outcome = await self._settle(answer)
        return dataclasses.replace(outcome, duration_ms=_elapsed_ms(started))

    async def poll_write_action(self, location: str) -> Outcome:
        """Poll a write action (a Location, statusUrl or full URL) until it is terminal.

        Polls at least once, then for up to ``max_poll_time``.
        """
        started = time.monotonic()
        url = self._same_origin(location)
        if url is None:
            outcome = Outcome(kind="uncertain", message="the write action's URL is not on the API")
        else:
            outcome = await self._poll(
                url, first_delay=0.0, request_id=None, status=None, at_least_once=True
            )
        return dataclasses.replace(outcome, duration_ms=_elapsed_ms(started))

    async def credits_balance(self) -> int:
        """Return the credit balance (``GET /credits``)."""
        payload = await self._read("/credits")
        balance = _integer(payload.get("balance")) if isinstance(payload, dict) else None
        if balance is None:
            raise ApiReadError("GET /credits answered without a readable balance")
        return balance

    async def account_info(self) -> dict[str, object]:
        """Return the Xquik account record (``GET /account``) as parsed JSON."""
        payload = await self._read("/account")
        if not isinstance(payload, dict):
            raise ApiReadError("GET /account answered with something that is not a JSON object")
        return payload

    async def x_accounts(self) -> list[XAccount]:
        """Return the X accounts connected to this Xquik account (``GET /x/accounts``)."""
        payload = await self._read("/x/accounts")
        entries = payload.get("accounts") if isinstance(payload, dict) else payload
        if not isinstance(entries, list):
            raise ApiReadError("GET /x/accounts answered without an accounts list")
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

    async def _read(self, path: str) -> object:
        answer = await self._send("GET", self._base_url + path)
        if isinstance(answer, _Failure):
            raise ApiReadError(f"GET {path}: {answer.message}") from answer.exc
        if not answer.is_success:
            code, message = self._describe(answer)
            detail = f" ({code})" if code else ""
            raise ApiReadError(
                f"GET {path} failed with HTTP {answer.status}{detail}: {message}",
                status=answer.status,
                code=code,
            )
        if answer.payload is None:
            raise ApiReadError(f"GET {path} answered with something that is not JSON")
        return answer.payload

    async def _send(self, method: str, url: str, **request: Any) -> _Answer | _Failure:
        """Send one request; return its answer, or how it failed and whether it left."""
        stages: set[str] = set()

        async def trace(name: str, _info: Mapping[str, Any]) -> None:
            stages.add(name)

        def sent() -> bool:
            # Once request headers start to leave, the server may act on the request.
            return any("send_request_headers" in stage for stage in stages)

        host = self._origin.netloc.decode("ascii", "replace")
        try:
            # httpx timeouts are per phase; this bounds the whole request.
            async with asyncio.timeout(self._timeout):
                response = await self._http.request(
                    method, url, extensions={"trace": trace}, **request
                )
        except httpx.ConnectError as exc:
            return self._failure("not_sent", f"could not connect to {host}", exc)
        except httpx.ConnectTimeout as exc:
            return self._failure("not_sent", f"connecting to {host} timed out", exc)
        except httpx.PoolTimeout as exc:
            return self._failure("not_sent", "no free connection to the API in time", exc)
        except httpx.ReadTimeout as exc:
            return self._failure("no_answer", f"no answer within {self._timeout:g} s", exc)
        except httpx.RemoteProtocolError as exc:
            kind: OutcomeKind = "no_answer" if sent() else "not_sent"
            return self._failure(kind, "the server closed the connection without answering", exc)
        except httpx.HTTPError as exc:
            kind = "no_answer" if sent() else "not_sent"
            return self._failure(kind, f"the request to {host} failed", exc)
        except TimeoutError as exc:
            kind = "no_answer" if sent() else "not_sent"
            return self._failure(kind, f"no complete answer within {self._timeout:g} s", exc)
        except (httpx.InvalidURL, httpx.StreamError) as exc:
            return self._failure("not_sent", "the request could not be built", exc)
        body = response.content
        return _Answer(response.status_code, response.headers, body, _json_or_none(body))

    def _failure(self, kind: OutcomeKind, what: str, exc: BaseException) -> _Failure:
        detail = str(exc).strip() or type(exc).__name__
        return _Failure(kind, _short(self._scrub(f"{what}: {detail}")), exc)

    def _describe(self, answer: _Answer) -> tuple[str | None, str]:
        """Return the answer's error code and short message, the key masked if echoed.

        The key is masked before the message is cut, so no part of it survives.
        """
        code, message = _error_code_and_message(answer)
        return code, _short(self._scrub(message))

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    async def _settle(self, answer: _Answer) -> Outcome:
        """Turn the answer to a write into an Outcome, polling a running write action."""
        request_id = answer.headers.get("x-request-id")
        action = _write_action(answer.payload)
        code, message = self._describe(answer)
        retry_after = retry_after_seconds(
            answer.headers.get("retry-after"), answer.payload, self._clock()
        )
        common: dict[str, Any] = {
            "status": answer.status,
            "code": code,
            "retry_after": retry_after,
            "request_id": request_id,
            "write_action": action,
        }
        if code == "x_write_ambiguous":
            # Verify before anything else: poll the write action when there is one.
            url = self._poll_url(answer, action)
            if url is None:
                return Outcome(kind="uncertain", message=message, **common)
            return await self._poll(
                url,
                first_delay=_poll_delay(answer, self._clock()),
                request_id=request_id,
                status=answer.status,
                at_least_once=True,
            )
        if answer.is_success and action is not None and action.terminal:
            return _terminal_outcome(action, answer.status, request_id, retry_after, message)
        if answer.is_success and (
            answer.status == 202 or action is not None or code == "x_write_unconfirmed"
        ):
            url = self._poll_url(answer, action)
            if url is None:
                text = message if code else "the write was accepted but there is nothing to poll"
                return Outcome(kind="uncertain", message=text, **common)
            return await self._poll(
                url,
                first_delay=_poll_delay(answer, self._clock()),
                request_id=request_id,
                status=answer.status,
                action=action,
            )
        if code in UNCERTAIN_CODES:
            return Outcome(kind="uncertain", message=message, **common)
        if answer.is_success and code is None:
            if not isinstance(answer.payload, dict):
                # A 2xx that is not JSON (a portal, a proxy): nothing says the write happened.
                return Outcome(kind="uncertain", message=f"unexpected answer: {message}", **common)
            if answer.payload.get("success") is not False:
                return Outcome(kind="success", **common)
        return Outcome(kind="error", message=message, **common)

    async def _poll(
        self,
        url: str,
        *,
        first_delay: float,
        request_id: str | None,
        status: int | None,
        action: WriteAction | None = None,
        at_least_once: bool = False,
    ) -> Outcome:
        """GET a write action until it is terminal or ``max_poll_time`` has passed."""
        started = time.monotonic()
        slept = 0.0
        delay = first_delay
        polls = 0
        problem = "the write action did not finish"
        while True:
            # An injected sleep may not advance the clock: count what was asked for too.
            remaining = self._max_poll_time - max(time.monotonic() - started, slept)
            if remaining <= 0 and (polls > 0 or not at_least_once):
                state = action.status if action is not None else "unknown"
                return Outcome(
                    kind="uncertain",
                    status=status,
                    message=_short(
                        f"{problem}: still {state} after {self._max_poll_time:g} s of polling"
                    ),
                    request_id=request_id,
                    write_action=action,
                )
            delay = max(0.0, min(delay, remaining))
            if delay > 0:
                await self._sleep(delay)
                slept += delay
            answer = await self._send("GET", url)
            polls += 1
            delay = DEFAULT_POLL_DELAY
            if isinstance(answer, _Failure):
                problem = f"polling failed ({answer.message})"
                continue
            status = answer.status
            polled = _write_action(answer.payload)
            delay = _poll_delay(answer, self._clock())
            if answer.is_success and polled is not None:
                action = polled
                if polled.terminal:
                    retry_after = retry_after_seconds(
                        answer.headers.get("retry-after"), answer.payload, self._clock()
                    )
                    _, message = self._describe(answer)
                    return _terminal_outcome(
                        polled, answer.status, request_id, retry_after, message
                    )
                problem = "the write action did not finish"
                continue
            code, message = self._describe(answer)
            if answer.is_success or answer.status == 429 or answer.status >= 500:
                problem = _short(f"polling answered HTTP {answer.status}: {message}")
                continue
            # A 4xx to a poll will not change by asking again; the write's fate is unknown.
            return Outcome(
                kind="uncertain",
                status=answer.status,
                code=code,
                message=_short(f"polling the write action failed: {message}"),
                request_id=request_id,
                write_action=action,
            )

    def _poll_url(self, answer: _Answer, action: WriteAction | None) -> str | None:
        candidates = [answer.headers.get("location")]
        if action is not None:
            candidates.append(action.status_url)
            if action.id:
                candidates.append(f"{self._base_url}/x/write-actions/{quote(action.id, safe='')}")
        for candidate in candidates:
            url = self._same_origin(candidate) if candidate else None
            if url is not None:
                return url
        return None

    def _same_origin(self, location: str) -> str | None:
        """Resolve ``location`` against the API; None if it points elsewhere (key leak)."""
        try:
            url = self._origin.join(location.strip())
        except httpx.InvalidURL:
            return None
        same = (url.scheme, url.host, url.port) == (
            self._origin.scheme,
            self._origin.host,
            self._origin.port,
        )
        return str(url) if same else None


def _terminal_outcome(
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
        message=_short(f"the write action ended {action.status}{detail}"),
        retry_after=retry_after,
        request_id=request_id,
        write_action=action,
    )


def _write_action(payload: object) -> WriteAction | None:
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
    return WriteAction(
        id=str(payload.get("id") or ""),
        status=status,
        terminal=_flag(terminal)
        if terminal is not None
        else status in ("success", "failed", "expired"),
        safe_to_retry=_flag(payload.get("safeToRetry")),
        retryable=_flag(payload.get("retryable")),
        status_url=_optional_str(payload.get("statusUrl")),
        requires_new_key=isinstance(next_action, dict)
        and _flag(next_action.get("requiresNewIdempotencyKey")),
        error_code=_code(payload.get("error")),
    )


def _error_code_and_message(answer: _Answer) -> tuple[str | None, str]:
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


def _text_message(answer: _Answer) -> str:
    body = answer.body.strip()
    if not body:
        return f"HTTP {answer.status} with an empty body"
    content_type = answer.headers.get("content-type", "").lower()
    if "html" in content_type or body.startswith(b"<"):
        title = _TITLE.search(body)
        text = title.group(1).decode("utf-8", "replace").strip() if title else ""
        return f"HTML error page ({text})" if text else "HTML error page"
    return body.decode("utf-8", "replace").strip().splitlines()[0]


def _poll_delay(answer: _Answer, now: float) -> float:
    seconds = retry_after_seconds(answer.headers.get("retry-after"), None, now)
    if seconds is None and isinstance(answer.payload, dict):
        poll_after_ms = _number(answer.payload.get("pollAfterMs"))
        if poll_after_ms is not None:
            seconds = poll_after_ms / 1000
        else:
            seconds = retry_after_seconds(None, answer.payload, now)
    return _clamp(
        DEFAULT_POLL_DELAY if seconds is None else seconds, MIN_POLL_DELAY, MAX_POLL_DELAY
    )


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
        return value.strip().lower()
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


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _json_or_none(body: bytes) -> object:
    try:
        return json.loads(body) if body.strip() else None
    except ValueError:
        return None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
