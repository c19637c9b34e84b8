"""The Xquik client against the fake Xquik server over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from fake_xquik import FakeXquik, Reply
from hypothesis import given
from hypothesis import strategies as st

from rotator.answers import XAccount, server_wait
from rotator.client import FilePayload, XquikClient, idempotency_key
from rotator.errors import ApiError, ApiReadError
from rotator.outcomes import Outcome

T = TypeVar("T")

# Bytes that would break a careless multipart encoder: CRLFs, a fake boundary, NULs, high bytes.
PNG = b"\x89PNG\r\n\x1a\n" + b"\r\n--boundary\r\n\x00\xff" * 64 + bytes(range(256))
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg-bytes\r\n" * 32
NOW = 1_800_000_000.0  # a fixed wall clock for HTTP-date Retry-After


class RecordedSleep:
    """An injected sleep that records the delays asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def run(
    server: FakeXquik,
    action: Callable[[XquikClient], Awaitable[T]],
    *,
    api_key: str | None = None,
    timeout: float = 5.0,
    **options: Any,
) -> T:
    """Run ``action`` with a client for ``server`` (its key unless ``api_key``), then close it."""

    async def main() -> T:
        key = server.api_key if api_key is None else api_key
        async with XquikClient(server.base_url, key, timeout=timeout, **options) as client:
            return await action(client)

    return asyncio.run(main())


def upload(
    server: FakeXquik,
    account: str = "alice",
    *,
    key: str = "rot-key-1",
    data: bytes = PNG,
    **options: Any,
) -> Outcome:
    """Send one file write through a fresh client."""
    payload = FilePayload(data, "avatar.png", "image/png")
    return run(
        server,
        lambda c: c.update_avatar(account, idempotency_key=key, file=payload),
        **options,
    )


def closed_port() -> int:
    """Return a loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the write -------------------------------------------------------------------------


def test_file_upload_reaches_the_server_byte_for_byte(fake_xquik: FakeXquik) -> None:
    """A file write sends account, filename, content type, exact bytes, key and idempotency."""
    payload = FilePayload(JPEG, "my avatar.jpg", "image/jpeg")
    outcome = run(
        fake_xquik,
        lambda c: c.update_avatar("alice", idempotency_key="rot-abc", file=payload),
        user_agent="rotator/test",
    )
    (write,) = fake_xquik.writes()
    assert write.fields == {"account": "alice"}
    assert write.file is not None
    assert write.file.data == JPEG
    assert write.file.filename == "my avatar.jpg"
    assert write.file.content_type == "image/jpeg"
    assert write.headers["idempotency-key"] == "rot-abc"
    assert write.headers["X-API-KEY"] == fake_xquik.api_key
    assert write.headers["user-agent"] == "rotator/test"
    assert write.headers["content-type"].startswith("multipart/form-data")
    assert outcome.ok
    assert fake_xquik.current_avatar("alice") == hashlib.sha256(JPEG).hexdigest()


def test_tricky_png_bytes_survive_multipart(fake_xquik: FakeXquik) -> None:
    """Bytes containing CRLFs and boundary-like lines arrive unchanged."""
    upload(fake_xquik, data=PNG)
    (write,) = fake_xquik.writes()
    assert write.file is not None
    assert write.file.data == PNG


def test_url_mode_sends_json_without_a_file(fake_xquik: FakeXquik) -> None:
    """A URL write sends JSON {account, url} and no multipart file."""
    outcome = run(
        fake_xquik,
        lambda c: c.update_avatar(
            "bob", idempotency_key="rot-url", url="https://example.com/a.png"
        ),
    )
    (write,) = fake_xquik.writes()
    assert write.json == {"account": "bob", "url": "https://example.com/a.png"}
    assert write.files == {}
    assert write.headers["content-type"] == "application/json"
    assert outcome.ok
    assert fake_xquik.current_avatar("bob") == "https://example.com/a.png"


def test_exactly_one_of_file_or_url_is_required(fake_xquik: FakeXquik) -> None:
    """Passing both or neither of file and url is refused before anything is sent."""
    payload = FilePayload(PNG, "a.png", "image/png")
    with pytest.raises(ValueError, match="exactly one"):
        run(
            fake_xquik,
            lambda c: c.update_avatar(
                "alice", idempotency_key="k", file=payload, url="https://x.test/a.png"
            ),
        )
    with pytest.raises(ValueError, match="exactly one"):
        run(fake_xquik, lambda c: c.update_avatar("alice", idempotency_key="k"))
    assert fake_xquik.requests() == []


@pytest.mark.parametrize("key", ["", "has space", "é", "x" * 256])
def test_bad_idempotency_keys_are_refused(fake_xquik: FakeXquik, key: str) -> None:
    """An Idempotency-Key outside ^[!-~]{1,255}$ is refused before anything is sent."""
    with pytest.raises(ValueError, match="Idempotency-Key"):
        upload(fake_xquik, key=key)
    assert fake_xquik.requests() == []


def test_legacy_success(fake_xquik: FakeXquik) -> None:
    """200 {"success": true} (older deployments) is a success carrying the X-Request-Id."""
    fake_xquik.legacy = True
    outcome = upload(fake_xquik)
    (write,) = fake_xquik.writes()
    assert write.response is not None
    assert outcome.kind == "success"
    assert outcome.status == 200
    assert outcome.write_action is None
    assert outcome.request_id == write.response.headers["x-request-id"]


def test_keep_alive_reuses_one_connection(fake_xquik: FakeXquik) -> None:
    """Several writes through one client travel over one kept-alive connection."""

    async def three(client: XquikClient) -> list[Outcome]:
        payload = FilePayload(PNG, "a.png", "image/png")
        return [
            await client.update_avatar(name, idempotency_key=f"k-{name}", file=payload)
            for name in ("alice", "bob", "myxaccount")
        ]

    outcomes = run(fake_xquik, three)
    assert all(o.ok for o in outcomes)
    assert len({w.peer_port for w in fake_xquik.writes()}) == 1


def test_durable_success_returns_the_write_action(fake_xquik: FakeXquik) -> None:
    """A 200 terminal success x_write_action is a success with write_action filled."""
    fake_xquik.durable = True
    outcome = upload(fake_xquik)
    assert outcome.kind == "success"
    assert outcome.write_action is not None
    assert outcome.write_action.terminal
    assert outcome.write_action.status == "success"
    assert outcome.write_action.id.startswith("xwa_")
    assert fake_xquik.polls() == []


def test_accepted_write_is_polled_until_success_and_sent_once(fake_xquik: FakeXquik) -> None:
    """202 -> polls honouring Retry-After -> success; the write itself is sent exactly once."""
    fake_xquik.durable = True
    fake_xquik.script(Reply(durable_pending=True, polls_until_terminal=2, retry_after="3"))
    sleep = RecordedSleep()
    outcome = upload(fake_xquik, sleep=sleep)
    assert outcome.kind == "success"
    assert outcome.write_action is not None
    assert outcome.write_action.terminal
    assert len(fake_xquik.writes()) == 1
    assert len(fake_xquik.polls()) == 3
    assert all(p.method == "GET" for p in fake_xquik.polls())
    assert sleep.delays == [3.0, 3.0, 3.0]
    (write,) = fake_xquik.writes()
    assert write.response is not None
    assert outcome.request_id == write.response.headers["x-request-id"]
    assert fake_xquik.current_avatar("alice") == hashlib.sha256(PNG).hexdigest()


def test_poll_after_ms_is_used_without_retry_after(fake_xquik: FakeXquik) -> None:
    """Without Retry-After the wait between polls comes from pollAfterMs."""
    fake_xquik.script(
        Reply(durable_pending=True, polls_until_terminal=1, retry_after=None, poll_after_ms=2500)
    )
    sleep = RecordedSleep()
    assert upload(fake_xquik, sleep=sleep).ok
    assert sleep.delays == [2.5, 2.5]


@pytest.mark.parametrize(
    ("retry_after", "poll_after_ms", "expected"),
    [("90", None, 90.0), ("0", None, 0.2), (None, 10, 0.2), (None, None, 1.0)],
)
def test_poll_delay_is_clamped(
    fake_xquik: FakeXquik, retry_after: str | None, poll_after_ms: int | None, expected: float
) -> None:
    """The poll delay is at least 0.2 s, defaults to 1 s, and honours a long server wait."""
    fake_xquik.script(
        Reply(
            durable_pending=True,
            polls_until_terminal=0,
            retry_after=retry_after,
            poll_after_ms=poll_after_ms,
        )
    )
    sleep = RecordedSleep()
    assert upload(fake_xquik, sleep=sleep).ok
    assert sleep.delays == [expected]


@pytest.mark.parametrize(("send_location", "send_status_url"), [(False, True), (False, False)])
def test_poll_url_falls_back_to_status_url_then_id(
    fake_xquik: FakeXquik, send_location: bool, send_status_url: bool
) -> None:
    """Without Location the client polls statusUrl, and without that /x/write-actions/{id}."""
    fake_xquik.script(
        Reply(
            durable_pending=True,
            send_location=send_location,
            send_status_url=send_status_url,
        )
    )
    outcome = upload(fake_xquik, sleep=RecordedSleep())
    assert outcome.ok
    assert outcome.write_action is not None
    assert [p.path for p in fake_xquik.polls()] == [
        f"/api/v1/x/write-actions/{outcome.write_action.id}"
    ] * 2


def test_location_on_another_origin_is_never_polled(fake_xquik: FakeXquik) -> None:
    """A Location on another host gets no request (it would carry the key); statusUrl is used."""
    with FakeXquik() as elsewhere:
        fake_xquik.script(
            Reply(
                durable_pending=True,
                headers={"Location": f"{elsewhere.base_url}/x/write-actions/xwa_1"},
            )
        )
        outcome = upload(fake_xquik, sleep=RecordedSleep())
        assert elsewhere.requests() == []
    assert outcome.ok
    assert len(fake_xquik.polls()) == 2


@pytest.mark.parametrize(
    ("final_error", "code", "message"),
    [
        ({"code": "x_rejected", "message": "X said no"}, "x_rejected", "X said no"),
        ("x_transient_error", "x_transient_error", "x_transient_error"),
    ],
)
def test_accepted_write_ending_failed_is_an_error_with_next_action(
    fake_xquik: FakeXquik, final_error: str | dict[str, str], code: str, message: str
) -> None:
    """A terminal failed action is an error with its code, safeToRetry and nextAction."""
    fake_xquik.script(
        Reply(
            durable_pending=True,
            polls_until_terminal=1,
            final_status="failed",
            final_error=final_error,
            safe_to_retry=True,
            retryable=True,
            requires_new_key=True,
        )
    )
    outcome = upload(fake_xquik, sleep=RecordedSleep())
    assert outcome.kind == "error"
    assert outcome.code == code
    assert outcome.message == f"the write action ended failed: {message}"
    action = outcome.write_action
    assert action is not None
    assert (action.status, action.terminal) == ("failed", True)
    assert action.safe_to_retry
    assert action.retryable
    assert action.requires_new_key
    assert action.error_code == code
    assert fake_xquik.applied_writes() == []


def test_expired_action_without_error_is_an_error_without_code(fake_xquik: FakeXquik) -> None:
    """A terminal expired action with no error code is an error whose code is None."""
    fake_xquik.script(Reply(durable_pending=True, final_status="expired"))
    outcome = upload(fake_xquik, sleep=RecordedSleep())
    assert outcome.kind == "error"
    assert outcome.code is None
    assert outcome.write_action is not None
    assert outcome.write_action.status == "expired"


def test_polling_past_max_poll_time_is_unresolved(fake_xquik: FakeXquik) -> None:
    """A write without expiresAt still running after max_poll_time is unresolved, not resent."""
    fake_xquik.script(Reply(durable_pending=True, polls_until_terminal=100, retry_after="2"))
    sleep = RecordedSleep()
    outcome = upload(fake_xquik, sleep=sleep, max_poll_time=5.0)
    assert outcome.kind == "unresolved"
    assert outcome.write_action is not None
    assert not outcome.write_action.terminal
    assert sleep.delays == [2.0, 2.0, 1.0]
    assert len(fake_xquik.writes()) == 1
    assert len(fake_xquik.polls()) == 3
    assert "5 s" in outcome.message


def test_uncertain_write_can_be_resumed_by_polling(fake_xquik: FakeXquik) -> None:
    """poll_write_action resumes an unresolved write from its statusUrl to its terminal state."""
    fake_xquik.script(Reply(durable_pending=True, polls_until_terminal=0))

    async def write_then_resume(client: XquikClient) -> tuple[Outcome, Outcome]:
        payload = FilePayload(PNG, "a.png", "image/png")
        first = await client.update_avatar("alice", idempotency_key="k", file=payload)
        assert first.write_action is not None
        assert first.write_action.status_url is not None
        return first, await client.poll_write_action(first.write_action.status_url)

    first, resumed = run(fake_xquik, write_then_resume, max_poll_time=0.0, sleep=RecordedSleep())
    assert first.kind == "unresolved"
    assert resumed.kind == "success"
    assert len(fake_xquik.writes()) == 1


def test_transient_poll_failures_are_retried(fake_xquik: FakeXquik) -> None:
    """A 503 and a dropped poll are retried; the write is still sent once and succeeds."""
    fake_xquik.script(Reply(durable_pending=True, polls_until_terminal=0))
    fake_xquik.script_poll(
        Reply(status=503, json={"error": "internal_error"}, headers={"Retry-After": "4"}),
        Reply(drop=True),
    )
    sleep = RecordedSleep()
    outcome = upload(fake_xquik, sleep=sleep)
    assert outcome.ok
    assert len(fake_xquik.writes()) == 1
    assert len(fake_xquik.polls()) == 3
    assert sleep.delays == [1.0, 4.0, 1.0]


def test_poll_answered_with_4xx_is_uncertain(fake_xquik: FakeXquik) -> None:
    """A 404 to a poll ends polling as uncertain, carrying the poll's code."""
    fake_xquik.script(Reply(durable_pending=True))
    fake_xquik.script_poll(Reply(status=404, json={"error": "not_found", "message": "gone"}))
    outcome = upload(fake_xquik, sleep=RecordedSleep())
    assert outcome.kind == "uncertain"
    assert outcome.code == "not_found"
    assert outcome.status == 404


def test_poll_refused_for_the_key_keeps_the_write_unresolved(fake_xquik: FakeXquik) -> None:
    """A 401 to a poll says nothing of the write: unresolved (asked again later), not lost."""
    fake_xquik.script(Reply(durable_pending=True))
    body = {"error": "unauthenticated", "message": "Missing or invalid API key"}
    fake_xquik.script_poll(Reply(status=401, json=body))
    outcome = upload(fake_xquik, sleep=RecordedSleep())
    assert (outcome.kind, outcome.code) == ("unresolved", "unauthenticated")
    assert outcome.write_action is not None
    assert len(fake_xquik.writes()) == 1


def test_unconfirmed_with_nothing_to_poll_is_uncertain(fake_xquik: FakeXquik) -> None:
    """202 x_write_unconfirmed without a Location or action is uncertain, not resent."""
    fake_xquik.script(
        Reply(status=202, json={"error": "x_write_unconfirmed", "message": "May have happened"})
    )
    outcome = upload(fake_xquik, sleep=RecordedSleep())
    assert outcome.kind == "uncertain"
    assert outcome.code == "x_write_unconfirmed"
    assert outcome.status == 202
    assert fake_xquik.polls() == []


def test_ambiguous_write_is_uncertain(fake_xquik: FakeXquik) -> None:
    """500 x_write_ambiguous is uncertain with its code."""
    fake_xquik.script(Reply(status=500, json={"error": "x_write_ambiguous", "message": "?"}))
    outcome = upload(fake_xquik)
    assert (outcome.kind, outcome.code, outcome.status) == ("uncertain", "x_write_ambiguous", 500)


def test_ok_answer_that_is_not_json_is_uncertain(fake_xquik: FakeXquik) -> None:
    """A 200 HTML page (a portal, a proxy) is not taken as a success."""
    fake_xquik.script(Reply(status=200, body=b"<html>hello</html>", content_type="text/html"))
    assert upload(fake_xquik).kind == "uncertain"


def test_success_false_is_an_error(fake_xquik: FakeXquik) -> None:
    """200 {"success": false} is an error, not a success."""
    fake_xquik.script(Reply(status=200, json={"success": False}))
    outcome = upload(fake_xquik)
    assert (outcome.kind, outcome.status) == ("error", 200)


def test_redirects_are_not_followed(fake_xquik: FakeXquik) -> None:
    """A 302 is an error answer; nothing is sent to its Location."""
    fake_xquik.script(Reply(status=302, body=b"", headers={"Location": "/api/v1/elsewhere"}))
    outcome = upload(fake_xquik)
    assert (outcome.kind, outcome.status) == ("error", 302)
    assert len(fake_xquik.requests()) == 1


# -- error answers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status", "code", "message"),
    [
        (
            Reply(status=422, json={"error": "x_rejected", "message": "X rejected the write"}),
            422,
            "x_rejected",
            "X rejected the write",
        ),
        (
            Reply(
                status=422,
                json={
                    "error": {
                        "type": "x_error",
                        "code": "x_rejected",
                        "message": "Nested message",
                    }
                },
            ),
            422,
            "x_rejected",
            "Nested message",
        ),
        (
            Reply(status=403, json={"error": "account_restricted"}),
            403,
            "account_restricted",
            "account_restricted",
        ),
        (
            Reply(status=429, body=b"Rate limit exceeded\nmore", content_type="text/plain"),
            429,
            None,
            "Rate limit exceeded",
        ),
        (
            Reply(
                status=502,
                body=b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
                content_type="text/html",
            ),
            502,
            None,
            "HTML error page (502 Bad Gateway)",
        ),
        (
            Reply(status=502, body=b"<html><body><h1>oops</h1></body></html>"),
            502,
            None,
            "HTML error page",
        ),
        (Reply(status=503, body=b""), 503, None, "HTTP 503 with an empty body"),
        (Reply(status=500, json=["odd"]), 500, None, '["odd"]'),
    ],
)
def test_error_answers_are_parsed_leniently(
    fake_xquik: FakeXquik, reply: Reply, status: int, code: str | None, message: str
) -> None:
    """Flat, nested, text, HTML, empty and odd JSON error bodies give code, message, status."""
    fake_xquik.script(reply)
    outcome = upload(fake_xquik)
    assert outcome.kind == "error"
    assert (outcome.status, outcome.code, outcome.message) == (status, code, message)
    assert outcome.request_id is not None


def test_long_error_messages_are_truncated(fake_xquik: FakeXquik) -> None:
    """A huge message is cut to about 200 characters."""
    fake_xquik.script(Reply(status=500, json={"error": "internal_error", "message": "x" * 5000}))
    outcome = upload(fake_xquik)
    assert 100 < len(outcome.message) <= 200


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"Retry-After": "2"}, {"error": "x_rate_limited"}, 2.0),
        ({"Retry-After": "1.5"}, {"error": "x_rate_limited"}, 1.5),
        (
            {"Retry-After": email.utils.formatdate(NOW + 120, usegmt=True)},
            {"error": "rate_limit_exceeded"},
            120.0,
        ),
        ({}, {"error": "rate_limit_exceeded", "retryAfter": 60}, 60.0),
        ({}, {"error": "rate_limit_exceeded", "retryAfterMs": 1500}, 1.5),
        ({}, {"error": {"code": "rate_limit_exceeded", "retryAfter": "7"}}, 7.0),
        ({"Retry-After": "soon"}, {"error": "x_rate_limited", "retryAfter": 9}, 9.0),
        ({"Retry-After": "9999999"}, {"error": "x_daily_limit"}, 86400.0),
        ({"Retry-After": "-5"}, {"error": "x_rate_limited"}, 0.0),
        ({"Retry-After": "nan"}, {"error": "x_rate_limited"}, None),
        ({}, {"error": "x_rate_limited"}, None),
    ],
)
def test_retry_after_is_read_from_header_or_body(
    fake_xquik: FakeXquik, headers: dict[str, str], body: object, expected: float | None
) -> None:
    """Retry-After seconds, fractions, HTTP-dates, retryAfter and retryAfterMs are honoured."""
    fake_xquik.script(Reply(status=429, json=body, headers=headers))
    outcome = upload(fake_xquik, clock=lambda: NOW)
    assert outcome.status == 429
    assert outcome.retry_after == expected


@given(
    header=st.one_of(st.none(), st.text(max_size=40)),
    body=st.dictionaries(
        st.sampled_from(["retryAfter", "retryAfterMs", "error"]),
        st.one_of(st.none(), st.text(max_size=10), st.floats(), st.integers(), st.booleans()),
    ),
)
def test_retry_after_is_none_or_within_bounds(header: str | None, body: dict[str, Any]) -> None:
    """Whatever the server sends, retry_after is None or a number in [0, 86400]."""
    seconds = server_wait({"retry-after": header} if header else {}, body, NOW)
    assert seconds is None or 0.0 <= seconds <= 86400.0


# -- transport failures ----------------------------------------------------------------


def test_dropped_connection_is_no_answer(fake_xquik: FakeXquik) -> None:
    """A request read by the server and then cut without an answer is no_answer."""
    fake_xquik.script(Reply(drop=True))
    outcome = upload(fake_xquik)
    assert outcome.kind == "no_answer"
    assert outcome.status is None
    assert "closed the connection" in outcome.message
    (write,) = fake_xquik.writes()
    assert write.dropped


def test_late_answer_is_no_answer(fake_xquik: FakeXquik) -> None:
    """An answer later than the timeout is no_answer (the write may have happened)."""
    fake_xquik.script(Reply(delay=2.0))
    outcome = upload(fake_xquik, timeout=0.3)
    assert outcome.kind == "no_answer"
    assert "0.3 s" in outcome.message
    assert len(fake_xquik.wait_for_writes(1, answered=False)) == 1


def test_connection_refused_is_not_sent() -> None:
    """A port nobody listens on gives not_sent: the request never left."""

    async def write() -> Outcome:
        base_url = f"http://127.0.0.1:{closed_port()}/api/v1"
        async with XquikClient(base_url, "xq_" + "0" * 64, timeout=2.0) as client:
            payload = FilePayload(PNG, "a.png", "image/png")
            return await client.update_avatar("alice", idempotency_key="k", file=payload)

    outcome = asyncio.run(write())
    assert outcome.kind == "not_sent"
    assert outcome.failure == "connection_refused"
    assert "refused the connection" in outcome.message


# -- idempotency -----------------------------------------------------------------------


@pytest.mark.parametrize("durable", [False, True])
def test_same_key_same_input_replays_the_original(fake_xquik: FakeXquik, durable: bool) -> None:
    """Replaying a key with the same input answers the original; the avatar is set once."""
    fake_xquik.durable = durable
    first = upload(fake_xquik, key="rot-same")
    again = upload(fake_xquik, key="rot-same")
    assert first.ok
    assert again.ok
    if durable:
        assert first.write_action is not None
        assert again.write_action is not None
        assert again.write_action.id == first.write_action.id
    assert len(fake_xquik.applied_writes()) == 1
    assert fake_xquik.writes()[1].replayed
    assert fake_xquik.balance == 1000 - 10


def test_dropped_but_applied_write_replays_after_no_answer(fake_xquik: FakeXquik) -> None:
    """After a write that happened but got no answer, the same key replays it, not redoes it."""
    fake_xquik.durable = True
    fake_xquik.script(Reply(drop=True, apply=True))
    lost = upload(fake_xquik, key="rot-lost")
    replay = upload(fake_xquik, key="rot-lost")
    assert lost.kind == "no_answer"
    assert replay.ok
    assert len(fake_xquik.applied_writes()) == 1


def test_same_key_other_input_is_a_conflict(fake_xquik: FakeXquik) -> None:
    """The same key with different bytes is 409 idempotency_conflict."""
    upload(fake_xquik, key="rot-k", data=PNG)
    outcome = upload(fake_xquik, key="rot-k", data=JPEG)
    assert (outcome.kind, outcome.status, outcome.code) == ("error", 409, "idempotency_conflict")
    assert fake_xquik.current_avatar("alice") == hashlib.sha256(PNG).hexdigest()


_text = st.text(max_size=30)


@given(entry=_text, sha=_text, rotation=_text, generation=st.integers(0, 10**6))
def test_idempotency_key_is_printable_ascii_and_deterministic(
    entry: str, sha: str, rotation: str, generation: int
) -> None:
    """Every key matches ^[!-~]{1,255}$ and the same inputs give the same key."""
    key = idempotency_key(entry, sha, rotation, generation)
    assert re.fullmatch(r"[!-~]{1,255}", key)
    assert key == idempotency_key(entry, sha, rotation, generation)


@given(
    first=st.tuples(_text, _text, _text, st.integers(0, 1000)),
    second=st.tuples(_text, _text, _text, st.integers(0, 1000)),
)
def test_idempotency_key_differs_when_any_input_differs(
    first: tuple[str, str, str, int], second: tuple[str, str, str, int]
) -> None:
    """Different (entry, image, rotation, generation) never share a key."""
    if first != second:
        assert idempotency_key(*first) != idempotency_key(*second)


def test_idempotency_key_changes_with_each_input() -> None:
    """Changing any single input, including splitting text across fields, changes the key."""
    base = ("entry", "abc", "rot-1", 0)
    variants = [
        ("entry", "abd", "rot-1", 0),
        ("entr", "yabc", "rot-1", 0),
        ("entry", "abc", "rot-2", 0),
        ("entry", "abc", "rot-1", 1),
    ]
    keys = {idempotency_key(*base)} | {idempotency_key(*v) for v in variants}
    assert len(keys) == 5


# -- free reads ------------------------------------------------------------------------


def test_credits_balance_is_an_int(fake_xquik: FakeXquik) -> None:
    """GET /credits's string balance comes back as an int."""
    fake_xquik.balance = 450
    assert run(fake_xquik, lambda c: c.credits_balance()) == 450
    (read,) = fake_xquik.requests()
    assert (read.method, read.path) == ("GET", "/api/v1/credits")


@pytest.mark.parametrize(("balance", "expected"), [("1200.00", 1200), (75, 75), (" 9 ", 9)])
def test_credits_balance_is_lenient(fake_xquik: FakeXquik, balance: object, expected: int) -> None:
    """Balances as decimal strings, numbers or padded strings are all read."""
    fake_xquik.script_read("credits", Reply(status=200, json={"balance": balance}))
    assert run(fake_xquik, lambda c: c.credits_balance()) == expected


def test_unreadable_balance_raises_api_read_error(fake_xquik: FakeXquik) -> None:
    """A /credits answer without a usable balance raises ApiReadError."""
    fake_xquik.script_read("credits", Reply(status=200, json={"balance": "lots"}))
    with pytest.raises(ApiReadError, match="balance"):
        run(fake_xquik, lambda c: c.credits_balance())


def test_account_info_is_the_parsed_json(fake_xquik: FakeXquik) -> None:
    """GET /account comes back as the parsed JSON object."""
    fake_xquik.balance = 50000
    info = run(fake_xquik, lambda c: c.account_info())
    assert info["plan"] == "active"
    assert info["creditInfo"]["balance"] == "50000"


def test_x_accounts_lists_connected_accounts_with_health(fake_xquik: FakeXquik) -> None:
    """GET /x/accounts becomes XAccount records with status and health."""
    fake_xquik.set_health("bob", "needsReauth")
    accounts = run(fake_xquik, lambda c: c.x_accounts())
    assert [a.username for a in accounts] == ["myxaccount", "alice", "bob"]
    assert accounts[2] == XAccount(
        id="3", username="bob", x_user_id="10000000003", status="active", health="needsReauth"
    )


def test_wrong_key_on_a_read_raises_api_read_error(fake_xquik: FakeXquik) -> None:
    """A 401 to a free read raises ApiReadError with status and code, without the key."""
    wrong = "xq_" + "f" * 64
    with pytest.raises(ApiReadError) as caught:
        run(fake_xquik, lambda c: c.credits_balance(), api_key=wrong)
    assert caught.value.status == 401
    assert caught.value.code == "unauthenticated"
    assert isinstance(caught.value, ApiError)
    assert "401" in str(caught.value)
    assert wrong not in str(caught.value)


def test_server_error_page_on_a_read_raises_api_read_error(fake_xquik: FakeXquik) -> None:
    """An HTML 502 on a free read raises ApiReadError naming the status."""
    fake_xquik.script_read(
        "x/accounts", Reply(status=502, body=b"<html>bad gateway</html>", content_type="text/html")
    )
    with pytest.raises(ApiReadError, match="HTTP 502") as caught:
        run(fake_xquik, lambda c: c.x_accounts())
    assert caught.value.code is None


def test_unreachable_api_on_a_read_raises_api_read_error() -> None:
    """A free read to a closed port raises ApiReadError chained from the transport error."""

    async def read() -> int:
        base_url = f"http://127.0.0.1:{closed_port()}/api/v1"
        async with XquikClient(base_url, "xq_" + "1" * 64, timeout=2.0) as client:
            return await client.credits_balance()

    with pytest.raises(ApiReadError, match="refused the connection") as caught:
        asyncio.run(read())
    assert caught.value.status is None
    assert caught.value.__cause__ is not None


# -- construction and secrets ----------------------------------------------------------


@pytest.mark.parametrize("base_url", ["ftp://127.0.0.1/api", "not a url", "http://"])
def test_bad_base_url_raises_api_error(base_url: str) -> None:
    """A base URL that is not http(s) with a host is refused with ApiError."""
    with pytest.raises(ApiError, match="base URL"):
        XquikClient(base_url, "xq_key", timeout=1.0)


def test_key_with_unsendable_characters_is_refused_without_echo() -> None:
    """A key that cannot go in a header raises ApiError that does not repeat it."""
    with pytest.raises(ApiError) as caught:
        XquikClient("http://127.0.0.1:1/api/v1", "xq_secret value", timeout=1.0)
    assert "secret" not in str(caught.value)


def test_key_echoed_at_the_cut_is_masked_whole(fake_xquik: FakeXquik) -> None:
    """A key echoed where the message is cut leaves not even a prefix behind."""
    key = fake_xquik.api_key
    message = "x" * 190 + key
    fake_xquik.script(Reply(status=500, json={"error": "internal_error", "message": message}))
    outcome = upload(fake_xquik)
    assert key[:8] not in outcome.message
    assert outcome.message.endswith("***")


def test_httpx_loggers_are_quietened(fake_xquik: FakeXquik) -> None:
    """Building a client sets the httpx and httpcore loggers to WARNING."""
    logging.getLogger("httpx").setLevel(logging.DEBUG)
    logging.getLogger("httpcore").setLevel(logging.DEBUG)
    run(fake_xquik, lambda c: c.credits_balance())
    assert logging.getLogger("httpx").level == logging.WARNING
    assert logging.getLogger("httpcore").level == logging.WARNING


def test_the_key_never_shows(fake_xquik: FakeXquik, caplog: pytest.LogCaptureFixture) -> None:
    """The API key is in no repr, outcome, message or log, whatever happens."""
    caplog.set_level(logging.DEBUG)
    key = fake_xquik.api_key
    fake_xquik.script(
        Reply(status=500, json={"error": "internal_error", "message": f"echo {key}"}),
        Reply(drop=True),
        Reply(status=502, body=b"<html>bad</html>", content_type="text/html"),
        Reply(durable_pending=True, polls_until_terminal=100),
    )
    texts: list[str] = [repr(fake_xquik)]

    async def everything(client: XquikClient) -> None:
        texts.append(repr(client))
        texts.append(str(client))
        payload = FilePayload(PNG, "a.png", "image/png")
        for _ in range(5):
            texts.append(
                repr(await client.update_avatar("alice", idempotency_key="k", file=payload))
            )
        texts.append(repr(await client.poll_write_action("/api/v1/x/write-actions/nope")))

    run(fake_xquik, everything, sleep=RecordedSleep(), max_poll_time=3.0)
    fake_xquik.script_read("account", Reply(status=401, json={"error": "unauthenticated"}))
    for api_key in (key, "xq_" + "e" * 64):
        with pytest.raises(ApiReadError) as caught:
            run(fake_xquik, lambda c: c.account_info(), api_key=api_key)
        texts.append(str(caught.value))
        texts.append(repr(caught.value))
    texts.extend(repr(r) for r in fake_xquik.requests())
    texts.append(caplog.text)
    assert any("echo ***" in text for text in texts)
    assert len(texts) > 10
    for text in texts:
        assert key not in text


# -- connection failures say what they are ---------------------------------------------


def _write_to(base_url: str) -> Outcome:
    async def write() -> Outcome:
        async with XquikClient(base_url, "xq_" + "0" * 64, timeout=3.0) as client:
            payload = FilePayload(PNG, "a.png", "image/png")
            return await client.update_avatar("alice", idempotency_key="k", file=payload)

    return asyncio.run(write())


def test_a_dns_failure_is_named_as_such_never_as_a_key_problem() -> None:
    """A host that does not resolve is a DNS failure: not sent, its own message."""
    outcome = _write_to("http://no-such-host.invalid/api/v1")
    assert (outcome.kind, outcome.failure) == ("not_sent", "dns_failure")
    assert "DNS failure" in outcome.message
    assert "key" not in outcome.message.lower()


def test_a_tls_failure_is_named_as_such(fake_xquik: FakeXquik) -> None:
    """TLS spoken to a plain-HTTP port fails the handshake: a TLS error, not sent."""
    outcome = _write_to(fake_xquik.base_url.replace("http://", "https://"))
    assert (outcome.kind, outcome.failure) == ("not_sent", "tls_error")
    assert "TLS handshake" in outcome.message
    assert fake_xquik.writes() == []


def test_a_late_answer_is_a_read_timeout(fake_xquik: FakeXquik) -> None:
    """No answer in time after sending: no_answer, named a timeout."""
    fake_xquik.script(Reply(delay=1.0))

    async def write() -> Outcome:
        async with XquikClient(fake_xquik.base_url, fake_xquik.api_key, timeout=0.3) as client:
            payload = FilePayload(PNG, "a.png", "image/png")
            return await client.update_avatar("alice", idempotency_key="k", file=payload)

    outcome = asyncio.run(write())
    assert (outcome.kind, outcome.failure) == ("no_answer", "read_timeout")
    assert "within 0.3 s" in outcome.message
