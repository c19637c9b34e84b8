"""The daemon as a user runs it, against the fake Xquik server over real HTTP."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import time
from pathlib import Path

from conftest import DaemonFactory
from fake_xquik import FakeXquik, Reply
from harness import cli_env, make_image, run_cli, write_config

from rotator.state import StateStore


def _two_account_setup(tmp_path: Path, server: FakeXquik) -> tuple[Path, dict[str, bytes]]:
    images: dict[str, bytes] = {}
    for account in ("alice", "bob"):
        for n in (1, 2, 10):
            name = f"img{n}.png" if n != 2 else "img2.jpg"
            images[f"{account}/{name}"] = make_image(
                tmp_path / account / name, seed=n + len(account)
            )
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=server.base_url,
        entries=[
            {"account": "alice", "folder": "alice", "schedule": "every 1s"},
            {"account": "bob", "folder": "bob", "schedule": "every 1s"},
        ],
    )
    return config, images


def test_two_accounts_rotate_in_natural_order_byte_for_byte(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """Each account's images go out in natural order (img2 before img10), bytes unchanged."""
    config, images = _two_account_setup(tmp_path, fake_xquik)
    daemon = start_daemon(config)
    fake_xquik.wait_for_writes(8, timeout=20)
    assert daemon.stop() == 0
    for account in ("alice", "bob"):
        writes = fake_xquik.writes(account)
        names = [w.file.filename for w in writes if w.file is not None]
        assert names[:4] == ["img1.png", "img2.jpg", "img10.png", "img1.png"][: len(names[:4])]
        for write in writes:
            assert write.file is not None
            assert write.file.data == images[f"{account}/{write.file.filename}"]
            expected = "image/jpeg" if write.file.filename.endswith(".jpg") else "image/png"
            assert write.file.content_type == expected
            assert write.headers.get("x-api-key") == fake_xquik.api_key
            key = write.idempotency_key
            assert key is not None
            assert 1 <= len(key) <= 255
    keys = [w.idempotency_key for w in fake_xquik.writes()]
    assert len(set(keys)) == len(keys), "every new write needs a new Idempotency-Key"
    uploaded = daemon.named("avatar.uploaded")
    assert {e["account"] for e in uploaded} == {"alice", "bob"}
    for event in uploaded:
        assert {"image", "bytes", "duration_ms", "request_id", "timestamp", "level"} <= set(event)
        assert event["timestamp"].endswith(("Z", "+00:00"))


def test_durable_write_is_polled_never_resent(tmp_path: Path, start_daemon: DaemonFactory) -> None:
    """A 202 write action is polled until terminal; the write itself goes out once."""
    with FakeXquik(accounts=["alice"], durable=True) as server:
        make_image(tmp_path / "a" / "one.png", seed=1)
        make_image(tmp_path / "a" / "two.png", seed=2)
        server.script(Reply(durable_pending=True, polls_until_terminal=2, retry_after="1"))
        config = write_config(
            tmp_path / "rotator.toml",
            base_url=server.base_url,
            entries=[{"account": "alice", "folder": "a", "schedule": "every 1h"}],
        )
        daemon = start_daemon(config, env=cli_env(server.api_key))
        daemon.wait_for("avatar.uploaded", timeout=20)
        assert daemon.stop() == 0
        assert len(server.writes()) == 1
        assert len(server.polls()) == 3
        assert (
            server.current_avatar("alice")
            == hashlib.sha256((tmp_path / "a" / "one.png").read_bytes()).hexdigest()
        )


def test_legacy_and_durable_success_both_move_on(
    tmp_path: Path, start_daemon: DaemonFactory
) -> None:
    """200 {"success": true} and a terminal x_write_action both count as done."""
    with FakeXquik(accounts=["alice"], durable=True) as server:
        for n in range(3):
            make_image(tmp_path / "a" / f"{n}.png", seed=n)
        server.script(Reply(status=200, json={"success": True}))
        config = write_config(
            tmp_path / "rotator.toml",
            base_url=server.base_url,
            entries=[{"account": "alice", "folder": "a", "schedule": "every 1s"}],
        )
        daemon = start_daemon(config, env=cli_env(server.api_key))
        daemon.wait_for("avatar.uploaded", count=2, timeout=20)
        assert daemon.stop() == 0
        names = [w.file.filename for w in server.writes() if w.file]
        assert names[:2] == ["0.png", "1.png"]


def test_watching_rename_slow_copy_and_delete(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """Files renamed in, copied slowly and deleted change the catalog live, without restart."""
    folder = tmp_path / "pics"
    make_image(folder / "a.png", seed=1)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "pics", "schedule": "every 1h"}],
    )
    daemon = start_daemon(config)
    daemon.wait_for("avatar.uploaded", timeout=20)

    # Atomic rename from a temp name: joins under its final name only.
    make_image(tmp_path / "staging.part", seed=2)
    data = (tmp_path / "staging.part").read_bytes()
    (folder / "b.png.part").write_bytes(data)
    os.replace(folder / "b.png.part", folder / "b.png")
    daemon.wait_for("image.added", lambda e: e["path"] == "b.png", timeout=10)

    # A slow copy: written in chunks; it joins once, complete.
    big = make_image(tmp_path / "src.png", seed=3, size=300)
    with open(folder / "c.png", "wb") as out:
        for start in range(0, len(big), max(1, len(big) // 5)):
            out.write(big[start : start + max(1, len(big) // 5)])
            out.flush()
            time.sleep(0.15)
    added = daemon.wait_for("image.added", lambda e: e["path"] == "c.png", timeout=10)
    assert len(added) == 1
    assert not daemon.named("image.rejected"), "a slow copy must not be judged half-written"

    (folder / "a.png").unlink()
    daemon.wait_for("image.removed", lambda e: e["path"] == "a.png", timeout=10)
    assert not [e for e in daemon.named("image.added") if e["path"].endswith(".part")]
    assert daemon.stop() == 0


def test_kill_9_and_restart_continues_after_last_success(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """After kill -9, the next image is the one after the last success, never the first."""
    for n in range(1, 6):
        make_image(tmp_path / "p" / f"{n}.png", seed=n)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "p", "schedule": "every 1s"}],
    )
    daemon = start_daemon(config)
    daemon.wait_for("avatar.uploaded", count=2, timeout=20)
    daemon.kill()
    sent = [w.file.filename for w in fake_xquik.writes() if w.file and w.status == 200]
    second = start_daemon(config)
    second.wait_for("avatar.uploaded", timeout=20)
    assert second.stop() == 0
    after = [w.file.filename for w in fake_xquik.writes() if w.file and w.status == 200]
    resumed = after[len(sent)]
    last = sent[-1]
    assert resumed in {last, f"{int(last[0]) % 5 + 1}.png"}, (sent, after)
    assert resumed != "1.png" or last in {"5.png", "1.png"}


def test_sigterm_stops_cleanly(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """SIGTERM: daemon.stopped is logged and the exit code is 0."""
    make_image(tmp_path / "p" / "1.png", seed=1)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "p", "schedule": "0 0 1 1 *"}],
    )
    daemon = start_daemon(config)
    daemon.wait_for("daemon.started")
    assert daemon.stop() == 0
    assert daemon.named("daemon.stopped")
    assert fake_xquik.writes() == [], "a cron entry rotates only at its cron times"


def test_sighup_reloads_and_keeps_old_config_when_invalid(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """SIGHUP adds entries; a broken new config is logged and the old one kept."""
    make_image(tmp_path / "a" / "1.png", seed=1)
    make_image(tmp_path / "b" / "1.png", seed=2)
    path = tmp_path / "rotator.toml"
    entry_a = {"account": "alice", "folder": "a", "schedule": "every 1h"}
    write_config(path, base_url=fake_xquik.base_url, entries=[entry_a])
    daemon = start_daemon(path)
    daemon.wait_for("avatar.uploaded", lambda e: e["account"] == "alice", timeout=20)

    path.write_text(path.read_text() + "\n[broken\n", encoding="utf-8")
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for("daemon.reload_failed", timeout=10)
    assert "line" in str(failed[0]["problems"])

    entry_b = {"account": "bob", "folder": "b", "schedule": "every 1h"}
    write_config(path, base_url=fake_xquik.base_url, entries=[entry_a, entry_b])
    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_for("daemon.reloaded", timeout=10)
    assert len(reloaded[0]["added"]) == 1
    daemon.wait_for("avatar.uploaded", lambda e: e["account"] == "bob", timeout=20)
    assert daemon.stop() == 0
    assert len(fake_xquik.writes("alice")) == 1, "a reload keeps positions and schedules"


def test_second_daemon_on_same_state_exits_2(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """One daemon per state dir: a second one exits 2 and says why."""
    make_image(tmp_path / "p" / "1.png", seed=1)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "p", "schedule": "every 1h"}],
    )
    first = start_daemon(config)
    first.wait_for("daemon.started")
    second = run_cli("run", "--config", str(config), env=cli_env(fake_xquik.api_key))
    assert second.returncode == 2
    assert "another rotator daemon" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.stop() == 0


def test_cron_rotation_missed_while_down_runs_once_at_start(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """Down across several cron times: one rotation at start (coalesced), not one per miss."""
    make_image(tmp_path / "p" / "1.png", seed=1)
    make_image(tmp_path / "p" / "2.png", seed=2)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "p", "schedule": "0 * * * *"}],
    )
    entry_id = f"alice:{tmp_path / 'p'}"
    with StateStore.open(tmp_path / "state") as state:
        three_hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
        state.record_fire(entry_id, "alice", three_hours_ago)
    daemon = start_daemon(config)
    daemon.wait_for("avatar.uploaded")
    time.sleep(1.0)
    assert daemon.stop() == 0
    assert len(fake_xquik.writes()) == 1
