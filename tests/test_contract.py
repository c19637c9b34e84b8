"""The fake Xquik server and rotator's requests, checked against Xquik's official SDK.

The SDK (``x-twitter-scraper``, pinned in the test extras) is generated from Xquik's
OpenAPI spec: its response and error models say what an answer may look like, and its
``update_avatar`` says what the request is. The fake must not drift from the former
(every answer path below parses with the SDK's models), and rotator must not drift
from the latter (its request equals the SDK's, part for part, boundary aside).
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from contract import contract_problems, model_for
from fake_xquik import FakeXquik, RecordedRequest, Reply
from x_twitter_scraper import XTwitterScraper
from x_twitter_scraper.types.x.profile_update_avatar_response import ProfileUpdateAvatarResponse

from rotator.client import FilePayload, XquikClient

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x01\r\n--boundary-like\r\n" * 40  # bytes that test framing
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3
ACCOUNT = "alice"


def _ours(fake: FakeXquik, write: Callable[[XquikClient], object]) -> None:
    async def go() -> None:
        async with XquikClient(fake.base_url, fake.api_key, timeout=5.0) as client:
            await write(client)  # type: ignore[misc]

    asyncio.run(go())


def _sdk(fake: FakeXquik) -> XTwitterScraper:
    # max_retries=0: one request per call, so requests pair up one to one.
    return XTwitterScraper(api_key=fake.api_key, base_url=fake.base_url, max_retries=0)


def _comparable(request: RecordedRequest) -> dict[str, object]:
    """Return what the server sees of a write, the multipart boundary replaced."""
    content_type = request.headers.get("content-type", "")
    boundary = re.search(r"boundary=([^;]+)", content_type)
    body = request.body
    if boundary is not None:
        body = body.replace(boundary.group(1).encode(), b"BOUNDARY")
        content_type = content_type.replace(boundary.group(1), "BOUNDARY")
    return {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "idempotency-key": request.headers.get("idempotency-key"),
        "x-api-key": request.headers.get("x-api-key"),
        "accept": request.headers.get("accept"),
        "content-type": content_type,
        "fields": request.fields,
        "files": {
            name: (part.filename, part.content_type, part.data)
            for name, part in request.files.items()
        },
        "json": request.json,
        "body": body,
    }


@pytest.mark.parametrize(
    ("filename", "data", "mime"),
    [
        ("a.png", PNG, "image/png"),
        ("photo one.jpg", JPEG, "image/jpeg"),
        # Names the form encoding escapes: quotes, backslashes, control characters, and
        # characters outside ASCII (a non-UTF-8 name arrives escaped: caf\\xe9).
        ('say "hi"\\back\tslash\x1b.png', PNG, "image/png"),
        ("café\\xe9 ☃.jpg", JPEG, "image/jpeg"),
    ],
)
def test_file_write_equals_the_sdk_update_avatar(
    fake_xquik: FakeXquik, filename: str, data: bytes, mime: str
) -> None:
    """A file write is the SDK's update_avatar request, part for part, boundary aside."""
    _sdk(fake_xquik).x.profile.update_avatar(
        account=ACCOUNT, idempotency_key="rot-same-key", file=(filename, data, mime)
    )
    fake_xquik.clear()
    _ours(
        fake_xquik,
        lambda client: client.update_avatar(
            ACCOUNT, idempotency_key="rot-same-key", file=FilePayload(data, filename, mime)
        ),
    )
    (ours,) = fake_xquik.writes()
    fake_xquik.clear()
    _sdk(fake_xquik).x.profile.update_avatar(
        account=ACCOUNT, idempotency_key="rot-same-key", file=(filename, data, mime)
    )
    (theirs,) = fake_xquik.writes()
    assert _comparable(ours) == _comparable(theirs)
    assert ours.file is not None
    assert ours.file.data == data


def test_url_write_equals_the_sdk_update_avatar(fake_xquik: FakeXquik) -> None:
    """A URL write is the SDK's update_avatar JSON request, byte for byte."""
    url = "https://images.example.com/a%20b/1.png"
    _ours(
        fake_xquik, lambda client: client.update_avatar(ACCOUNT, idempotency_key="rot-u", url=url)
    )
    (ours,) = fake_xquik.writes()
    fake_xquik.clear()
    _sdk(fake_xquik).x.profile.update_avatar(account=ACCOUNT, idempotency_key="rot-u", url=url)
    (theirs,) = fake_xquik.writes()
    assert _comparable(ours) == _comparable(theirs)


def test_the_sdk_parses_the_fake_answer_to_its_own_write(fake_xquik: FakeXquik) -> None:
    """The SDK itself reads the fake's write answer into its response model."""
    answer = _sdk(fake_xquik).x.profile.update_avatar(
        account=ACCOUNT, idempotency_key="rot-parse", file=("a.png", PNG, "image/png")
    )
    assert isinstance(answer, ProfileUpdateAvatarResponse)
    assert (answer.status, answer.terminal, answer.billing.charged) == ("success", True, True)


def _exercise_every_answer(fake: FakeXquik) -> None:
    """Drive the fake down each path that makes an answer of its own."""
    reads = ["credits", "account", "x/accounts"]
    client = httpx.Client(base_url=fake.base_url, headers={"x-api-key": fake.api_key})
    files = {"file": ("a.png", PNG, "image/png")}

    def write(key: str | None, account: str = ACCOUNT, **extra: object) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key is not None else {}
        if "json" in extra:
            return client.patch("/x/profile/avatar", headers=headers, json=extra["json"])
        data = extra.get("files", files)
        return client.patch(
            "/x/profile/avatar", headers=headers, data={"account": account}, files=data
        )

    for read in reads:
        client.get(f"/{read}")
    write("k-ok")
    write("k-ok")  # a replay
    write("k-ok", account="bob")  # the same key, other input: 409 idempotency_conflict
    write("k-bad-format", files={"file": ("a.gif", b"GIF89a", "image/gif")})
    write("k-none")  # then no account at all:
    client.patch("/x/profile/avatar", headers={"Idempotency-Key": "k-x"}, data={})
    write("k-gone", account="carol")
    fake.set_health("bob", "needsReauth")
    write("k-reauth", account="bob")
    fake.set_health("bob", "locked")
    write("k-locked", account="bob")
    fake.set_health("bob", "healthy")
    fake.durable = True
    write(None)  # the key is required
    client.get("/x/write-actions/xwa_nobody")
    client.get("/x/profile/avatar")  # 405
    client.get("/nowhere")
    for final, safe, retryable, new_key, next_action in [
        ("success", False, False, False, None),
        ("failed", True, True, True, "retry"),
        ("failed", False, False, False, "verify_result"),
        ("expired", True, True, False, None),
        ("failed", True, False, False, "fix_request"),
    ]:
        fake.script(
            Reply(
                durable_pending=True,
                polls_until_terminal=1,
                final_status=final,
                final_error=None if final == "success" else "x_write_failed",
                safe_to_retry=safe,
                retryable=retryable,
                requires_new_key=new_key,
                next_action=next_action,
                after_ms=1500,
                poll_after_ms=500,
                expires_in=3600,
            )
        )
        answer = write(f"k-{final}-{safe}-{next_action}").json()
        write(f"k-{final}-{safe}-{next_action}")  # a replay while it runs
        for _ in range(2):
            client.get(answer["statusUrl"].removeprefix("/api/v1"))
    fake.enforce_credits, fake.balance = True, 0
    write("k-broke")
    fake.rate_limit = (0, 60.0)
    write("k-limited")
    client.close()


def test_every_answer_the_fake_makes_parses_with_the_sdk_models() -> None:
    """Writes, replays, 202s, polls to each terminal state, every error and the free reads
    all parse with the SDK's response and error models."""
    with FakeXquik(accounts=[ACCOUNT, "bob"]) as fake:
        _exercise_every_answer(fake)
        answers = list(fake.own_answers)
    assert contract_problems(answers) == []
    statuses = {status for _, _, status, _ in answers}
    assert {200, 202, 400, 402, 403, 404, 405, 409, 429} <= statuses
    models = {model_for(method, path, status).__name__ for method, path, status, _ in answers}
    assert models == {
        "ProfileUpdateAvatarResponse",
        "WriteActionRetrieveResponse",
        "Error",
        "CreditRetrieveBalanceResponse",
        "AccountRetrieveResponse",
        "AccountListResponse",
    }


def test_an_answer_off_the_contract_is_caught() -> None:
    """The check is not empty: a record missing what the SDK requires is reported."""
    bad = [("PATCH", "/api/v1/x/profile/avatar", 200, {"success": True})]
    assert contract_problems(bad)
    bad_code = [("GET", "/api/v1/credits", 404, {"error": "method_not_allowed"})]
    assert contract_problems(bad_code)


def test_the_sdk_is_a_test_dependency_only() -> None:
    """rotator never imports the SDK: it would cost the idle daemon memory and start time."""
    root = Path(__file__).resolve().parents[1]
    for module in (root / "rotator").glob("*.py"):
        assert "x_twitter_scraper" not in module.read_text(encoding="utf-8"), module.name
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert not any("x-twitter-scraper" in dep for dep in project["dependencies"])
    assert "x-twitter-scraper==0.19.0" in project["optional-dependencies"]["test"]
