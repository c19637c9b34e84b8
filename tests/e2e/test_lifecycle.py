"""The daemon's lifecycle under stress: reloads, shutdowns and folders that come late."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from pathlib import Path

from conftest import DaemonFactory
from fake_xquik import FakeXquik, Reply
from harness import cli_env, make_image, run_cli, write_config


def _entry(account: str, schedule: str = "every 1h") -> dict[str, object]:
    return {"account": account, "folder": account, "schedule": schedule}


def test_reload_with_an_unsendable_key_keeps_the_daemon_and_its_key(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """SIGHUP with a key file holding two lines: reload_failed, the old key keeps working."""
    make_image(tmp_path / "alice" / "1.png", seed=1)
    make_image(tmp_path / "alice" / "2.png", seed=2)
    key_file = tmp_path / "key"
    key_file.write_text(fake_xquik.api_key + "\n")
    key_file.chmod(0o600)
    path = tmp_path / "rotator.toml"
    sections = {"api": {"key_file": "key"}}
    write_config(
        path, base_url=fake_xquik.base_url, entries=[_entry("alice", "every 1s")], sections=sections
    )
    daemon = start_daemon(path, env=cli_env(None))
    daemon.wait_for("avatar.uploaded")
    key_file.write_text(fake_xquik.api_key + "\n# rotated on monday\n")
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for("daemon.reload_failed")
    assert "cannot be sent" in str(failed[0]["problems"])
    count = len(fake_xquik.applied_writes())
    daemon.wait_for("avatar.uploaded", count=count + 1)
    assert daemon.stop() == 0


def test_an_unsendable_key_at_start_is_a_config_error(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """A key file with a second line: exit 2 (systemd does not restart-loop), one line."""
    make_image(tmp_path / "alice" / "1.png", seed=1)
    (tmp_path / "key").write_text(fake_xquik.api_key + "\nsecond line\n")
    path = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[_entry("alice")],
        sections={"api": {"key_file": "key"}},
    )
    result = run_cli("run", "--config", str(path), env=cli_env(None))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert fake_xquik.api_key not in result.stderr + result.stdout


def test_sigterm_sends_no_new_write_after_the_one_on_the_wire(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """SIGTERM (twice) during a write: it finishes, exit 0, and no other image goes out."""
    for n in (1, 2, 3):
        make_image(tmp_path / "alice" / f"{n}.png", seed=n)
    fake_xquik.script(
        Reply(status=400, json={"error": "invalid_input", "message": "no"}, delay=1.0)
    )
    path = write_config(
        tmp_path / "rotator.toml", base_url=fake_xquik.base_url, entries=[_entry("alice")]
    )
    daemon = start_daemon(path)
    fake_xquik.wait_for_writes(1, answered=False)
    daemon.signal(signal.SIGTERM)
    time.sleep(0.2)
    daemon.signal(signal.SIGTERM)  # a second one (double Ctrl-C) does not cut the drain
    assert daemon.stop() == 0
    assert len(fake_xquik.writes()) == 1, "no new write may start once asked to stop"
    assert daemon.named("daemon.stopped")[0]["drained"] == 1


def test_an_entry_removed_by_reload_stops_after_its_write(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """Removed while a write is failing: that write ends it, there is no retry."""
    make_image(tmp_path / "alice" / "1.png", seed=1)
    make_image(tmp_path / "bob" / "1.png", seed=2)
    fake_xquik.script(
        Reply(status=503, json={"error": "x_transient_error"}, delay=1.0), account="alice"
    )
    path = tmp_path / "rotator.toml"
    write_config(
        path,
        base_url=fake_xquik.base_url,
        entries=[_entry("alice"), _entry("bob")],
        sections={"retry": {"initial": "50ms", "max": "100ms", "attempts": 5}},
    )
    daemon = start_daemon(path)
    fake_xquik.wait_for(lambda rs: any(r.account == "alice" for r in rs), 10, "alice's write")
    write_config(
        path,
        base_url=fake_xquik.base_url,
        entries=[_entry("bob")],
        sections={"retry": {"initial": "50ms", "max": "100ms", "attempts": 5}},
    )
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("daemon.reloaded")
    daemon.wait_for("rotation.interrupted", lambda e: e["account"] == "alice")
    time.sleep(0.5)
    assert len(fake_xquik.writes("alice")) == 1
    assert daemon.stop() == 0


def test_polls_do_not_hold_the_write_limit(tmp_path: Path, start_daemon: DaemonFactory) -> None:
    """With one write in flight allowed, a write being polled does not hold up the next."""
    with FakeXquik(accounts=["alice", "bob"], durable=True) as server:
        make_image(tmp_path / "alice" / "1.png", seed=1)
        make_image(tmp_path / "bob" / "1.png", seed=2)
        server.script(
            Reply(durable_pending=True, polls_until_terminal=4, retry_after="1"), account="alice"
        )
        path = write_config(
            tmp_path / "rotator.toml",
            base_url=server.base_url,
            entries=[_entry("alice"), _entry("bob")],
            sections={"rate_limit": {"concurrency": 1}},
        )
        daemon = start_daemon(path, env=cli_env(server.api_key))
        daemon.wait_for("avatar.uploaded", count=2, timeout=20)
        assert daemon.stop() == 0
        requests = server.requests()
        bob = next(r for r in requests if r.is_write and r.account == "bob")
        last_poll = max(r.arrived_monotonic for r in requests if r.is_poll)
        assert bob.arrived_monotonic < last_poll, "bob waited for alice's polls"


def test_metrics_count_uploads_whatever_the_log_level(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """log.level = warning hides avatar.uploaded lines, not the upload counter."""
    make_image(tmp_path / "alice" / "1.png", seed=1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[_entry("alice")],
        sections={"log": {"level": "warning"}, "metrics": {"listen": f"127.0.0.1:{port}"}},
    )
    daemon = start_daemon(path)
    fake_xquik.wait_for_writes(1)
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                text = answer.read().decode()
        except OSError:
            text = ""
        if 'outcome="success"} 1.0' in text:
            break
        time.sleep(0.1)
    assert 'rotator_uploads_total{account="alice",outcome="success"} 1.0' in text
    assert daemon.named("avatar.uploaded") == []
    assert daemon.stop() == 0


def test_a_folder_created_after_start_is_watched(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """An entry whose folder does not exist yet picks up images once it is created."""
    path = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[_entry("alice")],
        sections={"watch": {"rescan": "1h", "settle": "200ms"}},
    )
    daemon = start_daemon(path)
    daemon.wait_for("catalog.scanned")  # the start-up scan is over: the folder comes later
    make_image(tmp_path / "alice" / "1.png", seed=1)
    daemon.wait_for("image.added", timeout=25)
    assert daemon.stop() == 0
