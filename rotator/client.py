"""Talk to Xquik over HTTP: avatar writes (file or URL), write-action polling, free reads.

This is the transport, and the only module that imports httpx; every httpx exception
is translated here. What an answer means is read by ``rotator.answers``, from plain
values. The API key travels in one request header and nowhere else.

Why one module at this size: its one job is the HTTP exchange with Xquik. A write is
not over when its request is: the client polls its write action until it is terminal or
past its ``expiresAt``, with the same timeouts, origin checks and failure translation as
the write, so sending and polling stay together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import re
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

# httpcore tries ``import sniffio`` on every request; when it is not installed, each try
# searches the whole import path again (about 1 ms of CPU per write). Recording the
# absence once makes that a dictionary look-up.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

from rotator import __version__
from rotator.answers import (
    DEFAULT_POLL_DELAY,
    Answer,
    XAccount,
    json_or_none,
    masked_error,
    poll_delay,
    read_balance,
    read_write_action,
    read_write_answer,
    read_x_accounts,
    scrub,
    server_wait,
    shorten,
    terminal_outcome,
)
from rotator.errors import ApiError, ApiReadError
from rotator.outcomes import Outcome, OutcomeKind, TransportFailure, WriteAction
from rotator.redaction import redact_optional

IDEMPOTENCY_KEY_PATTERN = re.compile(r"[!-~]{1,255}")
EXPIRY_GRACE = 5.0  # seconds past a write's expiresAt for the server to mark it expired
OnRecord = Callable[[WriteAction, str], None]  # a write record seen, and the URL that polls it
_DNS_HINTS = ("name or service not known", "temporary failure in name resolution", "nodename")


@dataclasses.dataclass(frozen=True)
class FilePayload:
    """An image to upload, sent byte for byte with ``mime`` as the part's content type."""

    data: bytes = dataclasses.field(repr=False)
    filename: str
    mime: str


@dataclasses.dataclass(frozen=True)
class _Failure:
    """A request that got no answer, and whether any of it left this machine."""

    kind: OutcomeKind  # "not_sent" or "no_answer"
    message: str
    exc: BaseException
    failure: TransportFailure


def idempotency_key(entry_id: str, image_sha256: str, rotation_id: str, generation: int = 0) -> str:
    """Return the Idempotency-Key of one write: the same inputs always give the same key.

    ``generation`` is bumped when the API demands a new key for the same image.
    """
    # A JSON list is an unambiguous encoding: no two input tuples share it.
    material = json.dumps([entry_id, image_sha256, rotation_id, generation], ensure_ascii=True)
    return "rot-" + hashlib.sha256(material.encode("ascii")).hexdigest()[:48]


# The HTML form encoding of a name in a multipart header: what httpx, and so the SDK, does.
_FORM_PARAM_ESCAPES = {'"': "%22", "\\": "\\\\"} | {
    chr(code): f"%{code:02X}" for code in range(0x20) if code != 0x1B
}
_FORM_PARAM_SPECIAL = re.compile("|".join(re.escape(char) for char in _FORM_PARAM_ESCAPES))


def multipart_body(account: str, file: FilePayload) -> tuple[str, bytes]:
    """Return the Content-Type and body of a file write, the body built whole.

    httpx streams ``files=`` part by part, one socket write (each with its own timeout
    scope) per piece: about a sixth of the client's CPU per write. One body goes out in
    one write. The parts are the official SDK's, byte for byte but the random boundary
    (tests/test_contract.py compares them).
    """
    boundary = os.urandom(16).hex().encode("ascii")
    body = b"".join(
        [
            b"--%s\r\nContent-Disposition: form-data; %s\r\n\r\n%s\r\n"
            % (boundary, _form_param("name", "account"), account.encode()),
            b"--%s\r\nContent-Disposition: form-data; %s; %s\r\nContent-Type: %s\r\n\r\n"
            % (
                boundary,
                _form_param("name", "file"),
                _form_param("filename", file.filename),
                file.mime.encode(),
            ),
            file.data,
            b"\r\n--%s--\r\n" % boundary,
        ]
    )
    return f"multipart/form-data; boundary={boundary.decode('ascii')}", body


def _form_param(name: str, value: str) -> bytes:
    escaped = _FORM_PARAM_SPECIAL.sub(lambda found: _FORM_PARAM_ESCAPES[found[0]], value)
    return f'{name}="{escaped}"'.encode()


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
        # Accept as the official SDK sends it: the API answers JSON.
        headers = {"User-Agent": user_agent, "Accept": "application/json"}
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
        on_record: OnRecord | None = None,
    ) -> Outcome:
        """Change ``account``'s avatar to ``file`` or ``url`` and return what came of it.

        A durable write that is still running is polled until it is terminal or its
        ``expiresAt`` has passed (never resent); without ``expiresAt`` polling stops
        after ``max_poll_time`` with an ``unresolved`` outcome, to be resumed by
        ``poll_write_action``. The outcome covers the write and its polls.
        ``on_answer`` is called once the write itself is over (answered or failed),
        before any poll: polls do not count against the write limit. ``on_record`` is
        called with every write record seen, before the next wait, so the caller can
        keep it.
        """
        if (file is None) == (url is None):
            raise ValueError("update_avatar needs exactly one of file or url")
        if not IDEMPOTENCY_KEY_PATTERN.fullmatch(idempotency_key):
            raise ValueError("an Idempotency-Key must be 1-255 printable ASCII characters")
        started = time.monotonic()
        request: dict[str, Any] = {"headers": {"Idempotency-Key": idempotency_key}}
        if file is not None:
            content_type, request["content"] = multipart_body(account, file)
            request["headers"]["Content-Type"] = content_type
        else:
            request["json"] = {"account": account, "url": url}
        try:
            answer = await self._send("PATCH", f"{self._base_url}/x/profile/avatar", **request)
        finally:
            if on_answer is not None:
                on_answer()
        if isinstance(answer, _Failure):
            outcome = Outcome(kind=answer.kind, message=answer.message, failure=answer.failure)
        else:
            outcome = await self._settle(answer, on_record)
        return dataclasses.replace(outcome, duration_ms=_elapsed_ms(started))

    async def poll_write_action(
        self,
        location: str | None,
        *,
        action_id: str | None = None,
        expires_at: float | None = None,
        request_id: str | None = None,
        on_record: OnRecord | None = None,
    ) -> Outcome:
        """Poll a write action (a Location, statusUrl or full URL) until it is terminal.

        Without a usable ``location`` (none, or not on this API: the base URL changed)
        the write action is found by ``action_id``. Polls at least once, then until
        ``expires_at`` (epoch seconds, from the record) or, without it, for up to
        ``max_poll_time``.
        """
        started = time.monotonic()
        url = self._same_origin(location) if location else None
        if url is None and action_id:
            url = f"{self._base_url}/x/write-actions/{quote(action_id, safe='')}"
        if url is None:
            outcome = Outcome(kind="uncertain", message="the write action's URL is not on the API")
        else:
            outcome = await self._poll(
                url,
                first_delay=0.0,
                request_id=request_id,
                status=None,
                expires_at=expires_at,
                at_least_once=True,
                on_record=on_record,
            )
        return dataclasses.replace(outcome, duration_ms=_elapsed_ms(started))

    async def credits_balance(self) -> int:
        """Return the credit balance (``GET /credits``)."""
        balance = read_balance(await self._read("/credits"))
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
        accounts = read_x_accounts(await self._read("/x/accounts"))
        if accounts is None:
            raise ApiReadError("GET /x/accounts answered without an accounts list")
        return accounts

    async def _read(self, path: str) -> object:
        answer = await self._send("GET", self._base_url + path)
        if isinstance(answer, _Failure):
            raise ApiReadError(f"GET {path}: {answer.message}") from answer.exc
        if not answer.is_success:
            code, message = masked_error(answer, self._api_key)
            detail = f" ({code})" if code else ""
            raise ApiReadError(
                f"GET {path} failed with HTTP {answer.status}{detail}: {message}",
                status=answer.status,
                code=code,
            )
        if answer.payload is None:
            raise ApiReadError(f"GET {path} answered with something that is not JSON")
        return answer.payload

    async def _send(self, method: str, url: str, **request: Any) -> Answer | _Failure:
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
            return self._failure("not_sent", _connect_failure(exc), host, exc)
        except httpx.ConnectTimeout as exc:
            return self._failure("not_sent", "connect_timeout", host, exc)
        except httpx.PoolTimeout as exc:
            return self._failure("not_sent", "connect_timeout", host, exc, "no free connection")
        except httpx.ReadTimeout as exc:
            return self._failure("no_answer", "read_timeout", host, exc)
        except httpx.RemoteProtocolError as exc:
            kind: OutcomeKind = "no_answer" if sent() else "not_sent"
            return self._failure(kind, "connection_dropped", host, exc)
        except (httpx.InvalidURL, httpx.StreamError) as exc:
            return self._failure("not_sent", "network_error", host, exc, "unbuildable request")
        except httpx.HTTPError as exc:
            kind = "no_answer" if sent() else "not_sent"
            failure = _connect_failure(exc) if kind == "not_sent" else "network_error"
            return self._failure(kind, failure, host, exc)
        except TimeoutError as exc:
            kind = "no_answer" if sent() else "not_sent"
            failure = "read_timeout" if kind == "no_answer" else "connect_timeout"
            return self._failure(kind, failure, host, exc)
        body = response.content
        # items() joins a repeated header's values, as Headers.get did before.
        headers = dict(response.headers.items())
        return Answer(response.status_code, headers, body, json_or_none(body))

    def _failure(
        self,
        kind: OutcomeKind,
        failure: TransportFailure,
        host: str,
        exc: BaseException,
        what: str | None = None,
    ) -> _Failure:
        detail = str(exc).strip() or type(exc).__name__
        text = (
            what
            or {
                "dns_failure": f"could not resolve {host} (DNS failure)",
                "connection_refused": f"{host} refused the connection",
                "tls_error": f"the TLS handshake with {host} failed",
                "connect_timeout": f"connecting to {host} timed out",
                "read_timeout": f"no answer from {host} within {self._timeout:g} s",
                "connection_dropped": f"{host} closed the connection without answering",
                "network_error": f"the request to {host} failed",
            }[failure]
        )
        message = shorten(scrub(f"{text}: {detail}", self._api_key))
        return _Failure(kind, message, exc, failure)

    async def _settle(self, answer: Answer, on_record: OnRecord | None) -> Outcome:
        """Turn the answer to a write into an Outcome, polling a running write action."""
        code, message = masked_error(answer, self._api_key)
        reading = read_write_answer(answer, code=code, message=message, now=self._clock())
        if isinstance(reading, Outcome):
            return reading
        url = self._poll_url(answer, reading.action)
        if url is None:
            return reading.unpollable
        if reading.action is not None and on_record is not None:
            on_record(reading.action, url)
        return await self._poll(
            url,
            first_delay=poll_delay(answer, self._clock()),
            request_id=redact_optional(answer.headers.get("x-request-id")),
            status=answer.status,
            # A write being verified is polled from scratch; a running one keeps its record.
            action=None if reading.verifying else reading.action,
            expires_at=reading.action.expires_at if reading.action is not None else None,
            at_least_once=reading.verifying,
            on_record=on_record,
        )

    async def _poll(
        self,
        url: str,
        *,
        first_delay: float,
        request_id: str | None,
        status: int | None,
        action: WriteAction | None = None,
        expires_at: float | None = None,
        at_least_once: bool = False,
        on_record: OnRecord | None = None,
    ) -> Outcome:
        """GET a write action until it is terminal, its ``expiresAt`` passed, or the cap."""
        started = time.monotonic()
        began = self._clock()
        slept = 0.0
        delay = first_delay
        polls = 0
        problem = "the write action did not finish"
        while True:
            # An injected sleep may not advance the clocks: count what was asked for too.
            if expires_at is not None:
                remaining = expires_at + EXPIRY_GRACE - max(self._clock(), began + slept)
            else:
                remaining = self._max_poll_time - max(time.monotonic() - started, slept)
            if remaining <= 0 and (polls > 0 or not at_least_once):
                return self._unfinished(action, problem, status, request_id, expires_at)
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
            polled = read_write_action(answer.payload)
            delay = poll_delay(answer, self._clock())
            if answer.is_success and polled is not None:
                if on_record is not None and polled != action:
                    on_record(polled, url)
                action = polled
                if polled.expires_at is not None:
                    expires_at = polled.expires_at
                if polled.terminal:
                    retry_after = server_wait(answer.headers, answer.payload, self._clock())
                    _, message = masked_error(answer, self._api_key)
                    return terminal_outcome(polled, answer.status, request_id, retry_after, message)
                problem = "the write action did not finish"
                continue
            code, message = masked_error(answer, self._api_key)
            if answer.is_success or answer.status in {408, 409, 429} or answer.status >= 500:
                problem = shorten(f"polling answered HTTP {answer.status}: {message}")
                continue
            # A 4xx to a poll will not change by asking again; the write's fate is unknown.
            # A refused key or account says nothing of the write: keep it, ask again later.
            later = answer.status in {401, 402, 403} and action is not None
            return Outcome(
                kind="unresolved" if later else "uncertain",
                status=answer.status,
                code=code,
                message=shorten(f"polling the write action failed: {message}"),
                request_id=request_id,
                write_action=action,
            )

    def _unfinished(
        self,
        action: WriteAction | None,
        problem: str,
        status: int | None,
        request_id: str | None,
        expires_at: float | None,
    ) -> Outcome:
        """Return the outcome of a write whose polling stopped before it was terminal."""
        state = action.status if action is not None else "unknown"
        kind: OutcomeKind = "uncertain"
        if expires_at is not None:
            # Past its deadline and still not terminal: nobody can say what became of it.
            detail = f"still {state} after its expiresAt"
        elif action is None:
            detail = f"no write record after {self._max_poll_time:g} s"
        else:
            # Still running with no deadline given: keep it, the next rotation polls it again.
            kind = "unresolved"
            detail = f"still {state} after {self._max_poll_time:g} s of polling"
        return Outcome(
            kind=kind,
            status=status,
            message=shorten(f"{problem}: {detail}"),
            request_id=request_id,
            write_action=action,
        )

    def _poll_url(self, answer: Answer, action: WriteAction | None) -> str | None:
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


def _connect_failure(exc: BaseException) -> TransportFailure:
    """Tell a DNS failure, a refused connection and a TLS error apart, by the cause."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            return "dns_failure"
        if isinstance(cause, ConnectionRefusedError):
            return "connection_refused"
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            return "tls_error"
        cause = cause.__cause__ or cause.__context__
    text = str(exc).lower()
    if any(hint in text for hint in _DNS_HINTS) or "getaddrinfo" in text:
        return "dns_failure"
    if "connection refused" in text or "errno 111" in text:
        return "connection_refused"
    if "ssl" in text or "certificate" in text or "tls" in text:
        return "tls_error"
    return "network_error"


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
