"""The fault policy, one row of issue 3's table per test, against the real daemon.

Each test runs ``rotator run`` as a subprocess against the fake Xquik server and
checks what reached the server (arrival times, image bytes, Idempotency-Keys, free
reads) and what the daemon logged. Times are only compared between the server's
own arrival records, with generous margins.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import itertools
import json
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonFactory
from fake_xquik import FakeXquik, RecordedRequest, Reply
from harness import cli_env, make_image, run_cli, write_config

Pictures = dict[str, dict[str, bytes]]  # account -> image name -> bytes


# -- helpers ---------------------------------------------------------------------------


def _setup(
    tmp_path: Path,
    server: FakeXquik,
    schedules: Mapping[str, str],
    *,
    images: int = 3,
    sections: Mapping[str, Mapping[str, object]] | None = None,
    entry_extra: Mapping[str, object] | None = None,
) -> tuple[Path, Pictures]:
    """Give each account a folder of distinct PNGs (1.png, 2.png, ...) and write the config."""
    pictures: Pictures = {}
    entries = []
    for index, (account, schedule) in enumerate(schedules.items()):
        pictures[account] = {
            f"{n}.png": make_image(tmp_path / account / f"{n}.png", seed=40 * index + n)
            for n in range(1, images + 1)
        }
        entries.append(
            {"account": account, "folder": account, "schedule": schedule, **(entry_extra or {})}
        )
    config = write_config(
        tmp_path / "rotator.toml", base_url=server.base_url, entries=entries, sections=sections
    )
    return config, pictures


def _error(
    status: int,
    code: str | None,
    *,
    headers: Mapping[str, str] | None = None,
    **fields: object,
) -> Reply:
    """Return a scripted JSON error answer ``{"error": code, "message": ..., **fields}``."""
    body: dict[str, object] = {}
    if code is not None:
        body = {"error": code, "message": f"{code} (scripted)"}
    body.update(fields)
    return Reply(status=status, json=body, headers=dict(headers or {}))


def _image(write: RecordedRequest, pictures: Mapping[str, bytes]) -> str:
    """Return the name of the image a write carried (by its bytes), or what else it sent."""
    if write.file is None:
        return f"url:{write.url}"
    for name, data in pictures.items():
        if data == write.file.data:
            return name
    return "<unknown bytes>"


def _gap(earlier: RecordedRequest, later: RecordedRequest) -> float:
    """Return the seconds between two arrivals at the server."""
    return later.arrived_monotonic - earlier.arrived_monotonic


def _reads(requests: list[RecordedRequest], endpoint: str) -> list[RecordedRequest]:
    """Return the free GET reads of ``endpoint`` (``credits``, ``x/accounts``) among requests."""
    return [
        r
        for r in requests
        if r.method == "GET" and r.path.endswith("/" + endpoint) and not r.is_poll
    ]


def _successes(server: FakeXquik, account: str) -> list[RecordedRequest]:
    """Return the account's writes that were answered 200."""
    return [w for w in server.writes(account) if w.status == 200]


def _wait_successes(server: FakeXquik, counts: Mapping[str, int], timeout: float = 20) -> None:
    """Wait until each account has had at least its count of successful writes."""

    def enough(requests: list[RecordedRequest]) -> bool:
        return all(
            sum(1 for r in requests if r.is_write and r.status == 200 and r.account == name) >= n
            for name, n in counts.items()
        )

    server.wait_for(enough, timeout, f"successful writes {dict(counts)}")


def _pauses(events: list[dict[str, Any]], account: str | None = None) -> list[dict[str, Any]]:
    """Return the pause events of one account (None: of the whole key)."""
    return [e for e in events if e.get("account") == account]


# -- the whole key: Xquik's own rate limit ---------------------------------------------

# Each answer, with how long it says to wait; they come one after the other.
RATE_LIMIT_ANSWERS: list[tuple[str, Reply, float]] = [
    ("header seconds", _error(429, "rate_limit_exceeded", headers={"Retry-After": "1"}), 1.0),
    ("header fraction", _error(429, "rate_limit_exceeded", headers={"Retry-After": "1.5"}), 1.5),
    ("body retryAfter", _error(429, "rate_limit_exceeded", retryAfter=1), 1.0),
    ("body retryAfterMs", _error(429, "rate_limit_exceeded", retryAfterMs=1200), 1.2),
    (
        "nested body",
        Reply(
            status=429,
            json={
                "error": {
                    "type": "rate_limit",
                    "code": "rate_limit_exceeded",
                    "message": "slow down",
                    "retryAfter": 1,
                }
            },
        ),
        1.0,
    ),
    (
        "text/plain, no code",
        Reply(
            status=429,
            body=b"Rate limit exceeded",
            content_type="text/plain",
            headers={"Retry-After": "1"},
        ),
        1.0,
    ),
    ("unknown 429 code", _error(429, "slow_down_please", headers={"Retry-After": "1"}), 1.0),
]


def test_rate_limit_stops_every_account_until_retry_after(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """Each key-level 429 holds every account's writes for its Retry-After; then all go on."""
    accounts = {"myxaccount": "every 1h", "alice": "every 1h", "bob": "every 1h"}
    config, _ = _setup(
        tmp_path, fake_xquik, accounts, images=2, sections={"rate_limit": {"concurrency": 1}}
    )
    fake_xquik.script(*[reply for _, reply, _ in RATE_LIMIT_ANSWERS])
    daemon = start_daemon(config)
    _wait_successes(fake_xquik, dict.fromkeys(accounts, 1), timeout=30)
    assert daemon.stop() == 0

    writes = fake_xquik.writes()
    limited = writes[: len(RATE_LIMIT_ANSWERS)]
    assert [w.status for w in writes] == [429] * len(RATE_LIMIT_ANSWERS) + [200] * 3
    for (what, _, seconds), answered in zip(RATE_LIMIT_ANSWERS, limited, strict=True):
        for later in [w for w in writes if w.seq > answered.seq]:
            assert _gap(answered, later) >= 0.9 * seconds, (what, later.account)
    started = daemon.named("pause.started")
    assert len(started) == len(RATE_LIMIT_ANSWERS), "one pause.started per pause, not per rotation"
    assert {(e["scope"], e["kind"]) for e in started} == {("key", "rate_limit")}
    assert [e["seconds"] for e in started] == [pytest.approx(s) for _, _, s in RATE_LIMIT_ANSWERS]
    assert [e["reason"] for e in started][-1] == "slow_down_please"
    assert len(daemon.named("pause.ended")) == len(RATE_LIMIT_ANSWERS)


def test_rate_limit_retry_after_as_http_date(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """A Retry-After HTTP-date holds every write until that moment (by the wall clock)."""
    config, _ = _setup(
        tmp_path,
        fake_xquik,
        {"alice": "every 1s", "bob": "every 1s"},
        sections={"rate_limit": {"concurrency": 1}},
    )
    daemon = start_daemon(config)
    fake_xquik.wait_for_writes(1, timeout=20)
    resume_at = int(time.time()) + 3  # a whole second: HTTP-dates have no fraction
    fake_xquik.script(
        _error(
            429,
            "rate_limit_exceeded",
            headers={"Retry-After": email.utils.formatdate(resume_at, usegmt=True)},
        )
    )
    fake_xquik.wait_for(
        lambda reqs: any(r.is_write and r.status == 429 for r in reqs), 20, "the 429"
    )
    limited = next(w for w in fake_xquik.writes() if w.status == 429)
    _wait_successes(fake_xquik, {"alice": len(_successes(fake_xquik, "alice")) + 1, "bob": 2})
    assert daemon.stop() == 0

    later = [w for w in fake_xquik.writes() if w.seq > limited.seq]
    assert later
    for write in later:
        assert write.arrived_wall >= resume_at - 0.05, (write.arrived_wall, resume_at)
    assert _gap(limited, later[0]) >= 0.5, "the date, not the retry backoff, set the wait"
    assert len(daemon.named("pause.started")) == 1


@pytest.mark.parametrize(
    ("code", "scope", "account"),
    [("rate_limit_exceeded", "key", None), ("x_rate_limited", "account", "alice")],
)
def test_429_without_a_hint_backs_off_from_retry_initial_doubling(
    tmp_path: Path,
    fake_xquik: FakeXquik,
    start_daemon: DaemonFactory,
    *,
    code: str,
    scope: str,
    account: str | None,
) -> None:
    """A 429 with no Retry-After waits retry.initial, doubling while it comes back."""
    config, _ = _setup(tmp_path, fake_xquik, {"alice": "every 1h"})
    fake_xquik.script(_error(429, code), _error(429, code), _error(429, code))
    daemon = start_daemon(config)
    daemon.wait_for("avatar.uploaded", timeout=20)
    assert daemon.stop() == 0

    writes = fake_xquik.writes()
    assert [w.status for w in writes] == [429, 429, 429, 200]
    started = daemon.named("pause.started")
    assert [(e["scope"], e["account"]) for e in started] == [(scope, account)] * 3
    assert [e["seconds"] for e in started] == [0.1, 0.2, 0.4]  # retry.initial = 100ms
    assert len(daemon.named("pause.ended")) == 3
    for (earlier, later), wait in zip(itertools.pairwise(writes), [0.1, 0.2, 0.4], strict=True):
        assert _gap(earlier, later) >= 0.9 * wait


# -- one account: X's throttles --------------------------------------------------------

THROTTLES = {
    "thr1": (_error(429, "x_rate_limited", headers={"Retry-After": "2"}), "x_rate_limited"),
    "thr2": (_error(429, "x_rate_limited", retryAfterMs=2000), "x_rate_limited"),
    "thr3": (_error(429, "x_daily_limit", headers={"Retry-After": "2"}), "daily"),
}


def test_x_throttles_pause_only_that_account(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """x_rate_limited / x_daily_limit hold that account for Retry-After; others go on."""
    for name, (reply, _) in THROTTLES.items():
        fake_xquik.connect_account(name)
        fake_xquik.script(reply, account=name)
    schedules = {**dict.fromkeys(THROTTLES, "every 1s"), "bob": "every 1s"}
    config, _ = _setup(tmp_path, fake_xquik, schedules, images=2)
    daemon = start_daemon(config)
    _wait_successes(fake_xquik, dict.fromkeys(THROTTLES, 1))
    assert daemon.stop() == 0

    for name, (_, kind) in THROTTLES.items():
        limited, resumed = fake_xquik.writes(name)[:2]
        assert (limited.status, resumed.status) == (429, 200), name
        assert _gap(limited, resumed) >= 1.8, name
        between = [w for w in fake_xquik.writes("bob") if limited.seq < w.seq < resumed.seq]
        assert between, f"bob went on writing during {name}'s pause"
        started = _pauses(daemon.named("pause.started"), name)
        assert [(e["scope"], e["kind"]) for e in started] == [("account", kind)], name
        assert started[0]["seconds"] == pytest.approx(2.0)
        assert len(_pauses(daemon.named("pause.ended"), name)) == 1, name
    assert {e["account"] for e in daemon.named("pause.started")} == set(THROTTLES)


def test_x_daily_limit_pauses_account_a_day_across_restart_until_resumed(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """x_daily_limit pauses an account 24 h: status shows it, restarts keep it, resume ends it."""
    config, _ = _setup(tmp_path, fake_xquik, {"alice": "every 1s", "bob": "every 1s"})
    env = cli_env(fake_xquik.api_key)
    fake_xquik.script(_error(429, "x_daily_limit"), account="alice")
    daemon = start_daemon(config)
    daemon.wait_for("pause.started", timeout=20)
    _wait_successes(fake_xquik, {"bob": 2})
    assert daemon.stop() == 0
    started = daemon.named("pause.started")
    assert [(e["scope"], e["account"], e["kind"]) for e in started] == [
        ("account", "alice", "daily")
    ]
    assert started[0]["seconds"] == 86400
    assert len(fake_xquik.writes("alice")) == 1

    status = run_cli("status", "--config", str(config), "--json", env=env)
    assert status.returncode == 0, status.stderr
    pauses = json.loads(status.stdout)["pauses"]
    assert [(p["scope"], p["account"], p["kind"]) for p in pauses] == [
        ("account", "alice", "daily")
    ]
    left = dt.datetime.fromisoformat(pauses[0]["until"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=23) < left <= dt.timedelta(hours=24)

    bob_before = len(fake_xquik.writes("bob"))
    second = start_daemon(config)
    _wait_successes(fake_xquik, {"bob": bob_before + 2})
    assert len(fake_xquik.writes("alice")) == 1, "a restart does not end the pause early"
    assert second.named("pause.started") == []

    resumed = run_cli("resume", "--config", str(config), "--account", "alice", env=env)
    assert resumed.returncode == 0, resumed.stderr
    ended = second.wait_for("pause.ended", timeout=10)
    assert ended[0]["account"] == "alice"
    assert ended[0]["why"] == "resumed by hand"
    _wait_successes(fake_xquik, {"alice": 1})
    assert second.stop() == 0
    assert len(second.named("pause.ended")) == 1


def test_key_pause_survives_a_restart(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """A restart during a key pause neither ends it early nor writes on start."""
    config, _ = _setup(
        tmp_path,
        fake_xquik,
        {"alice": "every 1h", "bob": "every 1h"},
        sections={"rate_limit": {"concurrency": 1}},
    )
    fake_xquik.script(_error(429, "rate_limit_exceeded", headers={"Retry-After": "3"}))
    first = start_daemon(config)
    first.wait_for("pause.started", timeout=20)
    assert first.stop() == 0
    limited = next(w for w in fake_xquik.writes() if w.status == 429)

    second = start_daemon(config)
    _wait_successes(fake_xquik, {"alice": 1, "bob": 1})
    assert second.stop() == 0
    later = [w for w in fake_xquik.writes() if w.seq > limited.seq]
    assert later
    for write in later:
        assert _gap(limited, write) >= 2.7, (write.account, _gap(limited, write))
    assert second.named("pause.started") == []
    assert [(e["scope"], e["why"]) for e in second.named("pause.ended")] == [("key", "time is up")]


# -- one attempt: transient failures ---------------------------------------------------

TRANSIENT = {
    "tx1": _error(503, "x_transient_error"),
    "tx2": _error(500, "x_write_failed"),
    "tx3": _error(500, "internal_error"),
    "tx4": _error(503, "write_tracking_unavailable"),
    "tx5": Reply(
        status=502,
        body=b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
        content_type="text/html",
    ),
    "tx6": Reply(status=500, body=b"upstream exploded", content_type="text/plain"),
    "tx7": Reply(status=504, body=b""),
    "tx8": Reply(status=500, json={"error": {"type": "server", "code": "internal_error"}}),
}
TRANSIENT_REASONS = {
    "tx1": "x_transient_error",
    "tx2": "x_write_failed",
    "tx3": "internal_error",
    "tx4": "write_tracking_unavailable",
    "tx5": "http 502",
    "tx6": "http 500",
    "tx7": "http 504",
    "tx8": "internal_error",
}


def test_transient_failures_retry_the_same_image(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """Transient codes, any 5xx, HTML or text 5xx: the same image under the same key until
    it lands."""
    for name, reply in TRANSIENT.items():
        fake_xquik.connect_account(name)
        fake_xquik.script(reply, reply, account=name)
    config, pictures = _setup(tmp_path, fake_xquik, dict.fromkeys(TRANSIENT, "every 1h"))
    daemon = start_daemon(config)
    _wait_successes(fake_xquik, dict.fromkeys(TRANSIENT, 1))
    assert daemon.stop() == 0

    for name, reason in TRANSIENT_REASONS.items():
        writes = fake_xquik.writes(name)
        status = TRANSIENT[name].status
        assert [w.status for w in writes] == [status, status, 200], name
        assert [_image(w, pictures[name]) for w in writes] == ["1.png"] * 3, name
        failed = [e for e in daemon.named("avatar.failed") if e["account"] == name]
        assert [(e["error"], e["action"], e["attempt"]) for e in failed] == [
            (reason, "replay", 1),
            (reason, "replay", 2),
        ], name
        # No terminal record: the same key each time, as the official SDK resends.
        assert len({w.idempotency_key for w in writes}) == 1, name
    assert daemon.named("rotation.skipped") == []
    assert daemon.named("pause.started") == []


def test_out_of_tries_gives_up_with_position_unchanged(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """After retry.attempts transient failures the rotation is skipped; the next one resends it."""
    config, pictures = _setup(tmp_path, fake_xquik, {"alice": "every 1s"})
    fake_xquik.script(*[_error(503, "x_transient_error")] * 3)
    daemon = start_daemon(config)
    _wait_successes(fake_xquik, {"alice": 1})
    assert daemon.stop() == 0

    writes = fake_xquik.writes("alice")
    assert [w.status for w in writes[:4]] == [503, 503, 503, 200]
    assert [_image(w, pictures["alice"]) for w in writes[:4]] == ["1.png"] * 4
    skipped = daemon.named("rotation.skipped")
    assert len(skipped) == 1
    assert skipped[0]["account"] == "alice"
    assert "x_transient_error" in skipped[0]["reason"]


def test_every_waits_its_interval_after_a_give_up_across_a_restart(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """every 1h: a rotation that gave up, then a restart: nothing sent until 1h after it."""
    config, _ = _setup(tmp_path, fake_xquik, {"alice": "every 1h"})
    fake_xquik.script(*[_error(503, "x_transient_error")] * 3)
    daemon = start_daemon(config)
    daemon.wait_for("rotation.skipped", timeout=20)
    assert daemon.stop() == 0
    gave_up = fake_xquik.writes("alice")[-1].arrived_wall
    second = start_daemon(config)
    second.wait_for("daemon.started")
    time.sleep(1.5)
    assert second.stop() == 0
    assert len(fake_xquik.writes("alice")) == 3, "no write before the interval is over"
    plan = run_cli(
        "plan", "--config", str(config), "--count", "1", "--json", env=cli_env(None), timeout=30
    )
    (entry,) = json.loads(plan.stdout)["entries"]
    due = dt.datetime.fromisoformat(entry["instants"][0]).timestamp()
    assert abs(due - (gave_up + 3600)) < 5


def test_connect_errors_retry_then_give_up_and_the_daemon_stays_up(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """A refused connection is retried retry.attempts times, then the rotation is skipped."""
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config, _ = _setup(tmp_path, fake_xquik, {"alice": "every 1h"})
    text = config.read_text(encoding="utf-8").replace(
        fake_xquik.base_url, f"http://127.0.0.1:{port}/api/v1"
    )
    config.write_text(text, encoding="utf-8")
    daemon = start_daemon(config)
    daemon.wait_for("rotation.skipped", timeout=20)
    assert daemon.proc.poll() is None, "the daemon stays up"
    assert daemon.stop() == 0
    failed = daemon.named("avatar.failed")
    assert [(e["error"], e["action"], e["attempt"]) for e in failed] == [
        ("connection refused", "retry", 1),
        ("connection refused", "retry", 2),
        ("connection refused", "give_up", 3),
    ]


def test_dropped_connection_replays_with_the_same_key(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """No answer after sending: the write is replayed under the same Idempotency-Key, once."""
    applied = {"drop1": True, "drop2": False}  # the server did / did not act before the drop
    for name, apply in applied.items():
        fake_xquik.connect_account(name)
        fake_xquik.script(Reply(drop=True, apply=apply), account=name)
    config, pictures = _setup(tmp_path, fake_xquik, dict.fromkeys(applied, "every 1h"))
    daemon = start_daemon(config)
    _wait_successes(fake_xquik, dict.fromkeys(applied, 1))
    assert daemon.stop() == 0

    for name, apply in applied.items():
        dropped, replay = fake_xquik.writes(name)
        assert dropped.dropped, name
        assert replay.status == 200, name
        assert replay.idempotency_key == dropped.idempotency_key, name
        assert [_image(w, pictures[name]) for w in (dropped, replay)] == ["1.png"] * 2
        assert replay.replayed is apply, "an applied write is answered from its key's record"
        assert len(fake_xquik.applied_writes(name)) == 1, "changed (and charged) once"
        failed = [e for e in daemon.named("avatar.failed") if e["account"] == name]
        assert [(e["error"], e["action"]) for e in failed] == [("connection dropped", "replay")]


def test_read_timeout_replays_with_the_same_key(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """A write answered too late (read timeout) is replayed with its key; no double write."""
    config, _ = _setup(
        tmp_path, fake_xquik, {"alice": "every 1h"}, sections={"api": {"timeout": "500ms"}}
    )
    fake_xquik.script(Reply(delay=1.5))  # applied at once, answered after the timeout
    daemon = start_daemon(config)
    daemon.wait_for("avatar.uploaded", timeout=20)
    assert daemon.stop() == 0
    fake_xquik.wait_for(
        lambda reqs: all(r.handled for r in reqs if r.is_write), 10, "the late answer"
    )

    slow, replay = fake_xquik.writes()
    assert replay.idempotency_key == slow.idempotency_key
    assert replay.file is not None
    assert slow.file is not None
    assert replay.file.data == slow.file.data
    assert replay.replayed
    assert len(fake_xquik.applied_writes()) == 1


# -- one image -------------------------------------------------------------------------
# Refusals giving way to the next image, counting as tries, key conflicts and
# x_duplicate_action are tested in-process (tests/test_rotation.py); these are the smoke.


def test_refused_image_is_not_sent_again_until_its_file_changes(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """A refused image (by content hash) is left out of later rotations until it changes."""
    config, pictures = _setup(tmp_path, fake_xquik, {"alice": "every 1s"}, images=2)
    fake_xquik.script(_error(422, "x_rejected"))
    daemon = start_daemon(config)
    _wait_successes(fake_xquik, {"alice": 2})
    names = [_image(w, pictures["alice"]) for w in fake_xquik.writes("alice")]
    assert names[:3] == ["1.png", "2.png", "2.png"], "1.png's turn came and it was left out"
    assert names.count("1.png") == 1

    new_bytes = make_image(tmp_path / "alice" / "1.png", seed=999)
    fake_xquik.wait_for(
        lambda reqs: any(r.is_write and r.file and r.file.data == new_bytes for r in reqs),
        20,
        "the changed 1.png",
    )
    assert daemon.stop() == 0
    changed = [w for w in fake_xquik.writes() if w.file and w.file.data == new_bytes]
    assert changed[0].status == 200


def test_media_download_failed_sends_the_same_image_as_a_file(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """In url mode, media_download_failed sends the same image's bytes in the same rotation."""
    config, pictures = _setup(
        tmp_path,
        fake_xquik,
        {"alice": "every 1h"},
        sections={"api": {"upload": "url"}},
        entry_extra={"public_base_url": "https://images.invalid/alice"},
    )
    fake_xquik.script(_error(422, "media_download_failed"))
    daemon = start_daemon(config)
    daemon.wait_for("avatar.uploaded", timeout=20)
    assert daemon.stop() == 0

    by_url, by_file = fake_xquik.writes()
    assert by_url.url == "https://images.invalid/alice/1.png"
    assert by_url.file is None
    assert by_file.url is None
    assert _image(by_file, pictures["alice"]) == "1.png"
    assert by_file.status == 200
    assert by_file.idempotency_key != by_url.idempotency_key, "other bytes, another key"
    assert daemon.named("rotation.skipped") == []


# -- one account -------------------------------------------------------------------------

ACCOUNT_ERRORS = {
    "acc1": _error(403, "account_needs_reauth"),
    "acc2": _error(403, "account_restricted"),
    "acc3": _error(404, "account_not_found"),
    "acc4": _error(422, "x_account_suspended"),
    "acc5": _error(422, "x_account_protected"),
    "acc6": _error(422, "x_account_feature_required"),
    "acc7": _error(422, "x_target_not_found"),
}


def test_account_errors_pause_only_that_account(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """Each account-level code pauses its account pause.account (checked free); others go on."""
    for name, reply in ACCOUNT_ERRORS.items():
        fake_xquik.connect_account(name)
        fake_xquik.script(reply, account=name)
    schedules = {**dict.fromkeys(ACCOUNT_ERRORS, "every 1h"), "bob": "every 1s"}
    config, _ = _setup(
        tmp_path, fake_xquik, schedules, images=2, sections={"pause": {"account": "2s"}}
    )
    daemon = start_daemon(config)
    _wait_successes(fake_xquik, dict.fromkeys(ACCOUNT_ERRORS, 1))
    assert daemon.stop() == 0

    checks = _reads(fake_xquik.requests(), "x/accounts")
    for name, reply in ACCOUNT_ERRORS.items():
        failed, resumed = fake_xquik.writes(name)
        assert (failed.status, resumed.status) == (reply.status, 200), name
        assert _gap(failed, resumed) >= 1.8, name
        assert any(failed.seq < c.seq < resumed.seq for c in checks), f"{name}: free check first"
        code = reply.json["error"]
        started = _pauses(daemon.named("pause.started"), name)
        assert [(e["scope"], e["kind"], e["reason"]) for e in started] == [
            ("account", "account", code)
        ]
        assert len(_pauses(daemon.named("pause.ended"), name)) == 1, name
        bob = [w for w in fake_xquik.writes("bob") if failed.seq < w.seq < resumed.seq]
        assert bob, f"bob went on writing while {name} was paused"
    assert _pauses(daemon.named("pause.started"), "bob") == []


def test_unhealthy_account_pause_goes_on_without_a_write(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """While GET /x/accounts shows the account unhealthy its pause doubles, without a write."""
    fake_xquik.set_health("alice", "needsReauth")
    config, _ = _setup(
        tmp_path,
        fake_xquik,
        {"alice": "every 1s", "bob": "every 1s"},
        sections={"pause": {"account": "500ms"}},
    )
    daemon = start_daemon(config)
    # Heal it only once the first check has answered "still unhealthy".
    fake_xquik.wait_for(
        lambda reqs: any(r.handled for r in _reads(reqs, "x/accounts")), 20, "a check"
    )
    fake_xquik.set_health("alice", "healthy")
    _wait_successes(fake_xquik, {"alice": 1})
    assert daemon.stop() == 0

    failed, resumed = fake_xquik.writes("alice")[:2]
    assert failed.status == 403
    assert failed.response is not None
    assert failed.response.json["error"] == "account_needs_reauth"
    assert resumed.status == 200
    checks = [
        c for c in _reads(fake_xquik.requests(), "x/accounts") if failed.seq < c.seq < resumed.seq
    ]
    assert len(checks) == 2, "one check found it unhealthy, the next one healthy"
    assert _gap(failed, checks[0]) >= 0.45  # pause.account = 500ms
    assert _gap(checks[0], checks[1]) >= 0.9  # then doubled
    started = _pauses(daemon.named("pause.started"), "alice")
    assert len(started) == 1
    assert len(_pauses(daemon.named("pause.ended"), "alice")) == 1
    assert [w for w in fake_xquik.writes("bob") if failed.seq < w.seq < resumed.seq]


# -- the whole key: billing --------------------------------------------------------------

BILLING = [
    "insufficient_credits",
    "no_subscription",
    "no_credits",
    "subscription_inactive",
    "payment_failed",
    "usage_limit_reached",
]


def test_billing_codes_stop_every_write_until_the_free_balance_shows_credits(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """Every billing 402 (and a bare 402) pauses the key; only a free GET /credits resumes it."""
    config, pictures = _setup(
        tmp_path, fake_xquik, {"alice": "every 1h"}, sections={"pause": {"credits": "500ms"}}
    )
    fake_xquik.script(
        *[_error(402, code) for code in BILLING],
        Reply(status=402, body=b"Payment Required", content_type="text/plain"),
    )
    daemon = start_daemon(config)
    daemon.wait_for("avatar.uploaded", timeout=30)
    assert daemon.stop() == 0

    writes = fake_xquik.writes()
    assert [w.status for w in writes] == [402] * 7 + [200]
    assert {_image(w, pictures["alice"]) for w in writes} == {"1.png"}
    reads = _reads(fake_xquik.requests(), "credits")
    for earlier, later in itertools.pairwise(writes):
        assert _gap(earlier, later) >= 0.45  # pause.credits = 500ms
        assert any(earlier.seq < r.seq < later.seq for r in reads), "a free read before resuming"
    started = daemon.named("pause.started")
    assert [(e["scope"], e["kind"]) for e in started] == [("key", "credits")] * 7
    assert [e["reason"] for e in started[:6]] == BILLING
    assert len(daemon.named("pause.ended")) == 7


def test_out_of_credits_never_spends_a_write_to_find_out(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """Out of credits: at most one write per entry, then only free reads until the balance is up."""
    fake_xquik.enforce_credits = True
    fake_xquik.balance = 5  # below credits_per_call = 10
    config, _ = _setup(
        tmp_path,
        fake_xquik,
        {"alice": "every 1s", "bob": "every 1s"},
        sections={"pause": {"credits": "500ms"}},
    )
    daemon = start_daemon(config)
    fake_xquik.wait_for(
        lambda reqs: sum(r.handled for r in _reads(reqs, "credits")) >= 3, 20, "3 reads"
    )
    writes_while_broke = fake_xquik.writes()
    fake_xquik.balance = 1000
    _wait_successes(fake_xquik, {"alice": 1, "bob": 1})
    assert daemon.stop() == 0

    for account in ("alice", "bob"):
        refused = [w for w in writes_while_broke if w.account == account]
        assert len(refused) <= 1, f"{account}: at most one write before the pause"
        assert all(w.status == 402 for w in refused)
    assert writes_while_broke, "one write found out"
    reads = _reads(fake_xquik.requests(), "credits")
    for earlier, later in itertools.pairwise(reads):
        assert _gap(earlier, later) >= 0.45, "one free read per pause.credits"
    first_ok_read = next(r for r in reads if r.response and int(r.response.json["balance"]) >= 10)
    resumed = [w for w in fake_xquik.writes() if w.seq > writes_while_broke[-1].seq]
    assert resumed
    assert all(w.seq > first_ok_read.seq for w in resumed), "no write before credits show"
    assert len(daemon.named("pause.started")) == 1
    assert len(daemon.named("pause.ended")) == 1


# -- the whole key: a rejected key -------------------------------------------------------


def test_rejected_key_pauses_with_doubling_and_the_daemon_stays_up(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """401: every write stops for pause.auth, doubling up to pause.max, one write per entry."""
    config, _ = _setup(
        tmp_path,
        fake_xquik,
        {"alice": "every 1s", "bob": "every 1s"},
        sections={"pause": {"auth": "250ms", "max": "1s"}},
    )
    daemon = start_daemon(config, env=cli_env("xq_" + "0" * 64))
    daemon.wait_for("pause.started", count=4, timeout=30)
    assert daemon.proc.poll() is None, "the daemon stays up with a rejected key"
    assert daemon.stop() == 0

    started = daemon.named("pause.started")
    assert {(e["scope"], e["kind"]) for e in started} == {("key", "auth")}
    assert [e["seconds"] for e in started[:4]] == [0.25, 0.5, 1.0, 1.0]
    writes = fake_xquik.writes()
    assert {w.status for w in writes} == {401}
    for account in ("alice", "bob"):
        mine = [w for w in writes if w.account == account]
        for earlier, later in itertools.pairwise(mine):
            assert _gap(earlier, later) >= 0.2, f"{account}: one write per pause.auth"


def test_sighup_with_a_new_key_resumes_at_once(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """During an auth pause, a SIGHUP that loads a new key ends it at once."""
    key_file = tmp_path / "key.txt"
    key_file.write_text("xq_" + "0" * 64 + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    config, _ = _setup(
        tmp_path,
        fake_xquik,
        {"alice": "every 1h"},
        sections={"api": {"key_file": "key.txt"}, "pause": {"auth": "30s", "max": "1m"}},
    )
    daemon = start_daemon(config, env=cli_env(None))
    daemon.wait_for("pause.started", timeout=20)
    key_file.write_text(fake_xquik.api_key + "\n", encoding="utf-8")
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("avatar.uploaded", timeout=20)
    assert daemon.stop() == 0

    rejected, accepted = fake_xquik.writes()
    assert (rejected.status, accepted.status) == (401, 200)
    assert _gap(rejected, accepted) < 20, "the new key ended the 30 s pause at once"
    assert [e["new_key"] for e in daemon.named("daemon.reloaded")] == [True]
    assert [e["why"] for e in daemon.named("pause.ended")] == ["a new API key was loaded"]
    assert ("0" * 64) not in daemon.output(), "the rejected key is not printed either"


# -- uncertain writes and durable write actions ------------------------------------------


def test_uncertain_writes_are_never_sent_again_blindly(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """x_write_ambiguous, x_write_unconfirmed, an unpollable write: logged, never resent blindly."""
    answers = {
        "amb": _error(500, "x_write_ambiguous"),
        "unc": _error(202, "x_write_unconfirmed"),
        "pend": Reply(durable_pending=True, polls_until_terminal=5, retry_after="1"),
    }
    for name, reply in answers.items():
        fake_xquik.connect_account(name)
        fake_xquik.script(reply, account=name)
    fake_xquik.script_poll(_error(404, "not_found"))  # the pending write cannot be polled
    config, pictures = _setup(tmp_path, fake_xquik, dict.fromkeys(answers, "every 1s"))
    daemon = start_daemon(config)
    fake_xquik.wait_for(
        lambda reqs: all(
            sum(r.is_write and r.handled and r.account == name for r in reqs) >= 2
            for name in answers
        ),
        20,
        "a second rotation of each account",
    )
    assert daemon.stop() == 0

    uncertain = daemon.named("avatar.uncertain")
    assert sorted(e["account"] for e in uncertain) == sorted(answers)
    blind = []
    for name in answers:
        first, second = fake_xquik.writes(name)[:2]
        assert _image(first, pictures[name]) == "1.png"
        # Either the position moved on, or the write was replayed under its own key.
        if _image(second, pictures[name]) == "1.png" and (
            second.idempotency_key != first.idempotency_key
        ):
            blind.append(name)
    assert blind == [], "the next rotation resent the uncertain write under a new key"
    assert daemon.named("rotation.skipped") == []


# A terminal failed write action (safeToRetry, nextAction, its code): in-process, one test
# per decision, in tests/test_rotation.py.


# -- the rotation: anything else -----------------------------------------------------------


def test_other_4xx_gives_up_the_rotation_with_code_and_message(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """An unknown 4xx is logged with its code and message (never the key); position unchanged."""
    config, pictures = _setup(tmp_path, fake_xquik, {"alice": "every 1s"})
    fake_xquik.script(
        Reply(
            status=418,
            json={"error": "teapot", "message": f"short and stout, key {fake_xquik.api_key}"},
        )
    )
    daemon = start_daemon(config)
    _wait_successes(fake_xquik, {"alice": 1})
    assert daemon.stop() == 0

    refused, then = fake_xquik.writes()[:2]
    assert refused.status == 418
    assert [_image(w, pictures["alice"]) for w in (refused, then)] == ["1.png", "1.png"]
    (failed,) = daemon.named("avatar.failed")
    assert (failed["error"], failed["status"], failed["action"]) == ("teapot", 418, "give_up")
    assert "short and stout" in failed["message"]
    (skipped,) = daemon.named("rotation.skipped")
    assert "teapot" in skipped["reason"]
    assert fake_xquik.api_key not in daemon.output()


# -- pacing ------------------------------------------------------------------------------


def test_many_entries_due_together_finish_without_a_429(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """Six entries due at once, writes=2 per 1 s: zero 429s, never 3 arrivals within 1 s."""
    names = [f"pace{n}" for n in range(6)]
    for name in names:
        fake_xquik.connect_account(name)
    fake_xquik.rate_limit = (2, 1.0)
    config, _ = _setup(
        tmp_path,
        fake_xquik,
        dict.fromkeys(names, "every 1h"),
        images=1,
        sections={"rate_limit": {"writes": 2, "window": "1s"}},
    )
    daemon = start_daemon(config)
    _wait_successes(fake_xquik, dict.fromkeys(names, 1), timeout=30)
    assert daemon.stop() == 0

    writes = fake_xquik.writes()
    assert [w.status for w in writes] == [200] * 6
    for earlier, later in zip(writes, writes[2:], strict=False):
        assert _gap(earlier, later) >= 0.99, "at most 2 writes in any 1 s span"


def test_concurrency_limits_writes_in_flight(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """With concurrency 2, no write arrives while two others are still being answered."""
    names = [f"conc{n}" for n in range(5)]
    for name in names:
        fake_xquik.connect_account(name)
    fake_xquik.script(*[Reply(delay=0.4)] * 5)
    config, _ = _setup(
        tmp_path,
        fake_xquik,
        dict.fromkeys(names, "every 1h"),
        images=1,
        sections={"rate_limit": {"writes": 30, "window": "1s", "concurrency": 2}},
    )
    daemon = start_daemon(config)
    _wait_successes(fake_xquik, dict.fromkeys(names, 1), timeout=30)
    assert daemon.stop() == 0

    writes = fake_xquik.writes()
    assert len(writes) == 5
    for index, write in enumerate(writes):
        unanswered = [w for w in writes[:index] if _gap(w, write) < 0.4]
        assert len(unanswered) < 2, f"write {index} arrived with {len(unanswered)} in flight"


def test_a_write_left_running_by_kill_9_is_resumed_after_the_restart(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """kill -9 while a 202 write is polled: the restarted daemon polls that write (its id
    kept in the state) and sends nothing new; the avatar changes once."""
    fake_xquik.durable = True
    config, pictures = _setup(tmp_path, fake_xquik, {"alice": "every 1h"})
    fake_xquik.script(Reply(durable_pending=True, polls_until_terminal=3, retry_after="1"))
    first = start_daemon(config)
    fake_xquik.wait_for(lambda reqs: any(r.is_poll for r in reqs), 20, "a first poll")
    first.kill()
    second = start_daemon(config)
    second.wait_for("avatar.uploaded", timeout=20)
    assert second.stop() == 0

    (write,) = fake_xquik.writes()
    assert _image(write, pictures["alice"]) == "1.png"
    assert write.response is not None
    action_id = write.response.json["id"]
    (resumed,) = second.named("write.resumed")
    assert resumed["action_id"] == action_id
    (uploaded,) = second.named("avatar.uploaded")
    assert (uploaded["image"], uploaded["action_id"], uploaded["credits"]) == (
        "1.png",
        action_id,
        10,
    )
    assert len(fake_xquik.applied_writes()) == 1
