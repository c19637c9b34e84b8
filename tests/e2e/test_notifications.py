"""Notifications from a running daemon: a real webhook receiver and a real command."""

from __future__ import annotations

import json
import signal
import stat
import sys
import time
from pathlib import Path

from conftest import DaemonFactory
from fake_xquik import FakeXquik
from harness import cli_env, make_image, run_cli, write_config
from webhook_receiver import WebhookReceiver


def _recorder(tmp_path: Path) -> tuple[Path, Path]:
    """Write a script appending each notification (stdin and env) as a JSON line to a file."""
    out = tmp_path / "notifications.jsonl"
    script = tmp_path / "record-notification"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "line = json.dumps({'stdin': sys.stdin.read(), 'env': dict(os.environ)})\n"
        f"with open({str(out)!r}, 'a') as f:\n"
        "    f.write(line + '\\n')\n",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, out


def _lines(path: Path, count: int, timeout: float = 20.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        assert time.monotonic() < deadline, f"wanted {count} notifications, got {len(lines)}"
        time.sleep(0.05)


def test_account_pause_is_delivered_to_webhook_and_command(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """An account that needs reauth pauses; pause.started reaches both, without the key."""
    script, out = _recorder(tmp_path)
    make_image(tmp_path / "alice" / "a.png", seed=1)
    fake_xquik.set_health("alice", "needsReauth")
    with WebhookReceiver() as receiver:
        config = write_config(
            tmp_path / "rotator.toml",
            base_url=fake_xquik.base_url,
            entries=[{"account": "alice", "folder": "alice", "schedule": "every 1h"}],
            sections={
                "pause": {"account": "1h", "max": "12h"},
                "notify": {"webhook": receiver.url, "command": str(script)},
            },
        )
        daemon = start_daemon(config)
        daemon.wait_for("pause.started")
        (hook,) = receiver.wait_for(1)
        (recorded,) = _lines(out, 1)
        assert daemon.stop() == 0
    body = hook.json
    assert body["event"] == "pause.started"
    assert (body["scope"], body["account"], body["reason"]) == (
        "account",
        "alice",
        "account_needs_reauth",
    )
    assert json.loads(str(recorded["stdin"])) == body
    env = recorded["env"]
    assert isinstance(env, dict)
    assert env["ROTATOR_EVENT"] == "pause.started"
    assert env["ROTATOR_ACCOUNT"] == "alice"
    assert "XQUIK_API_KEY" not in env
    for text in (hook.body.decode(), out.read_text()):
        assert fake_xquik.api_key not in text
    sent = daemon.named("notify.sent")
    assert sorted(str(e["to"]) for e in sent) == ["command", "webhook"]
    assert "s3cr3t-token" not in daemon.output(), "the webhook's token was logged"


def test_failed_reload_is_notified_and_a_fixed_notify_section_applies(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """A broken reload sends daemon.reload_failed; a reload that adds a webhook starts it."""
    make_image(tmp_path / "alice" / "a.png", seed=1)
    with WebhookReceiver() as first, WebhookReceiver() as second:
        entries = [{"account": "alice", "folder": "alice", "schedule": "every 1h"}]
        config = write_config(
            tmp_path / "rotator.toml",
            base_url=fake_xquik.base_url,
            entries=entries,
            sections={"notify": {"webhook": first.url}},
        )
        daemon = start_daemon(config)
        daemon.wait_for("avatar.uploaded")
        good = config.read_text()
        config.write_text(good + "\n[bogus]\n", encoding="utf-8")
        daemon.signal(signal.SIGHUP)
        (hook,) = first.wait_for(1)
        assert hook.json["event"] == "daemon.reload_failed"
        assert hook.json["problems"] == ["bogus: unknown section"]
        fixed = good.replace(first.url, second.url)
        config.write_text(fixed.replace("[notify]\n", '[notify]\nevents = ["daemon.stopped"]\n'))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("daemon.reloaded")
        assert daemon.stop() == 0
        (stopped,) = second.wait_for(1)
    assert stopped.json["event"] == "daemon.stopped"
    assert len(first.received) == 1


def test_plain_http_webhook_elsewhere_is_a_config_error(tmp_path: Path) -> None:
    """check and run refuse an http:// webhook to a remote host: exit 2, one line, no start."""
    make_image(tmp_path / "alice" / "a.png", seed=1)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url="http://127.0.0.1:9/api/v1",
        entries=[{"account": "alice", "folder": "alice", "schedule": "every 1h"}],
        sections={"notify": {"webhook": "http://hooks.example.com/T0KEN"}},
    )
    for command in ("check", "run"):
        result = run_cli(command, "--config", str(config), env=cli_env("xq_" + "1" * 64))
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("rotator: notify.webhook: must use https"), line
        assert "T0KEN" not in line
