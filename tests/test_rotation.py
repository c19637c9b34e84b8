"""One rotation in-process, one test per decision of the write policy.

Each test drives ``Rotator.rotate`` with a real ``StateStore`` (SQLite in a temp dir),
a real catalog of real image files, the real HTTP client against the fake Xquik
server (whose answers parse with the official SDK's models), an injected clock and
sleep (nothing waits for real), and structlog's ``capture_logs``. What is checked is
what reached the server (keys, bytes, counts), what the state keeps, and what was
logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from fake_xquik import FakeXquik, RecordedRequest, Reply
from PIL import Image
from structlog.testing import capture_logs
from x_twitter_scraper.types.shared.error import Error
from x_twitter_scraper.types.x.profile_update_avatar_response import ProfileUpdateAvatarResponse

from rotator import cli
from rotator.catalog import Catalog, MemoryValidationCache
from rotator.client import XquikClient
from rotator.config import AccountEntry, ApiSection
from rotator.images import FitSettings
from rotator.logs import emit
from rotator.pacer import WritePacer
from rotator.pauses import PauseBoard
from rotator.policy import PolicySettings
from rotator.rotation import RotationResult, RotationSetup, Rotator
from rotator.state import StateStore

ACCOUNT = "alice"
START = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
POLICY = PolicySettings(retry_initial=0.5, retry_max=8.0, attempts=4)


def _png(seed: int) -> bytes:
    image = Image.new("RGB", (32, 32), ((seed * 53) % 256, (seed * 97) % 256, seed % 256))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class Sleeps:
    """An injected sleep: records what was asked, waits for nothing."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


@dataclasses.dataclass
class Rig:
    """The parts of one rotation, on disk and on a socket."""

    tmp: Path
    fake: FakeXquik
    folder: Path
    images: dict[str, bytes]
    sleeps: Sleeps = dataclasses.field(default_factory=Sleeps)
    max_poll_time: float = 30.0
    credits_per_call: int = 10
    now: dt.datetime = START  # the injected clock's one instant
    policy: PolicySettings = POLICY
    logs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def entry(self) -> AccountEntry:
        """Return the entry: the account, its folder, sequential order."""
        return AccountEntry(account=ACCOUNT, folder=self.folder, schedule="every 1h")

    def rotate(self, **kwargs: Any) -> RotationResult:
        """Run one rotation as a fresh daemon would (a new store, client and rotator)."""

        async def go() -> RotationResult:
            with StateStore.open(self.tmp / "state") as state:
                pauses = PauseBoard(state, self.policy, clock=lambda: self.now)
                pauses.restore()
                catalog = Catalog(self.folder, FitSettings(), MemoryValidationCache(), emit)
                catalog.apply_scan(await asyncio.to_thread(catalog.scan))
                async with XquikClient(
                    self.fake.base_url,
                    self.fake.api_key,
                    timeout=5.0,
                    sleep=self.sleeps,
                    max_poll_time=self.max_poll_time,
                ) as client:
                    setup = RotationSetup(
                        client=client,
                        policy=self.policy,
                        api=ApiSection(),
                        credits_per_call=self.credits_per_call,
                    )
                    rotator = Rotator(
                        state=state,
                        pacer=WritePacer(100, 60.0, 4),
                        pauses=pauses,
                        setup=setup,
                        fitted_dir=self.tmp / "fitted",
                        rng=random.Random(5),
                        clock=lambda: self.now,
                        sleep=self.sleeps,
                    )
                    try:
                        return await rotator.rotate(
                            self.entry, catalog, wait_for_pauses=False, **kwargs
                        )
                    finally:
                        await pauses.close()

        with capture_logs() as captured:
            result = asyncio.run(go())
        self.logs.extend(captured)
        return result

    def state(self) -> StateStore:
        """Open the state read-only, as ``rotator status`` does."""
        return StateStore.open(self.tmp / "state", readonly=True)

    def events(self, name: str) -> list[dict[str, Any]]:
        """Return the captured log events called ``name``."""
        return [event for event in self.logs if event["event"] == name]

    def sent_image(self, write: RecordedRequest) -> str:
        """Return the name of the image a write carried."""
        assert write.file is not None
        return next(name for name, data in self.images.items() if data == write.file.data)


@pytest.fixture
def rig(tmp_path: Path, fake_xquik: FakeXquik) -> Rig:
    """Yield a rig: three PNGs (1.png, 2.png, 3.png) for alice and a durable fake."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    images = {}
    for n in (1, 2, 3):
        images[f"{n}.png"] = _png(n)
        (folder / f"{n}.png").write_bytes(images[f"{n}.png"])
    fake_xquik.durable = True
    return Rig(tmp=tmp_path, fake=fake_xquik, folder=folder, images=images)


def _error(status: int, code: str | None, **headers: str) -> Reply:
    body = {"error": code, "message": f"{code} happened"} if code else {"message": "oops"}
    return Reply(status=status, json=body, headers=headers)


def _keys(rig: Rig) -> list[str | None]:
    return [write.idempotency_key for write in rig.fake.writes()]


# -- success and credits ---------------------------------------------------------------


def test_success_moves_on_and_counts_the_credits_the_record_charged(rig: Rig) -> None:
    """A success moves the position, clears the ledger, and history names action and credits."""
    result = rig.rotate()
    assert (result.kind, result.image) == ("uploaded", "1.png")
    with rig.state() as state:
        assert state.pending_write(rig.entry.entry_id) is None
        (row,) = state.history()
        assert state.entry(rig.entry.entry_id).last_image == "1.png"
    (write,) = rig.fake.writes()
    assert write.response is not None
    assert row.action_id == write.response.json["id"]
    assert row.credits == 10
    assert rig.events("avatar.uploaded")[0]["credits"] == 10


def test_a_rotation_stopped_before_its_write_is_interrupted_not_skipped(rig: Rig) -> None:
    """A stop before the write ends it as "interrupted", as logged; nothing is sent or moved."""
    result = rig.rotate(stop_reason=lambda: "shutting down")
    assert (result.kind, result.reason, result.ok) == ("interrupted", "shutting down", False)
    assert [e["reason"] for e in rig.events("rotation.interrupted")] == ["shutting down"]
    assert rig.events("rotation.skipped") == []
    assert rig.fake.writes() == []
    with rig.state() as state:
        assert state.entry(rig.entry.entry_id).last_image is None
        assert state.history() == []


def test_an_uncharged_success_counts_no_credits(rig: Rig) -> None:
    """billing.charged false: the write cost nothing, whatever credits_per_call says."""
    rig.fake.script(Reply(durable_pending=True, polls_until_terminal=0, charged=False))
    assert rig.rotate().kind == "uploaded"
    with rig.state() as state:
        assert state.history()[0].credits == 0
    assert rig.events("avatar.uploaded")[0]["credits"] == 0


# -- same key: 5xx, drops, 409 in progress ------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(_error(500, "internal_error"), id="internal_error"),
        pytest.param(_error(503, "write_tracking_unavailable"), id="write_tracking_unavailable"),
        pytest.param(
            Reply(
                status=502,
                body=b"<html><title>Bad Gateway</title></html>",
                content_type="text/html",
            ),
            id="proxy-html-502",
        ),
        pytest.param(_error(408, None), id="408"),
        pytest.param(_error(409, "some_future_conflict"), id="unknown-409"),
        pytest.param(Reply(drop=True, apply=True), id="dropped-after-applying"),
    ],
)
def test_a_5xx_or_a_drop_replays_the_same_key(rig: Rig, reply: Reply) -> None:
    """No terminal record: the same image goes again under the SAME key, and lands once."""
    rig.fake.script(reply)
    result = rig.rotate()
    assert result.kind == "uploaded"
    keys = _keys(rig)
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert len(rig.fake.applied_writes()) == 1
    assert [rig.sent_image(write) for write in rig.fake.writes()] == ["1.png", "1.png"]


def test_x_should_retry_false_is_obeyed_and_the_write_is_uncertain(rig: Rig) -> None:
    """A 500 with x-should-retry: false is not resent at all; it may have happened."""
    rig.fake.script(_error(500, "internal_error", **{"x-should-retry": "false"}))
    assert rig.rotate().kind == "uncertain"
    assert len(rig.fake.writes()) == 1
    # The next rotation does not send that image again: it moves on, under a new key.
    assert rig.rotate().image == "2.png"
    writes = rig.fake.writes()
    assert [rig.sent_image(write) for write in writes] == ["1.png", "2.png"]
    assert writes[0].idempotency_key != writes[1].idempotency_key


def test_idempotency_in_progress_waits_then_replays_the_same_key(rig: Rig) -> None:
    """409 idempotency_in_progress: wait what was asked (the largest wait), same key again."""
    rig.fake.script(
        Reply(
            status=409,
            json={"error": "idempotency_in_progress", "message": "running", "retryAfterMs": 2500},
            headers={"Retry-After": "1", "retry-after-ms": "1200"},
        )
    )
    assert rig.rotate().kind == "uploaded"
    keys = _keys(rig)
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert rig.sleeps.delays
    assert rig.sleeps.delays[0] >= 2.5


def test_out_of_tries_the_write_is_kept_and_replayed_first_next_time(rig: Rig) -> None:
    """Four 5xx in a row: the rotation ends, the ledger keeps the key, the next replays it."""
    rig.fake.script(*[_error(503, "x_transient_error") for _ in range(4)])
    result = rig.rotate()
    assert result.kind == "skipped"
    with rig.state() as state:
        pending = state.pending_write(rig.entry.entry_id)
    assert pending is not None
    assert rig.rotate().kind == "uploaded"
    keys = _keys(rig)
    assert len(keys) == 5
    assert set(keys) == {pending.idempotency_key}


# -- polling until terminal or expiresAt; resuming after a restart -------------------------


def test_a_running_write_is_polled_past_the_cap_until_its_expires_at(rig: Rig) -> None:
    """With expiresAt an hour away, polling goes on past max_poll_time to the terminal record."""
    rig.max_poll_time = 2.0
    rig.fake.script(
        Reply(durable_pending=True, polls_until_terminal=6, retry_after="1", expires_in=3600)
    )
    assert rig.rotate().kind == "uploaded"
    assert len(rig.fake.writes()) == 1
    assert len(rig.fake.polls()) == 7


def test_a_write_still_running_at_the_cap_is_resumed_by_the_next_rotation(rig: Rig) -> None:
    """No expiresAt: polling stops at the cap, the ledger keeps the action id, and the next
    rotation (a restarted daemon) polls that write before it sends anything."""
    rig.max_poll_time = 2.0
    rig.fake.script(Reply(durable_pending=True, polls_until_terminal=4, retry_after="1"))
    first = rig.rotate()
    assert first.kind == "skipped"
    with rig.state() as state:
        pending = state.pending_write(rig.entry.entry_id)
        assert state.entry(rig.entry.entry_id).last_image is None
    assert pending is not None
    (write,) = rig.fake.writes()
    assert write.response is not None
    assert pending.action_id == write.response.json["id"]
    assert pending.status_url is not None
    assert pending.last_status == "pending_confirmation"
    second = rig.rotate()
    assert (second.kind, second.image) == ("uploaded", "1.png")
    assert len(rig.fake.writes()) == 1  # nothing new was sent
    assert rig.events("write.resumed")
    with rig.state() as state:
        assert state.pending_write(rig.entry.entry_id) is None
        assert state.entry(rig.entry.entry_id).last_image == "1.png"


def test_a_write_unresolved_past_its_expires_at_is_uncertain(rig: Rig) -> None:
    """Still running after expiresAt: uncertain, with the action id kept in history."""
    rig.fake.script(
        Reply(durable_pending=True, polls_until_terminal=100, retry_after="1", expires_in=3)
    )
    assert rig.rotate().kind == "uncertain"
    with rig.state() as state:
        row = state.history()[0]
    assert row.outcome == "uncertain"
    assert row.action_id is not None
    assert row.action_id.startswith("xwa_")


# -- terminal failed/expired records -----------------------------------------------------


@pytest.mark.parametrize(
    ("code", "pause"),
    [
        ("x_write_failed", None),
        ("x_rate_limited", ("account", "x_rate_limited")),
        ("insufficient_credits", ("key", "credits")),
        ("account_needs_reauth", ("account", "account")),
    ],
)
def test_failed_not_safe_to_retry_is_uncertain_and_never_sent_again_blindly(
    rig: Rig, code: str, pause: tuple[str, str] | None
) -> None:
    """failed + safeToRetry false: uncertain, position moves on, the image is not resent
    under a new key by the next rotation; status and history show it with the action id."""
    rig.fake.script(
        Reply(
            durable_pending=True,
            polls_until_terminal=0,
            final_status="failed",
            final_error=code,
            safe_to_retry=False,
        )
    )
    assert rig.rotate().kind == "uncertain"
    with rig.state() as state:
        entry = state.entry(rig.entry.entry_id)
        row = state.history()[0]
        assert state.pending_write(rig.entry.entry_id) is None
    assert entry.uncertain
    assert entry.last_image == "1.png"
    (write,) = rig.fake.writes()
    assert write.response is not None
    assert row.action_id == write.response.json["id"]
    assert rig.events("avatar.uncertain")[0]["action_id"] == row.action_id
    with rig.state() as state:
        pauses = [(p.scope, p.kind) for p in state.pauses()]
    assert pauses == ([] if pause is None else [pause])  # a pausing code also pauses
    if pause is not None:
        return  # the pause holds the next write; the pause test covers what follows
    second = rig.rotate()
    assert second.image == "2.png"
    assert [rig.sent_image(w) for w in rig.fake.writes()] == ["1.png", "2.png"]


def test_an_uncertain_only_image_is_not_sent_again(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """With one image only, the next rotation sends nothing rather than resend it blindly."""
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "only.png").write_bytes(_png(9))
    rig = Rig(tmp=tmp_path, fake=fake_xquik, folder=folder, images={"only.png": _png(9)})
    fake_xquik.script(Reply(durable_pending=True, polls_until_terminal=0, final_status="expired"))
    assert rig.rotate().kind == "uncertain"
    assert rig.rotate().kind == "skipped"
    assert len(fake_xquik.writes()) == 1


def test_expired_safe_to_retry_is_retried_now_under_a_new_key(rig: Rig) -> None:
    """expired + safeToRetry + nextAction retry: the same image again, a new key, after afterMs."""
    rig.fake.script(
        Reply(
            durable_pending=True,
            polls_until_terminal=0,
            final_status="expired",
            safe_to_retry=True,
            retryable=True,
            requires_new_key=True,
            next_action="retry",
            after_ms=30000,
        )
    )
    assert rig.rotate().kind == "uploaded"
    writes = rig.fake.writes()
    assert [rig.sent_image(w) for w in writes] == ["1.png", "1.png"]
    assert writes[0].idempotency_key != writes[1].idempotency_key
    assert max(rig.sleeps.delays) >= 30.0  # nextAction.afterMs is honoured


@pytest.mark.parametrize(("retryable", "next_action"), [(False, None), (True, "fix_request")])
def test_a_write_that_cannot_succeed_is_not_resent(
    rig: Rig, retryable: bool, next_action: str | None
) -> None:
    """retryable false or nextAction fix_request: given up, and the same input is not sent
    again: the next rotation moves on to the next image."""
    rig.fake.script(
        Reply(
            durable_pending=True,
            polls_until_terminal=0,
            final_status="failed",
            final_error="x_write_failed",
            safe_to_retry=True,
            retryable=retryable,
            next_action=next_action,
        )
    )
    assert rig.rotate().kind == "skipped"
    assert len(rig.fake.writes()) == 1
    assert rig.rotate().image == "2.png"
    assert [rig.sent_image(w) for w in rig.fake.writes()] == ["1.png", "2.png"]


# -- images ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["x_image_invalid", "media_too_large", "unsupported_media_type"])
def test_an_image_code_refuses_the_image_until_its_file_changes(rig: Rig, code: str) -> None:
    """An image code refuses the image: the next one goes now, and later rotations skip it."""
    rig.fake.script(_error(422, code))
    assert rig.rotate().image == "2.png"
    assert rig.rotate().image == "3.png"
    assert rig.rotate().image == "2.png"  # 1.png stays refused
    with rig.state() as state:
        assert state.refused_images() == [("1.png", code)]


def test_an_unsafe_failed_record_about_the_image_is_uncertain_and_refused(rig: Rig) -> None:
    """x_media_rejected on a record not safe to retry: uncertain, and the image refused."""
    rig.fake.script(
        Reply(
            durable_pending=True,
            polls_until_terminal=0,
            final_status="failed",
            final_error="x_media_rejected",
        )
    )
    assert rig.rotate().kind == "uncertain"
    with rig.state() as state:
        assert state.refused_images() == [("1.png", "x_media_rejected")]


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(_error(400, "invalid_input"), id="invalid_input"),
        pytest.param(_error(422, "x_content_too_long"), id="x_content_too_long"),
        pytest.param(_error(422, "x_rejected"), id="x_rejected"),
    ],
)
def test_a_refused_image_gives_way_to_the_next_in_the_same_rotation(rig: Rig, reply: Reply) -> None:
    """The next image goes in the same rotation; nothing is skipped."""
    rig.fake.script(reply)
    result = rig.rotate()
    assert (result.kind, result.image) == ("uploaded", "2.png")
    writes = rig.fake.writes()
    assert [rig.sent_image(w) for w in writes] == ["1.png", "2.png"]
    assert writes[1].status == 200
    assert [e["image"] for e in rig.events("avatar.uploaded")] == ["2.png"]
    assert rig.events("rotation.skipped") == []


def test_refused_images_count_as_tries(rig: Rig) -> None:
    """Each refused image is one try: after retry.attempts refusals the rotation is skipped."""
    rig.policy = dataclasses.replace(POLICY, attempts=3)
    rig.fake.script(*[_error(422, "x_rejected")] * 3)
    assert rig.rotate().kind == "skipped"
    assert [rig.sent_image(w) for w in rig.fake.writes()] == ["1.png", "2.png", "3.png"]
    assert "out of tries" in rig.events("rotation.skipped")[0]["reason"]


@pytest.mark.parametrize("status", [422, 409])
def test_duplicate_action_counts_as_done(rig: Rig, status: int) -> None:
    """x_duplicate_action moves the position on: the next rotation sends the next image."""
    rig.fake.script(_error(status, "x_duplicate_action"))
    assert (rig.rotate().kind, rig.rotate().kind) == ("uploaded", "uploaded")
    assert [rig.sent_image(w) for w in rig.fake.writes()] == ["1.png", "2.png"]
    assert rig.events("avatar.uploaded")[0]["image"] == "1.png"
    assert rig.events("avatar.failed") == []


# -- keys and pauses ---------------------------------------------------------------------


@pytest.mark.parametrize("code", ["idempotency_conflict", "idempotency_key_conflict"])
def test_idempotency_conflict_takes_a_new_key_for_the_same_image(rig: Rig, code: str) -> None:
    """409 idempotency_(key_)conflict: nothing was done; the same image at once, a new key."""
    rig.fake.script(_error(409, code))
    assert rig.rotate().kind == "uploaded"
    conflict, retried = rig.fake.writes()
    assert (conflict.status, retried.status) == (409, 200)
    assert retried.idempotency_key != conflict.idempotency_key
    assert [rig.sent_image(w) for w in (conflict, retried)] == ["1.png", "1.png"]
    assert rig.sleeps.delays == []  # at once


def test_a_rate_limit_pause_keeps_the_write_and_replays_its_key_after(rig: Rig) -> None:
    """A 429 pauses the key; the write stays in the ledger and goes again under its key."""
    rig.fake.script(_error(429, "rate_limit_exceeded", **{"Retry-After": "30"}))
    assert rig.rotate().kind == "paused"
    with rig.state() as state:
        pending = state.pending_write(rig.entry.entry_id)
        (pause,) = state.pauses()
    assert pending is not None
    with StateStore.open(rig.tmp / "state") as state:
        state.clear_pause(scope=pause.scope, account=pause.account)
    assert rig.rotate().kind == "uploaded"
    keys = _keys(rig)
    assert keys == [pending.idempotency_key, pending.idempotency_key]


def test_a_topup_in_progress_pauses_every_write(rig: Rig) -> None:
    """topup_in_progress (402) is billing: the key pauses for pause.credits."""
    rig.fake.script(_error(402, "topup_in_progress"))
    assert rig.rotate().kind == "paused"
    with rig.state() as state:
        (pause,) = state.pauses()
    assert (pause.scope, pause.kind) == ("key", "credits")


# -- what the user sees --------------------------------------------------------------------


def _status(rig: Rig, capsys: pytest.CaptureFixture[str], *, as_json: bool) -> str:
    """Run ``rotator status`` in-process on the rig's state and return what it printed."""
    config = rig.tmp / "rotator.toml"
    config.write_text(
        f'[api]\nbase_url = "{rig.fake.base_url}"\n[state]\ndir = "{rig.tmp / "state"}"\n'
        f'[[accounts]]\naccount = "{ACCOUNT}"\nfolder = "{rig.folder}"\nschedule = "every 1h"\n',
        encoding="utf-8",
    )
    capsys.readouterr()
    assert cli.main(["status", "--config", str(config), *(["--json"] if as_json else [])]) == 0
    return capsys.readouterr().out


def test_status_shows_an_uncertain_write_with_its_action_id_and_the_credits(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    """status names the uncertain write's action id, and counts credits by billing."""
    rig.now = dt.datetime.now(dt.UTC)  # status counts the last 30 days of its own clock
    assert rig.rotate().kind == "uploaded"  # charged 10
    rig.fake.script(Reply(durable_pending=True, polls_until_terminal=0, final_status="expired"))
    assert rig.rotate().kind == "uncertain"
    action_id = rig.fake.writes()[1].response.json["id"]  # type: ignore[union-attr]
    report = json.loads(_status(rig, capsys, as_json=True))
    (entry,) = report["entries"]
    assert (entry["uncertain"], entry["last_action_id"]) == (True, action_id)
    assert report["credits_spent_30d"] == 10  # the expired write was not charged
    text = _status(rig, capsys, as_json=False)
    assert f"uncertain (the server did not confirm it; write action {action_id})" in text
    assert "credits spent (30 days): 10" in text


def test_status_shows_a_write_waiting_to_be_resumed(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    """A write left running shows as pending with its action id until it is resumed."""
    rig.max_poll_time = 1.0
    rig.fake.script(Reply(durable_pending=True, polls_until_terminal=5, retry_after="1"))
    assert rig.rotate().kind == "skipped"
    action_id = rig.fake.writes()[0].response.json["id"]  # type: ignore[union-attr]
    assert f"write pending: {action_id}" in _status(rig, capsys, as_json=False)


def test_a_resumed_write_whose_status_url_is_elsewhere_is_polled_by_its_id(rig: Rig) -> None:
    """A kept statusUrl off the API (the base URL changed) is never polled: the id is."""
    rig.max_poll_time = 1.0
    rig.fake.script(Reply(durable_pending=True, polls_until_terminal=3, retry_after="1"))
    assert rig.rotate().kind == "skipped"
    with StateStore.open(rig.tmp / "state") as state:
        pending = state.pending_write(rig.entry.entry_id)
        assert pending is not None
        moved = dataclasses.replace(pending, status_url="https://elsewhere.example/x/1")
        state.save_write(moved, now=START)
    polls_before = len(rig.fake.polls())
    assert rig.rotate().kind == "uploaded"
    later = rig.fake.polls()[polls_before:]
    assert later
    assert {poll.path for poll in later} == {f"/api/v1/x/write-actions/{pending.action_id}"}
    assert len(rig.fake.writes()) == 1


def test_an_unanswered_write_whose_image_changed_is_recorded_uncertain_first(rig: Rig) -> None:
    """No answer, then the file changed: it cannot be replayed as it was, so the history
    marks it uncertain before the rotation sends anything new."""
    rig.policy = dataclasses.replace(POLICY, attempts=1)
    rig.fake.script(Reply(drop=True, apply=True))
    assert rig.rotate().kind == "skipped"  # out of tries, kept for a same-key replay
    rig.images["1.png"] = _png(77)
    (rig.folder / "1.png").write_bytes(rig.images["1.png"])
    assert rig.rotate().kind == "uploaded"
    with rig.state() as state:
        rows = state.history()
    assert [row.outcome for row in rows[:2]] == ["success", "uncertain"]
    assert "changed" in rows[1].message
    assert [e["error"] for e in rig.events("avatar.uncertain")] == ["image changed"]


# -- answers built by the SDK's own models, every field written out -----------------------


def _sdk_record(**fields: Any) -> dict[str, Any]:
    """Return a write record made by the SDK's model and dumped with every field, nulls too."""
    record: dict[str, Any] = {
        "object": "x_write_action",
        "id": "xwa_sdk1",
        "writeActionId": "xwa_sdk1",
        "action": "update_avatar",
        "status": "success",
        "terminal": True,
        "success": True,
        "retryable": False,
        "safeToRetry": False,
        "sendDispatched": True,
        "statusUrl": "/api/v1/x/write-actions/xwa_sdk1",
        "charged": True,
        "chargedCredits": "10",
        "billing": {
            "charged": True,
            "chargedCredits": "10",
            "plannedCredits": "10",
            "status": "charged",
        },
        "request": {"hash": "h"},
        **fields,
    }
    model = ProfileUpdateAvatarResponse.model_validate(record)
    return model.model_dump(mode="json", by_alias=True)


def test_an_sdk_dumped_failed_record_not_safe_to_retry_is_uncertain(rig: Rig) -> None:
    """A 200 failed record, as the SDK dumps it (all nulls present): uncertain, sent once."""
    answer = _sdk_record(
        status="failed",
        success=False,
        error="x_write_failed",
        charged=False,
        chargedCredits="0",
        billing={
            "charged": False,
            "chargedCredits": "0",
            "plannedCredits": "10",
            "status": "not_charged",
        },
        nextAction={"type": "verify_result"},
    )
    rig.fake.script(Reply(status=200, json=answer))
    assert rig.rotate().kind == "uncertain"
    assert len(rig.fake.writes()) == 1
    with rig.state() as state:
        row = state.history()[0]
    assert (row.action_id, row.credits) == ("xwa_sdk1", 0)


def test_an_sdk_dumped_error_with_retry_after_ms_replays_after_that_wait(rig: Rig) -> None:
    """An Error dumped by the SDK (every field, nulls too): same key, after retryAfterMs."""
    body = Error.model_validate(
        {"error": "x_transient_error", "message": "later", "retryAfterMs": 4500}
    ).model_dump(mode="json", by_alias=True)
    rig.fake.script(Reply(status=503, json=body))
    assert rig.rotate().kind == "uploaded"
    keys = _keys(rig)
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert rig.sleeps.delays[0] >= 4.5


def test_an_sdk_dumped_success_without_charge_costs_nothing(rig: Rig) -> None:
    """A success record whose billing says not charged counts 0 credits."""
    answer = _sdk_record(
        charged=False,
        chargedCredits="0",
        billing={
            "charged": False,
            "chargedCredits": "0",
            "plannedCredits": "10",
            "status": "refunded",
        },
    )
    rig.fake.script(Reply(status=200, json=answer))
    assert rig.rotate().kind == "uploaded"
    assert rig.events("avatar.uploaded")[0]["credits"] == 0


# -- pacing and memory -----------------------------------------------------------------


class CountingPacer(WritePacer):
    """The real pacer, counting the places it granted."""

    granted = 0

    async def acquire(self) -> Any:
        """Wait for a place as the pacer does, then count it."""
        place = await super().acquire()
        self.granted += 1
        return place


class CountingCatalog(Catalog):
    """The real catalog, noting for each payload it read how many places were granted then."""

    def __init__(self, pacer: CountingPacer, *args: Any) -> None:
        super().__init__(*args)
        self.pacer = pacer
        self.grants_at_reads: list[int] = []

    def load_payload(self, image: Any, fitted_dir: Path) -> Any:
        """Read the payload as the catalog does, noting the grants so far."""
        self.grants_at_reads.append(self.pacer.granted)
        return super().load_payload(image, fitted_dir)


def test_rotations_waiting_for_the_pacer_hold_no_image_bytes(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """Prove image bytes are read only after the pacer grants the write, not while waiting."""
    accounts = ["myxaccount", "alice", "bob"]

    async def go() -> tuple[list[int], int, int]:
        pacer = CountingPacer(2, 3600.0, 4)  # two writes, then a wait of an hour
        with StateStore.open(tmp_path / "state") as state:
            pauses = PauseBoard(state, POLICY)
            pauses.restore()
            async with XquikClient(fake_xquik.base_url, fake_xquik.api_key, timeout=5.0) as client:
                rotator = Rotator(
                    state=state,
                    pacer=pacer,
                    pauses=pauses,
                    setup=RotationSetup(client=client, policy=POLICY, api=ApiSection()),
                    fitted_dir=tmp_path / "fitted",
                )
                catalogs, tasks = [], []
                for number, account in enumerate(accounts):
                    folder = tmp_path / account
                    folder.mkdir()
                    (folder / "1.png").write_bytes(_png(number))
                    catalog = CountingCatalog(
                        pacer, folder, FitSettings(), MemoryValidationCache(), emit
                    )
                    catalog.apply_scan(await asyncio.to_thread(catalog.scan))
                    catalogs.append(catalog)
                    entry = AccountEntry(account=account, folder=folder, schedule="every 1h")
                    tasks.append(asyncio.create_task(rotator.rotate(entry, catalog)))
                while len(fake_xquik.writes()) < 2 or pacer.wait_time() == 0:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # the third rotation waits at the pacer
                waiting = sum(not task.done() for task in tasks)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await pauses.close()
        reads = [grants for catalog in catalogs for grants in catalog.grants_at_reads]
        return reads, pacer.granted, waiting

    with capture_logs():
        reads, granted, waiting = asyncio.run(go())
    assert (granted, waiting) == (2, 1)
    # Two reads for two grants, none for the one waiting; the n-th read came after the
    # n-th grant (a read may see the next grant too: it runs in a worker thread).
    assert len(reads) == 2
    assert all(grants >= number for number, grants in enumerate(sorted(reads), start=1))
    assert len(fake_xquik.writes()) == 2
