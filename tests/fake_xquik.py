"""A fake Xquik API speaking real HTTP/1.1 (keep-alive) on 127.0.0.1, for tests.

It validates avatar writes like the real API, answers with durable ``x_write_action``
records shaped as the official SDK's models define them (or, with ``legacy``, the old
``{"success": true}``), serves the free reads,
and plays scripted answers (any status or body, drops, delays, pending write actions)
in order before its default behaviour. Every request is recorded with its arrival
time and the answer sent. It runs in a background thread, so a test can drive it
directly and a daemon in another process can talk to it over real sockets::

    with FakeXquik(accounts=["alice"]) as server:
        server.script(Reply(status=429, json={"error": "x_rate_limited"}))
        ...  # point the client at server.base_url with server.api_key
        server.wait_for_writes(2)

Every answer the fake makes itself (not the raw answers a test scripts) is kept in
``own_answers``, so tests can check it against the SDK's models (tests/contract.py).
Nothing it prints or reprs contains the API key.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

API_PREFIX = "/api/v1"
AVATAR_PATH = f"{API_PREFIX}/x/profile/avatar"
WRITE_ACTIONS_PATH = f"{API_PREFIX}/x/write-actions/"
MAX_AVATAR_BYTES = 716800
IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}")
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
UNHEALTHY_CODES = {"needsReauth": "account_needs_reauth"}  # every other unhealthy state:
RESTRICTED_CODE = "account_restricted"  # ... answers account_restricted

_UNSET: Any = object()


class Headers(Mapping[str, str]):
    """Request or response headers with case-insensitive access; the repr hides the key."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._items = list(items)

    def __getitem__(self, name: str) -> str:
        for key, value in self._items:
            if key.lower() == name.lower():
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(key.lower() for key, _ in self._items))

    def __len__(self) -> int:
        return len(dict.fromkeys(key.lower() for key, _ in self._items))

    def get_all(self, name: str) -> list[str]:
        """Return every value of a header that may repeat."""
        return [value for key, value in self._items if key.lower() == name.lower()]

    def __repr__(self) -> str:
        shown = [(k, "***" if k.lower() == "x-api-key" else v) for k, v in self._items]
        return f"Headers({shown!r})"


@dataclasses.dataclass(frozen=True, kw_only=True)
class UploadedFile:
    """One file part of a multipart request, bytes exactly as received."""

    filename: str | None
    content_type: str | None
    data: bytes = dataclasses.field(repr=False)

    @property
    def sha256(self) -> str:
        """Return the hex SHA-256 of the bytes."""
        return hashlib.sha256(self.data).hexdigest()


@dataclasses.dataclass(frozen=True, kw_only=True)
class SentResponse:
    """The answer the fake sent to one request."""

    status: int
    headers: Headers
    body: bytes = dataclasses.field(repr=False)

    @property
    def json(self) -> Any:
        """Return the body parsed as JSON (None if it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecordedRequest:
    """One request as the fake received it, and what became of it."""

    seq: int  # arrival order, from 0
    method: str
    path: str  # without the query string, e.g. "/api/v1/x/profile/avatar"
    query: dict[str, list[str]]
    headers: Headers
    body: bytes = dataclasses.field(repr=False)
    fields: dict[str, str]  # multipart text fields
    files: dict[str, UploadedFile]  # multipart file parts by field name
    json: Any  # the parsed JSON body, None if not JSON
    arrived_monotonic: float
    arrived_wall: float
    peer_port: int = 0  # the client's port: one port for many requests = keep-alive
    response: SentResponse | None = None  # None while being handled, or when dropped
    handled: bool = False  # the answer was sent, or the connection dropped on purpose
    dropped: bool = False
    applied: bool = False  # this write changed the avatar (and cost credits)
    replayed: bool = False  # answered from the idempotency store

    @property
    def is_write(self) -> bool:
        """Tell whether this is an avatar write (PATCH /x/profile/avatar)."""
        return self.method == "PATCH" and self.path == AVATAR_PATH

    @property
    def is_poll(self) -> bool:
        """Tell whether this is a write-action poll."""
        return self.method == "GET" and self.path.startswith(WRITE_ACTIONS_PATH)

    @property
    def account(self) -> str | None:
        """Return the ``account`` the write named (multipart field or JSON)."""
        if "account" in self.fields:
            return self.fields["account"]
        value = self.json.get("account") if isinstance(self.json, dict) else None
        return value if isinstance(value, str) else None

    @property
    def file(self) -> UploadedFile | None:
        """Return the uploaded ``file`` part, if any."""
        return self.files.get("file")

    @property
    def url(self) -> str | None:
        """Return the ``url`` of a URL-mode write (JSON, or a multipart field), if any."""
        if "url" in self.fields:
            return self.fields["url"]
        value = self.json.get("url") if isinstance(self.json, dict) else None
        return value if isinstance(value, str) else None

    @property
    def idempotency_key(self) -> str | None:
        """Return the Idempotency-Key header, if any."""
        return self.headers.get("idempotency-key")

    @property
    def status(self) -> int | None:
        """Return the status answered, None if dropped or not answered yet."""
        return None if self.response is None else self.response.status


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reply:
    """One scripted answer, consumed in order before the default behaviour.

    With ``status`` None (and no drop or pending write) the default behaviour answers,
    after ``delay``. ``apply`` runs the default write first (the avatar changes, the
    idempotency key is stored) and then sends the scripted answer or drop instead.
    """

    status: int | None = None
    json: Any = _UNSET  # a JSON body (content type application/json)
    body: bytes | None = None  # a raw body, with ``content_type``
    content_type: str | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    drop: bool = False  # read the request, then close the connection without answering
    delay: float = 0.0  # seconds to wait before answering
    apply: bool = False
    # A durable write that is still running: 202 + Location + Retry-After, then polls.
    durable_pending: bool = False
    polls_until_terminal: int = 1  # non-terminal poll answers before the terminal one
    final_status: Literal["success", "failed", "expired"] = "success"
    final_error: str | dict[str, Any] | None = None  # the failed action's ``error``
    safe_to_retry: bool = False
    retryable: bool = False
    requires_new_key: bool = False  # nextAction.requiresNewIdempotencyKey
    next_action: str | None = None  # nextAction.type of the terminal record (poll: running)
    after_ms: int | None = None  # nextAction.afterMs
    expires_in: float | None = None  # expiresAt this many seconds after the write; None: absent
    retry_after: str | None = "1"  # Retry-After on the 202 and on non-terminal polls
    poll_after_ms: int | None = None  # pollAfterMs in the records, if set
    send_location: bool = True  # False: no Location header (the client must use statusUrl)
    send_status_url: bool = True  # False: no statusUrl in the record (the client uses the id)
    charged: bool = True  # a successful write is charged (billing.charged)


@dataclasses.dataclass
class _Account:
    username: str
    id: str
    x_user_id: str
    status: str = "active"
    health: str = "healthy"


@dataclasses.dataclass
class _Action:
    """A durable write action the fake tracks (mutable, guarded by the server lock)."""

    id: str
    account: str
    fingerprint: str
    status: str
    terminal: bool
    avatar: str  # what the avatar becomes on success
    request_seq: int
    polls_left: int = 0
    final_status: str = "success"
    final_error: str | dict[str, Any] | None = None
    safe_to_retry: bool = False
    retryable: bool = False
    requires_new_key: bool = False
    retry_after: str | None = "1"
    poll_after_ms: int | None = None
    send_status_url: bool = True
    charged: bool = False
    charge_on_success: bool = True
    next_action: str | None = None
    after_ms: int | None = None
    expires_at: str | None = None
    request_hash: str = ""


@dataclasses.dataclass
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    drop: bool = False
    delay: float = 0.0
    applied: bool = False
    replayed: bool = False
    own: bool = True  # made by the fake itself (not a test's raw scripted answer)


class FakeXquik:
    """A fake Xquik API on 127.0.0.1; start it with ``with`` or ``start()``/``stop()``."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        accounts: Iterable[str] = ("myxaccount", "alice", "bob"),
        durable: bool = False,
        balance: int = 1000,
        credits_per_call: int = 10,
        enforce_credits: bool = False,
        rate_limit: tuple[int, float] | None = None,
        plan: str = "active",
        legacy: bool = False,
    ) -> None:
        self.api_key = api_key or "xq_" + secrets.token_hex(32)
        self.durable = durable  # Idempotency-Key required; answers are write-action records
        self.balance = balance
        self.credits_per_call = credits_per_call
        self.enforce_credits = enforce_credits
        self.rate_limit = rate_limit  # (writes, window seconds), fixed window from first arrival
        self.plan = plan
        self.legacy = legacy  # success answers are the old {"success": true}, not records
        # (method, path, status, parsed JSON body) of every answer the fake made itself
        self.own_answers: list[tuple[str, str, int, Any]] = []
        self.errors: list[BaseException] = []  # unexpected exceptions inside the handler
        self._lock = threading.Condition()
        self._accounts = {
            name.lower(): _Account(name, str(i), str(10_000_000_000 + i))
            for i, name in enumerate(accounts, start=1)
        }
        self._requests: list[RecordedRequest] = []
        self._scripts: collections.deque[Reply] = collections.deque()
        self._account_scripts: dict[str, collections.deque[Reply]] = {}
        self._poll_scripts: collections.deque[Reply] = collections.deque()
        self._read_scripts: dict[str, collections.deque[Reply]] = {}
        self._avatars: dict[str, str] = {}
        self._idempotency: dict[str, tuple[str, _Answer | str]] = {}  # key -> (input, answer|id)
        self._actions: dict[str, _Action] = {}
        self._window: tuple[float, int] | None = None  # (start, count)
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "running" if self._httpd else "stopped"
        return f"FakeXquik({state}, base_url={self.base_url!r}, api_key=***)"

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> FakeXquik:
        """Bind an ephemeral port on 127.0.0.1 and serve in a background thread."""
        self._stopping.clear()
        self._httpd = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections and wait for handler threads to end."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        httpd.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeXquik:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """Return the bound port (0 before start)."""
        return self._httpd.server_address[1] if self._httpd else 0

    @property
    def base_url(self) -> str:
        """Return ``http://127.0.0.1:<port>/api/v1``."""
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    # -- scripting and settings ------------------------------------------------------

    def script(self, *replies: Reply, account: str | None = None) -> None:
        """Queue answers for the next writes (of ``account`` only, if given)."""
        with self._lock:
            if account is None:
                self._scripts.extend(replies)
            else:
                queue = self._account_scripts.setdefault(account.lower(), collections.deque())
                queue.extend(replies)

    def script_poll(self, *replies: Reply) -> None:
        """Queue answers for the next write-action polls (before their default answer)."""
        with self._lock:
            self._poll_scripts.extend(replies)

    def script_read(self, endpoint: str, *replies: Reply) -> None:
        """Queue answers for a free read: ``"credits"``, ``"account"`` or ``"x/accounts"``."""
        with self._lock:
            queue = self._read_scripts.setdefault(endpoint.strip("/"), collections.deque())
            queue.extend(replies)

    def clear_scripts(self) -> None:
        """Drop every scripted answer not yet used."""
        with self._lock:
            self._scripts.clear()
            self._account_scripts.clear()
            self._poll_scripts.clear()
            self._read_scripts.clear()

    def set_health(self, account: str, health: str, status: str | None = None) -> None:
        """Set an account's health (``needsReauth``, ``locked``, ...) and maybe its status."""
        with self._lock:
            record = self._find_account(account)
            if record is None:
                raise KeyError(f"no connected account {account!r}")
            record.health = health
            if status is not None:
                record.status = status

    def connect_account(self, username: str) -> None:
        """Connect another X account."""
        with self._lock:
            i = len(self._accounts) + 1
            self._accounts[username.lower()] = _Account(username, str(i), str(10_000_000_000 + i))

    def disconnect_account(self, account: str) -> None:
        """Disconnect an X account: writes to it answer 404 account_not_found."""
        with self._lock:
            record = self._find_account(account)
            if record is not None:
                del self._accounts[record.username.lower()]

    # -- inspection ------------------------------------------------------------------

    def requests(self) -> list[RecordedRequest]:
        """Return every request so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def writes(self, account: str | None = None) -> list[RecordedRequest]:
        """Return the avatar writes so far (of ``account`` only, if given)."""
        return [
            r
            for r in self.requests()
            if r.is_write and (account is None or (r.account or "").lower() == account.lower())
        ]

    def applied_writes(self, account: str | None = None) -> list[RecordedRequest]:
        """Return the writes that changed an avatar (replays and failures excluded)."""
        return [r for r in self.writes(account) if r.applied]

    def polls(self) -> list[RecordedRequest]:
        """Return the write-action polls so far."""
        return [r for r in self.requests() if r.is_poll]

    def current_avatar(self, account: str) -> str | None:
        """Return the SHA-256 of the account's last applied file (or its URL), or None."""
        with self._lock:
            record = self._find_account(account)
            return self._avatars.get(record.username if record else account)

    def clear(self) -> None:
        """Forget the recorded requests (state, scripts and avatars stay)."""
        with self._lock:
            self._requests.clear()

    def wait_for(
        self, predicate: Callable[[list[RecordedRequest]], bool], timeout: float, what: str
    ) -> list[RecordedRequest]:
        """Block until ``predicate(requests)`` holds; raise AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(list(self._requests)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [f"{r.method} {r.path} -> {r.status}" for r in self._requests]
                    raise AssertionError(
                        f"timed out after {timeout:g} s waiting for {what}; requests so far: {seen}"
                    )
                self._lock.wait(remaining)
            return list(self._requests)

    def wait_for_writes(
        self, n: int, timeout: float = 10.0, *, answered: bool = True
    ) -> list[RecordedRequest]:
        """Block until ``n`` avatar writes have arrived (and been answered, by default).

        Returns the writes; raises AssertionError with what did arrive on timeout.
        """

        def enough(requests: list[RecordedRequest]) -> bool:
            done = [r for r in requests if r.is_write and (r.handled or not answered)]
            return len(done) >= n

        self.wait_for(enough, timeout, f"{n} avatar write(s)")
        return self.writes()

    # -- request handling (handler threads) ------------------------------------------

    def _find_account(self, name: str) -> _Account | None:
        record = self._accounts.get(name.lower())
        if record is not None:
            return record
        return next((a for a in self._accounts.values() if name in (a.id, a.x_user_id)), None)

    def _record(self, request: RecordedRequest) -> int:
        with self._lock:
            request = dataclasses.replace(request, seq=len(self._requests))
            self._requests.append(request)
            self._lock.notify_all()
            return request.seq

    def _finish(self, seq: int, answer: _Answer) -> None:
        with self._lock:
            if answer.own and not answer.drop and seq < len(self._requests):
                request = self._requests[seq]
                body = json.loads(answer.body) if answer.body else None
                self.own_answers.append((request.method, request.path, answer.status, body))
            response = None
            if not answer.drop:
                response = SentResponse(
                    status=answer.status, headers=Headers(answer.headers.items()), body=answer.body
                )
            if seq < len(self._requests) and self._requests[seq].seq == seq:
                self._requests[seq] = dataclasses.replace(
                    self._requests[seq],
                    response=response,
                    handled=True,
                    dropped=answer.drop,
                    applied=self._requests[seq].applied or answer.applied,
                    replayed=answer.replayed,
                )
            self._lock.notify_all()

    def _mark_applied(self, seq: int) -> None:
        if seq < len(self._requests) and self._requests[seq].seq == seq:
            self._requests[seq] = dataclasses.replace(self._requests[seq], applied=True)

    def _answer(self, request: RecordedRequest) -> _Answer:
        """Decide the answer to one request (runs under the lock)."""
        if request.headers.get("x-api-key") != self.api_key:
            return _json(401, {"error": "unauthenticated", "message": "Missing or invalid API key"})
        if request.is_write:
            return self._answer_write(request)
        if request.method == "GET" and request.path.startswith(WRITE_ACTIONS_PATH):
            return self._answer_poll(request.path.removeprefix(WRITE_ACTIONS_PATH))
        if request.method == "GET":
            endpoint = request.path.removeprefix(API_PREFIX).strip("/")
            queue = self._read_scripts.get(endpoint)
            if queue:
                return _scripted(queue.popleft())
            read = {
                "credits": self._credits_body,
                "account": self._account_body,
                "x/accounts": self._accounts_body,
            }.get(endpoint)
            if read is not None:
                return _json(200, read())
        if request.path == AVATAR_PATH:
            return _json(405, {"error": "not_found", "message": "Use PATCH"})
        return _json(404, {"error": "not_found", "message": f"No route {request.path}"})

    def _credits_body(self) -> dict[str, Any]:
        return {
            "balance": str(self.balance),
            "lifetime_purchased": str(self.balance + 1000),
            "lifetime_used": "1000",
            "auto_topup_enabled": False,
            "auto_topup_stopped": False,
            "auto_topup_amount_dollars": 0.0,
            "auto_topup_threshold": "10000",
        }

    def _account_body(self) -> dict[str, Any]:
        first = next(iter(self._accounts.values()), None)
        return {
            "plan": self.plan,
            "monitorsAllowed": 0,
            "monitorsUsed": 0,
            "monitorBilling": {
                "activeDailyEstimate": "0",
                "activeHourlyBurn": "0",
                "creditsPerActiveMonitorDay": "720",
                "creditsPerActiveMonitorHour": "30",
                "eventsIncluded": True,
                "instantCheckIntervalSeconds": 1,
                "unlimitedSlots": True,
            },
            "subscription": {"status": "active" if self.plan == "active" else "none"},
            "creditInfo": {
                "balance": str(self.balance),
                "lifetimePurchased": str(self.balance + 1000),
                "lifetimeUsed": "1000",
                "autoTopupEnabled": False,
                "autoTopupStopped": False,
                "autoTopupAmountDollars": 0.0,
                "autoTopupThreshold": "10000",
            },
            "xUsername": first.username if first else None,
        }

    def _accounts_body(self) -> dict[str, Any]:
        connected = "2026-01-01T00:00:00.000Z"
        return {
            "accounts": [
                {
                    "id": a.id,
                    "xUsername": a.username,
                    "xUserId": a.x_user_id,
                    "status": a.status,
                    "health": a.health,
                    "createdAt": connected,
                    "updatedAt": connected,
                }
                for a in self._accounts.values()
            ]
        }

    def _answer_write(self, request: RecordedRequest) -> _Answer:
        now = request.arrived_monotonic
        if self.rate_limit is not None:
            limit, window = self.rate_limit
            start, count = self._window or (now, 0)
            if now - start >= window:
                start, count = now, 0
            if count >= limit:
                wait = max(1, int(start + window - now + 0.999))
                return _json(
                    429,
                    {
                        "error": "rate_limit_exceeded",
                        "message": "Too many requests",
                        "retryAfter": wait,
                    },
                    {"Retry-After": str(wait)},
                )
            self._window = (start, count + 1)
        account = request.account or ""
        known = self._find_account(account) if account else None
        queue = self._account_scripts.get((known.username if known else account).lower())
        if not queue:
            queue = self._account_scripts.get(account.lower())
        reply = queue.popleft() if queue else self._scripts.popleft() if self._scripts else None
        if reply is None:
            return self._default_write(request)
        if reply.durable_pending:
            return self._pending_write(request, reply)
        if reply.apply:
            applied = self._default_write(request)
            if reply.status is None and not reply.drop:
                return dataclasses.replace(applied, delay=reply.delay)
            answer = _scripted(reply)
            answer.applied = applied.applied
            return answer
        if reply.status is None and not reply.drop:
            return dataclasses.replace(self._default_write(request), delay=reply.delay)
        return _scripted(reply)

    def _validate(self, request: RecordedRequest) -> tuple[_Account | None, str, _Answer | None]:
        """Check a write like the real API; return (account, new avatar, error answer)."""
        account = request.account
        file, url = request.file, request.url
        if not account:
            return None, "", _invalid("account is required")
        if (file is None) == (url is None):
            return None, "", _invalid("Provide exactly one of file or url")
        if file is not None:
            magic_ok = file.data.startswith(JPEG_MAGIC) or file.data.startswith(PNG_MAGIC)
            if not magic_ok or len(file.data) > MAX_AVATAR_BYTES:
                return None, "", _invalid("Invalid file format or size exceeded")
            avatar = file.sha256
        else:
            if not (url or "").startswith("https://"):
                return None, "", _invalid("url must be an HTTPS URL")
            avatar = url or ""
        key = request.idempotency_key
        if key is None and self.durable:
            return None, "", _invalid("Idempotency-Key header is required")
        if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
            return None, "", _invalid("Idempotency-Key must be 1-255 printable ASCII characters")
        record = self._find_account(account)
        if record is None:
            return (
                None,
                "",
                _json(
                    404,
                    {
                        "error": "account_not_found",
                        "message": "X account not found. Connect it first at "
                        "/dashboard/account?tab=x-accounts.",
                    },
                ),
            )
        if record.health != "healthy":
            code = UNHEALTHY_CODES.get(record.health, RESTRICTED_CODE)
            return None, "", _json(403, {"error": code})
        return record, avatar, None

    def _replay(self, request: RecordedRequest, fingerprint: str) -> _Answer | None:
        key = request.idempotency_key
        stored = self._idempotency.get(key) if key is not None else None
        if stored is None:
            return None
        if stored[0] != fingerprint:
            return _json(
                409,
                {
                    "error": "idempotency_conflict",
                    "message": "Idempotency-Key was already used with a different request",
                },
            )
        if isinstance(stored[1], str):
            answer = self._action_answer(self._actions[stored[1]], first=True)
        else:
            answer = dataclasses.replace(stored[1], applied=False)
        answer.replayed = True
        return answer

    def _default_write(self, request: RecordedRequest) -> _Answer:
        record, avatar, error = self._validate(request)
        if error is not None or record is None:
            return error or _invalid("invalid request")
        fingerprint = f"{record.username}\n{avatar}"
        replay = self._replay(request, fingerprint)
        if replay is not None:
            return replay
        if self.enforce_credits and self.balance < self.credits_per_call:
            return _json(
                402,
                {
                    "error": "insufficient_credits",
                    "message": "Insufficient credits",
                    "balance": str(self.balance),
                    "required": str(self.credits_per_call),
                },
            )
        self._apply(record.username, avatar)
        key = request.idempotency_key
        if not self.legacy:
            action = self._new_action(request, record.username, fingerprint, avatar)
            action.status, action.terminal, action.charged = "success", True, True
            answer = self._action_answer(action, first=True)
            if key is not None:
                self._idempotency[key] = (fingerprint, action.id)
        else:
            answer = _json(200, {"success": True})
            answer.own = False  # the old shape the SDK no longer describes
            if key is not None:
                self._idempotency[key] = (fingerprint, answer)
        answer.applied = True
        return answer

    def _pending_write(self, request: RecordedRequest, reply: Reply) -> _Answer:
        record, avatar, error = self._validate(request)
        if error is not None or record is None:
            return error or _invalid("invalid request")
        fingerprint = f"{record.username}\n{avatar}"
        replay = self._replay(request, fingerprint)
        if replay is not None:
            return replay
        action = self._new_action(request, record.username, fingerprint, avatar)
        action.polls_left = reply.polls_until_terminal
        action.final_status = reply.final_status
        action.final_error = reply.final_error
        action.safe_to_retry = reply.safe_to_retry
        action.retryable = reply.retryable
        action.requires_new_key = reply.requires_new_key
        action.retry_after = reply.retry_after
        action.poll_after_ms = reply.poll_after_ms
        action.send_status_url = reply.send_status_url
        action.charge_on_success = reply.charged
        action.next_action = reply.next_action
        action.after_ms = reply.after_ms
        if reply.expires_in is not None:
            action.expires_at = _iso(time.time() + reply.expires_in)
        if request.idempotency_key is not None:
            self._idempotency[request.idempotency_key] = (fingerprint, action.id)
        answer = self._action_answer(action, first=True)
        if not reply.send_location:
            answer.headers.pop("Location", None)
        answer.headers.update(reply.headers)
        # Knobs outside the contract, for tests of lenient parsing.
        answer.own = reply.send_status_url and not isinstance(reply.final_error, dict)
        answer.delay = reply.delay
        return answer

    def _new_action(
        self, request: RecordedRequest, account: str, fingerprint: str, avatar: str
    ) -> _Action:
        action = _Action(
            id=f"xwa_{secrets.token_hex(8)}",
            account=account,
            fingerprint=fingerprint,
            status="accepted",
            terminal=False,
            avatar=avatar,
            request_seq=request.seq,
            request_hash=hashlib.sha256(fingerprint.encode()).hexdigest(),
        )
        self._actions[action.id] = action
        return action

    def _apply(self, account: str, avatar: str) -> None:
        self._avatars[account] = avatar
        self.balance = max(0, self.balance - self.credits_per_call)

    def _answer_poll(self, action_id: str) -> _Answer:
        delay = 0.0
        if self._poll_scripts:
            reply = self._poll_scripts.popleft()
            if reply.status is not None or reply.drop:
                return _scripted(reply)
            delay = reply.delay
        answer = self._default_poll(action_id)
        answer.delay = delay
        return answer

    def _default_poll(self, action_id: str) -> _Answer:
        action = self._actions.get(action_id)
        if action is None:
            return _json(404, {"error": "not_found", "message": "Write action not found"})
        if not action.terminal:
            if action.polls_left > 0:
                action.polls_left -= 1
                action.status = "pending_confirmation"
            else:
                action.status, action.terminal = action.final_status, True
                if action.final_status == "success":
                    self._apply(action.account, action.avatar)
                    action.charged = action.charge_on_success
                    self._mark_applied(action.request_seq)
        answer = self._action_answer(action, first=False)
        answer.own = action.send_status_url and not isinstance(action.final_error, dict)
        return answer

    def _action_answer(self, action: _Action, *, first: bool) -> _Answer:
        """Return the write record as the SDK's ``ProfileUpdateAvatarResponse`` shapes it."""
        status_url = f"{WRITE_ACTIONS_PATH}{action.id}"
        failed = action.terminal and action.status != "success"
        credits = str(self.credits_per_call if action.charged else 0)
        if action.charged:
            billing_status = "charged"
        else:
            billing_status = "not_charged" if action.terminal else "pending"
        next_action: dict[str, Any] | None = None
        if not action.terminal:
            next_action = {"type": "poll", "afterMs": action.after_ms, "url": status_url}
        elif failed and (action.next_action or action.requires_new_key or action.after_ms):
            next_action = {
                "type": action.next_action or "retry",
                "afterMs": action.after_ms,
                "requiresNewIdempotencyKey": action.requires_new_key,
            }
        error = action.final_error if failed else None
        record: dict[str, Any] = {
            "object": "x_write_action",
            "id": action.id,
            "writeActionId": action.id,
            "action": "update_avatar",
            "account": {"id": action.account, "username": action.account},
            "status": action.status,
            "terminal": action.terminal,
            "success": action.terminal and not failed,
            "retryable": action.retryable if failed else False,
            "safeToRetry": action.safe_to_retry if failed else False,
            "sendDispatched": action.status not in {"accepted"},
            "charged": action.charged,
            "chargedCredits": credits,
            "billing": {
                "charged": action.charged,
                "chargedCredits": credits,
                "plannedCredits": str(self.credits_per_call),
                "status": billing_status,
            },
            "request": {"hash": action.request_hash, "payload": {"account": action.account}},
            "error": error,
            "nextAction": next_action,
            "expiresAt": action.expires_at,
        }
        if action.send_status_url:
            record["statusUrl"] = status_url
        if action.poll_after_ms is not None and not action.terminal:
            record["pollAfterMs"] = action.poll_after_ms
        headers: dict[str, str] = {}
        if not action.terminal:
            headers["Location"] = status_url
            if action.retry_after is not None:
                headers["Retry-After"] = action.retry_after
        status = 202 if first and not action.terminal else 200
        return _json(status, record, headers)


def _iso(epoch: float) -> str:
    """Return epoch seconds as an ISO 8601 UTC time, as the API writes times."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> _Answer:
    return _Answer(
        status,
        json.dumps(body).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def _invalid(message: str) -> _Answer:
    return _json(400, {"error": "invalid_input", "message": message})


def _scripted(reply: Reply) -> _Answer:
    if reply.json is not _UNSET:
        answer = _json(reply.status or 200, reply.json, reply.headers)
    else:
        headers = dict(reply.headers)
        headers.setdefault("Content-Type", reply.content_type or "application/octet-stream")
        answer = _Answer(reply.status or 200, reply.body or b"", headers)
    answer.own = False
    if reply.content_type is not None:
        answer.headers["Content-Type"] = reply.content_type
    answer.drop = reply.drop
    answer.delay = reply.delay
    return answer


def _parse_multipart(
    body: bytes, content_type: str
) -> tuple[dict[str, str], dict[str, UploadedFile]]:
    """Split a multipart/form-data body into text fields and files, bytes kept exact."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    fields: dict[str, str] = {}
    files: dict[str, UploadedFile] = {}
    if match is None:
        return fields, files
    delimiter = b"--" + match.group(1).encode("latin-1")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        content = content.removesuffix(b"\r\n")
        headers = Headers(
            (name.strip(), value.strip())
            for line in head.decode("utf-8", "replace").split("\r\n")
            for name, _, value in [line.partition(":")]
        )
        disposition = headers.get("content-disposition", "")
        name = _disposition_param(disposition, "name")
        if name is None:
            continue
        filename = _disposition_param(disposition, "filename")
        if filename is None:
            fields[name] = content.decode("utf-8", "replace")
        else:
            files[name] = UploadedFile(
                filename=filename, content_type=headers.get("content-type"), data=content
            )
    return fields, files


def _disposition_param(disposition: str, param: str) -> str | None:
    match = re.search(rf'(?:^|;)\s*{param}="((?:[^"\\]|\\.)*)"', disposition)
    if match is None:
        return None
    # httpx escapes per the HTML5 form encoding: " as %22, \ as \\.
    return match.group(1).replace("%22", '"').replace("\\\\", "\\")


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], fake: FakeXquik):
        self.fake = fake
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.fake._lock:
            self.fake._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.fake._lock:
            self.fake._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        # Clients that hang up (timeouts, drops) are expected; anything else is recorded.
        if exc is not None and not isinstance(exc, ConnectionError | TimeoutError):
            self.fake.errors.append(exc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Print nothing: the default access log goes to stderr."""

    def do_GET(self) -> None:
        """Handle a free read or a write-action poll."""
        self._handle()

    def do_PATCH(self) -> None:
        """Handle an avatar write."""
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        fake = self.server.fake
        arrived_monotonic, arrived_wall = time.monotonic(), time.time()
        body = self._read_body()
        split = urlsplit(self.path)
        headers = Headers(self.headers.items())
        content_type = headers.get("content-type", "")
        fields: dict[str, str] = {}
        files: dict[str, UploadedFile] = {}
        parsed: Any = None
        if content_type.lower().startswith("multipart/form-data"):
            fields, files = _parse_multipart(body, content_type)
        elif body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        request = RecordedRequest(
            seq=-1,
            method=self.command,
            path=split.path,
            query=parse_qs(split.query),
            headers=headers,
            body=body,
            fields=fields,
            files=files,
            json=parsed,
            arrived_monotonic=arrived_monotonic,
            arrived_wall=arrived_wall,
            peer_port=self.client_address[1],
        )
        seq = fake._record(request)
        with fake._lock:
            answer = fake._answer(dataclasses.replace(request, seq=seq))
        if answer.delay > 0 and fake._stopping.wait(answer.delay):
            answer.drop = True  # shutting down: do not answer late
        answer.headers.setdefault("X-Request-Id", f"req_{secrets.token_hex(8)}")
        fake._finish(seq, answer)
        if answer.drop:
            self.close_connection = True
            return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)
