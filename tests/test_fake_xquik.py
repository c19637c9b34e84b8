"""The fake Xquik server itself, driven with the stdlib HTTP client (no rotator code)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from typing import Any

import pytest
from fake_xquik import FakeXquik, Reply

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00png" * 50
JPEG = b"\xff\xd8\xff\xe0" + b"\x00jpg" * 50


def send(
    server: FakeXquik,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    key: str | None = "default",
) -> tuple[int, dict[str, str], Any]:
    """Send one request with http.client; return status, headers and parsed JSON (or bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    all_headers = dict(headers or {})
    if key is not None:
        all_headers["x-api-key"] = server.api_key if key == "default" else key
    try:
        connection.request(method, f"/api/v1{path}", body=body, headers=all_headers)
        response = connection.getresponse()
        raw = response.read()
        try:
            payload: Any = json.loads(raw)
        except ValueError:
            payload = raw
        return response.status, dict(response.getheaders()), payload
    finally:
        connection.close()


def multipart(
    fields: dict[str, str], files: dict[str, tuple[str, str, bytes]]
) -> tuple[bytes, str]:
    """Encode a multipart/form-data body by hand; return it and its content type."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    for name, (filename, mime, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {mime}\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def write(
    server: FakeXquik,
    account: str | None = "alice",
    data: bytes | None = PNG,
    *,
    idempotency_key: str | None = None,
    key: str | None = "default",
) -> tuple[int, dict[str, str], Any]:
    """Send one avatar file write."""
    fields = {} if account is None else {"account": account}
    files = {} if data is None else {"file": ("a.png", "image/png", data)}
    body, content_type = multipart(fields, files)
    headers = {"Content-Type": content_type}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return send(server, "PATCH", "/x/profile/avatar", body=body, headers=headers, key=key)


@pytest.mark.parametrize("key", [None, "xq_" + "0" * 64])
def test_missing_or_wrong_key_is_401(fake_xquik: FakeXquik, key: str | None) -> None:
    """Writes and reads without the right x-api-key get 401 unauthenticated."""
    for status, _, body in (
        write(fake_xquik, key=key),
        send(fake_xquik, "GET", "/credits", key=key),
    ):
        assert status == 401
        assert body == {"error": "unauthenticated", "message": "Missing or invalid API key"}
    assert fake_xquik.applied_writes() == []


@pytest.mark.parametrize(
    ("account", "data", "status", "code"),
    [
        (None, PNG, 400, "invalid_input"),
        ("alice", None, 400, "invalid_input"),
        ("alice", b"GIF89a" + b"\x00" * 10, 400, "invalid_input"),
        ("alice", PNG + b"\x00" * 716800, 400, "invalid_input"),
        ("carol", PNG, 404, "account_not_found"),
        ("alice", JPEG, 200, None),
        ("ALICE", PNG, 200, None),
        ("2", PNG, 200, None),
    ],
)
def test_writes_are_validated_like_the_real_api(
    fake_xquik: FakeXquik, account: str | None, data: bytes | None, status: int, code: str | None
) -> None:
    """Missing fields, wrong formats, oversize files and unknown accounts are refused."""
    got, headers, body = write(fake_xquik, account, data)
    assert got == status
    assert "X-Request-Id" in headers
    if code is None:
        assert (body["object"], body["status"], body["terminal"]) == (
            "x_write_action",
            "success",
            True,
        )
    else:
        assert body["error"] == code


def test_file_and_url_together_are_refused(fake_xquik: FakeXquik) -> None:
    """A multipart write carrying both a file and a url field is invalid_input."""
    body, content_type = multipart(
        {"account": "alice", "url": "https://ok.test/a.png"}, {"file": ("a.png", "image/png", PNG)}
    )
    status, _, answer = send(
        fake_xquik, "PATCH", "/x/profile/avatar", body=body, headers={"Content-Type": content_type}
    )
    assert (status, answer["error"]) == (400, "invalid_input")


def test_url_writes_must_be_https(fake_xquik: FakeXquik) -> None:
    """A JSON url write must name an HTTPS URL; then it sets the avatar to that URL."""
    body = json.dumps({"account": "alice", "url": "http://insecure.test/a.png"}).encode()
    status, _, answer = send(
        fake_xquik,
        "PATCH",
        "/x/profile/avatar",
        body=body,
        headers={"Content-Type": "application/json"},
    )
    assert (status, answer["error"]) == (400, "invalid_input")
    body = json.dumps({"account": "alice", "url": "https://ok.test/a.png"}).encode()
    status, _, _ = send(
        fake_xquik,
        "PATCH",
        "/x/profile/avatar",
        body=body,
        headers={"Content-Type": "application/json"},
    )
    assert status == 200
    assert fake_xquik.current_avatar("alice") == "https://ok.test/a.png"


@pytest.mark.parametrize(
    ("idempotency_key", "status"), [(None, 400), ("bad key", 400), ("ok-1", 200)]
)
def test_durable_mode_requires_a_valid_idempotency_key(
    fake_xquik: FakeXquik, idempotency_key: str | None, status: int
) -> None:
    """In durable mode a missing or non-printable Idempotency-Key is invalid_input."""
    fake_xquik.durable = True
    got, _, body = write(fake_xquik, idempotency_key=idempotency_key)
    assert got == status
    if status == 200:
        assert body["object"] == "x_write_action"
        assert (body["status"], body["terminal"]) == ("success", True)


def test_replay_and_conflict(fake_xquik: FakeXquik) -> None:
    """Same key and input replays without a new charge; same key, other input is 409."""
    fake_xquik.durable = True
    _, _, first = write(fake_xquik, idempotency_key="k1")
    _, _, again = write(fake_xquik, idempotency_key="k1")
    status, _, conflict = write(fake_xquik, data=JPEG, idempotency_key="k1")
    assert again["id"] == first["id"]
    assert (status, conflict["error"]) == (409, "idempotency_conflict")
    assert [w.replayed for w in fake_xquik.writes()] == [False, True, False]
    assert len(fake_xquik.applied_writes()) == 1
    assert fake_xquik.balance == 990


def test_credits_are_spent_and_enforced(fake_xquik: FakeXquik) -> None:
    """Each applied write costs credits_per_call; with enforcement an empty balance is 402."""
    fake_xquik.balance = 25
    fake_xquik.enforce_credits = True
    statuses = [write(fake_xquik)[0] for _ in range(3)]
    assert statuses == [200, 200, 402]
    assert fake_xquik.balance == 5
    assert send(fake_xquik, "GET", "/credits")[2]["balance"] == "5"


@pytest.mark.parametrize(
    ("health", "code"), [("needsReauth", "account_needs_reauth"), ("locked", "account_restricted")]
)
def test_unhealthy_accounts_refuse_writes(fake_xquik: FakeXquik, health: str, code: str) -> None:
    """An account whose health is not healthy answers 403 with the matching code."""
    fake_xquik.set_health("bob", health)
    status, _, body = write(fake_xquik, "bob")
    assert (status, body["error"]) == (403, code)
    accounts = send(fake_xquik, "GET", "/x/accounts")[2]["accounts"]
    assert [a["health"] for a in accounts] == ["healthy", "healthy", health]


def test_scripts_are_consumed_in_order_per_account(fake_xquik: FakeXquik) -> None:
    """Account scripts go to that account only; the shared queue serves the others, in order."""
    fake_xquik.script(Reply(status=500, json={"error": "internal_error"}))
    fake_xquik.script(Reply(status=429, body=b"Rate limit exceeded", content_type="text/plain"))
    fake_xquik.script(Reply(status=422, json={"error": "x_rejected"}), account="bob")
    assert write(fake_xquik, "bob")[0] == 422
    assert write(fake_xquik, "alice")[0] == 500
    status, headers, body = write(fake_xquik, "bob")
    assert (status, headers["Content-Type"], body) == (429, "text/plain", b"Rate limit exceeded")
    assert write(fake_xquik, "alice")[0] == 200


def test_pending_write_answers_202_then_polls_to_terminal(fake_xquik: FakeXquik) -> None:
    """A durable_pending script answers 202 + Location + Retry-After, then polls end terminal."""
    fake_xquik.script(Reply(durable_pending=True, polls_until_terminal=1, retry_after="2"))
    status, headers, body = write(fake_xquik, idempotency_key="k")
    assert (status, headers["Retry-After"], body["terminal"]) == (202, "2", False)
    location = headers["Location"].removeprefix("/api/v1")
    assert fake_xquik.current_avatar("alice") is None
    first = send(fake_xquik, "GET", location)[2]
    second = send(fake_xquik, "GET", location)[2]
    assert (first["status"], first["terminal"]) == ("pending_confirmation", False)
    assert (second["status"], second["terminal"]) == ("success", True)
    assert fake_xquik.current_avatar("alice") is not None
    assert fake_xquik.writes()[0].applied


def test_rate_limiter_counts_a_fixed_window(fake_xquik: FakeXquik) -> None:
    """With rate_limit=(2, 60) the third write in the window is 429 with Retry-After."""
    fake_xquik.rate_limit = (2, 60.0)
    results = [write(fake_xquik) for _ in range(3)]
    assert [r[0] for r in results] == [200, 200, 429]
    assert results[2][2]["error"] == "rate_limit_exceeded"
    assert 1 <= int(results[2][1]["Retry-After"]) <= 60


def test_drop_closes_the_connection_without_an_answer(fake_xquik: FakeXquik) -> None:
    """Reply(drop=True) reads the request and hangs up; it is recorded as dropped."""
    fake_xquik.script(Reply(drop=True))
    with pytest.raises(http.client.RemoteDisconnected):
        write(fake_xquik)
    (recorded,) = fake_xquik.wait_for_writes(1)
    assert recorded.dropped
    assert recorded.response is None


def test_wait_for_writes_blocks_until_they_arrive(fake_xquik: FakeXquik) -> None:
    """wait_for_writes returns once a write from another thread has been answered."""
    sender = threading.Timer(0.05, write, args=(fake_xquik,))
    sender.start()
    try:
        writes = fake_xquik.wait_for_writes(1, timeout=5)
    finally:
        sender.join()
    assert writes[0].status == 200
    assert writes[0].arrived_wall <= time.time()


def test_wait_for_writes_times_out_with_a_clear_message(fake_xquik: FakeXquik) -> None:
    """A timeout names what was awaited and what arrived, never the key."""
    send(fake_xquik, "GET", "/credits")
    with pytest.raises(AssertionError, match=r"2 avatar write\(s\)") as caught:
        fake_xquik.wait_for_writes(2, timeout=0.05)
    assert "GET /api/v1/credits -> 200" in str(caught.value)
    assert fake_xquik.api_key not in str(caught.value)


def test_reprs_hide_the_key(fake_xquik: FakeXquik) -> None:
    """The server and recorded requests never show the key; headers stay case-insensitive."""
    write(fake_xquik)
    (recorded,) = fake_xquik.requests()
    assert recorded.headers["X-Api-Key"] == fake_xquik.api_key
    assert fake_xquik.api_key not in repr(fake_xquik)
    assert fake_xquik.api_key not in repr(recorded)
    assert fake_xquik.api_key.startswith("xq_")
    assert len(fake_xquik.api_key) == 67


def test_clear_forgets_requests_but_keeps_state(fake_xquik: FakeXquik) -> None:
    """clear() empties the record; avatars and balance stay."""
    write(fake_xquik)
    fake_xquik.clear()
    assert fake_xquik.requests() == []
    assert fake_xquik.current_avatar("alice") is not None
