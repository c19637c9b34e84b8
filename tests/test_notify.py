"""Tests for rotator.notify: a real HTTP receiver on 127.0.0.1 and a real command."""

from __future__ import annotations

import io
import json
import stat
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from webhook_receiver import WebhookReceiver

from rotator.config import DEFAULT_NOTIFY_EVENTS, NotifySection, load_settings
from rotator.errors import ConfigError
from rotator.logs import REDACTED, add_listener, add_secret, configure, emit, remove_listener
from rotator.notify import Notifier, start_notifier, stop_notifier

KEY = "xq_" + "7a" * 32  # shaped like a real key: it must reach no notification
ENTRY = '[[accounts]]\naccount = "alice"\nfolder = "imgs"\nschedule = "every 1h"\n'
PAUSE = {
    "event": "pause.started",
    "scope": "account",
    "account": "alice",
    "reason": "account_needs_reauth",
    "kind": "account",
    "until": "2026-01-01T00:00:00+00:00",
    "seconds": 3600,
}


@pytest.fixture
def events() -> Iterator[list[Mapping[str, object]]]:
    """Collect every log event emitted during the test (logs go to a buffer)."""
    configure("debug", "json", stream=io.StringIO())
    seen: list[Mapping[str, object]] = []
    lock = threading.Lock()

    def listen(event: Mapping[str, object]) -> None:
        with lock:
            seen.append(dict(event))

    add_listener(listen)
    yield seen
    remove_listener(listen)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """Yield a running webhook receiver."""
    with WebhookReceiver() as running:
        yield running


def _settings(**values: object) -> NotifySection:
    return NotifySection(**{"attempts": 3, "timeout": "5s", **values})


def _named(events: list[Mapping[str, object]], name: str) -> list[Mapping[str, object]]:
    return [event for event in list(events) if event["event"] == name]


def test_webhook_gets_the_event_as_json(receiver: WebhookReceiver) -> None:
    """A wanted event is POSTed once as JSON: its fields, a timestamp, its level and a summary."""
    notifier = start_notifier(_settings(webhook=receiver.url), {})
    assert notifier is not None
    try:
        emit("pause.started", **{k: v for k, v in PAUSE.items() if k != "event"})
        emit("avatar.uploaded", account="alice", image="a.png")  # not in the default set
        (hook,) = receiver.wait_for(1)
    finally:
        stop_notifier(notifier)
    assert hook.path == "/hook?token=s3cr3t-token"
    assert hook.headers["Content-Type"] == "application/json"
    body = hook.json
    assert {key: body[key] for key in PAUSE} == PAUSE
    assert body["level"] == "warning"
    assert body["timestamp"].endswith("+00:00")
    assert body["text"].startswith("rotator: pause.started account=alice")
    assert len(receiver.received) == 1


def test_the_key_never_reaches_a_notification(
    tmp_path: Path, receiver: WebhookReceiver, events: list[Mapping[str, object]]
) -> None:
    """The key in a value, in an exception and in a secret-named field is masked in both sinks."""
    add_secret(KEY)
    out = tmp_path / "out.json"
    script = _recorder(tmp_path, out)
    environ = {
        "XQUIK_API_KEY": KEY,
        "ROTATOR_API__KEY": KEY,
        "OTHER": f"x{KEY}",
        "CREDENTIALS_DIRECTORY": "/run/credentials/rotator.service",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "KEEP": "1",
    }
    settings = _settings(webhook=receiver.url, command=[str(script)], events=["*"])
    notifier = start_notifier(settings, environ)
    try:
        emit(
            "daemon.crashed",
            error=f"ValueError: bad key {KEY}",
            api_key=KEY,
            problem=ValueError(KEY),
        )
        (hook,) = receiver.wait_for(1)
        _wait_file(out)
    finally:
        stop_notifier(notifier)
    recorded = json.loads(out.read_text())
    for text in (hook.body.decode(), out.read_text()):
        assert KEY not in text
    assert hook.json["api_key"] == REDACTED
    assert hook.json["error"] == f"ValueError: bad key {REDACTED}"
    env = recorded["env"]
    assert "XQUIK_API_KEY" not in env
    assert "ROTATOR_API__KEY" not in env
    assert "OTHER" not in env
    assert "CREDENTIALS_DIRECTORY" not in env, "the command is not told where the key file is"
    assert "NOTIFY_SOCKET" not in env
    assert env["KEEP"] == "1"
    assert [e["event"] for e in events if str(e["event"]).startswith("notify.")] == [
        "notify.sent",
        "notify.sent",
    ], "the notifier's own events are not sent on, even with events = ['*']"


def _recorder(tmp_path: Path, out: Path) -> Path:
    """Write a script that saves its stdin and environment to ``out`` (as JSON)."""
    script = tmp_path / "record-notification"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "data = {'stdin': sys.stdin.read(), 'env': dict(os.environ)}\n"
        f"tmp = {str(out)!r} + '.tmp'\n"
        "open(tmp, 'w').write(json.dumps(data))\n"
        f"os.replace(tmp, {str(out)!r})\n",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def _wait_file(path: Path, timeout: float = 15.0) -> None:
    finished = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if path.exists():
            return
        finished.wait(0.05)
    raise AssertionError(f"{path.name} never appeared")


def test_command_gets_json_on_stdin_and_variables(tmp_path: Path) -> None:
    """The command reads the event as JSON on stdin and its main fields in ROTATOR_* variables."""
    out = tmp_path / "out.json"
    notifier = start_notifier(_settings(command=f"{_recorder(tmp_path, out)} --flag"), {})
    try:
        emit("pause.started", **{k: v for k, v in PAUSE.items() if k != "event"})
        _wait_file(out)
    finally:
        stop_notifier(notifier)
    recorded = json.loads(out.read_text())
    body = json.loads(recorded["stdin"])
    assert {key: body[key] for key in PAUSE} == PAUSE
    env = recorded["env"]
    assert env["ROTATOR_EVENT"] == "pause.started"
    assert env["ROTATOR_ACCOUNT"] == "alice"
    assert env["ROTATOR_REASON"] == "account_needs_reauth"
    assert env["ROTATOR_LEVEL"] == "warning"
    assert json.loads(env["ROTATOR_EVENT_JSON"]) == body
    assert env["ROTATOR_TEXT"] == body["text"]


def test_failed_webhook_is_retried_with_backoff_then_given_up(
    receiver: WebhookReceiver, events: list[Mapping[str, object]]
) -> None:
    """500 then 503 then 204: three POSTs of the same body; a 400 is not sent again."""
    receiver.answer(500, 503)
    notifier = Notifier(_settings(webhook=receiver.url), environ={}, backoff=0.01)
    notifier.start()
    try:
        notifier.observe(PAUSE)
        first, second, third = receiver.wait_for(3)
        assert first.body == second.body == third.body
        receiver.answer(400, 400)
        notifier.observe({**PAUSE, "event": "pause.ended"})
        receiver.wait_for(4)
    finally:
        notifier.close(5)
    assert len(receiver.received) == 4, "a 400 will not change by sending it again"
    failed = _named(events, "notify.failed")
    assert [(e["attempt"], e["retry_in_s"]) for e in failed] == [(1, 0.01), (2, 0.02), (1, None)]
    assert all("s3cr3t" not in json.dumps(e, default=str) for e in failed)
    assert failed[0]["target"] == receiver.url.split("/hook")[0]
    assert [e["attempt"] for e in _named(events, "notify.sent")] == [3]


def test_command_failure_is_logged_and_retried(
    tmp_path: Path, events: list[Mapping[str, object]]
) -> None:
    """A command that exits 3 is tried ``attempts`` times; its last stderr line is logged."""
    script = tmp_path / "fail"
    script.write_text("#!/bin/sh\necho 'no route to pager' >&2\nexit 3\n", encoding="utf-8")
    script.chmod(0o700)
    notifier = Notifier(_settings(command=[str(script)], attempts=2), environ={}, backoff=0.01)
    notifier.start()
    notifier.observe(PAUSE)
    notifier.close(10)
    failed = _named(events, "notify.failed")
    assert [e["attempt"] for e in failed] == [1, 2]
    assert failed[-1]["error"] == "the command exited with 3: no route to pager"


def test_slow_receiver_drops_instead_of_blocking(
    receiver: WebhookReceiver, events: list[Mapping[str, object]]
) -> None:
    """With the receiver hung, events beyond the outbox size are dropped: one line, then a count."""
    receiver.hold()
    notifier = Notifier(_settings(webhook=receiver.url, queue=2), environ={})
    notifier.start()
    try:
        notifier.observe({**PAUSE, "seconds": 0})
        receiver.wait_for_arrivals(1)  # the first is on the wire, held: nothing leaves the queue
        for n in range(1, 60):
            notifier.observe({**PAUSE, "seconds": n})  # returns at once: nothing is sent here
        logged = _named(events, "notify.dropped")
        assert len(logged) == 1, "a flood of drops is one line, not one per event"
        receiver.release()
        receiver.wait_for(2)
    finally:
        notifier.close(10)
    dropped = _named(events, "notify.dropped")
    assert len(dropped) == 2
    assert dropped[1]["reason"] == "dropped while the outbox was full"
    sent = sorted(hook.json["seconds"] for hook in receiver.received)
    # One was on the wire (held) or waiting, two waited in the outbox; the rest were dropped.
    assert sum(int(str(e["count"])) for e in dropped) == 60 - len(sent)
    assert sent == [0, 1, 2]  # the held one, then the two the outbox kept


def test_unwanted_events_are_not_sent(receiver: WebhookReceiver) -> None:
    """Only the listed events go out."""
    notifier = Notifier(_settings(webhook=receiver.url, events=["avatar.uploaded"]), environ={})
    notifier.start()
    try:
        notifier.observe(PAUSE)
        notifier.observe({"event": "avatar.uploaded", "account": "alice"})
        (hook,) = receiver.wait_for(1)
    finally:
        notifier.close(5)
    assert hook.json["event"] == "avatar.uploaded"
    assert len(receiver.received) == 1


def test_no_destination_means_no_notifier() -> None:
    """An empty [notify] starts nothing."""
    assert start_notifier(NotifySection(), {}) is None
    assert NotifySection().events == DEFAULT_NOTIFY_EVENTS


# ---- config ----


def _problems(tmp_path: Path, notify: str) -> list[str]:
    path = tmp_path / "rotator.toml"
    path.write_text(f"[notify]\n{notify}\n{ENTRY}", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    return info.value.problems


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            'webhook = "http://hooks.example.com/x"',
            "notify.webhook: must use https (http only for a loopback host, "
            "not 'hooks.example.com')",
        ),
        (
            'webhook = "ftp://hooks.example.com/x"',
            "notify.webhook: is not a valid http(s) URL (a scheme, a host and no fragment)",
        ),
        ('webhook = "https:///x"', "notify.webhook: is not a valid http(s) URL"),
        ('command = "notify \'x"', "notify.command: "),
        ("command = []", "notify.command: must name a program"),
        ('events = ["Pause Started"]', "notify.events: 'Pause Started' is not an event name"),
        ('events = "pause.started"', "notify.events: must be a list of event names"),
        ('timeout = "0s"', "notify.timeout: must be above zero"),
        ("attempts = 0", "notify.attempts: "),
        ("queue = 0", "notify.queue: "),
    ],
)
def test_bad_notify_settings_are_named(tmp_path: Path, line: str, problem: str) -> None:
    """Each bad [notify] value gives one line naming the key."""
    (found,) = _problems(tmp_path, line)
    assert found.startswith(problem), found


def test_webhook_token_is_not_echoed_in_errors(tmp_path: Path) -> None:
    """A refused webhook URL's path and query (where tokens live) are not in the message."""
    (found,) = _problems(tmp_path, 'webhook = "http://hooks.example.com/T0KEN?k=SECRETQ"')
    assert "T0KEN" not in found
    assert "SECRETQ" not in found


def test_loopback_http_and_https_webhooks_are_accepted(tmp_path: Path) -> None:
    """http is fine for a loopback host, https anywhere; a command may be a string or a list."""
    path = tmp_path / "rotator.toml"
    for webhook in ("http://127.0.0.1:9/x", "http://[::1]:9/x", "https://hooks.example.com/a?b=c"):
        path.write_text(
            f'[notify]\nwebhook = "{webhook}"\ncommand = "/bin/echo \'a b\'"\n{ENTRY}',
            encoding="utf-8",
        )
        notify = load_settings(path, {}).notify
        assert notify.webhook == webhook
        assert notify.command == ("/bin/echo", "a b")
