"""Send chosen log events to a command and/or a webhook, without ever holding up the daemon.

The notifier listens to log events like the metrics do (``logs.add_listener``). An event
it was asked for is redacted exactly as its log line is, turned into JSON, and put in a
bounded outbox per destination; a background thread per destination delivers it, with
a timeout and a few retries with backoff. A full outbox drops the event and logs
``notify.dropped``: a dead receiver must never slow rotations or fill memory.

The command gets the JSON on stdin and the main fields in ``ROTATOR_EVENT``,
``ROTATOR_ACCOUNT``, ``ROTATOR_REASON``, ``ROTATOR_TEXT`` and ``ROTATOR_EVENT_JSON``; its
environment is the daemon's minus every variable that holds the API key or says where it
is, and minus systemd's notify and watchdog variables.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from rotator import __version__
from rotator.clock import utc_now
from rotator.config import NotifySection
from rotator.errors import RotatorError
from rotator.keys import KEY_ENV
from rotator.logs import EVENT_LEVELS, add_listener, emit, redact_text, redacted, remove_listener

BACKOFF_INITIAL = 1.0  # seconds before the second try; doubled for each further one
BACKOFF_MAX = 30.0
DRAIN_SECONDS = 5.0  # at shutdown, how long queued notifications may take to go out
# Not handed to the command: the key (or where it is), and systemd's channels to the daemon.
_NOT_PASSED = frozenset(
    {
        KEY_ENV,
        "ROTATOR_API__KEY",
        "ROTATOR_API",
        "CREDENTIALS_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    }
)
_SUMMARY_FIELDS = ("account", "scope", "kind", "reason", "error", "until", "problems", "image")


class NotifyError(RotatorError):
    """One delivery failed; ``retry`` tells whether trying again may help (never leaves here)."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        self.retry = retry
        super().__init__(message)


def payload(event: Mapping[str, object], now: dt.datetime) -> dict[str, Any]:
    """Return what is sent for ``event``: its redacted fields, time, level and a summary line."""
    fields = redacted(event)
    name = str(fields.pop("event", ""))
    body: dict[str, Any] = {
        "event": name,
        "timestamp": now.astimezone(dt.UTC).isoformat(),
        "level": EVENT_LEVELS.get(name, "info"),
    }
    body.update(fields)
    shown = [f"{key}={fields[key]}" for key in _SUMMARY_FIELDS if fields.get(key) is not None]
    body["text"] = redact_text(" ".join([f"rotator: {name}", *shown]))
    return body


def command_environment(environ: Mapping[str, str], body: Mapping[str, Any]) -> dict[str, str]:
    """Return the command's environment: the daemon's without the key, plus the event's.

    Any variable whose value holds a registered secret is left out too.
    """
    env = {
        name: value
        for name, value in environ.items()
        if name.upper() not in _NOT_PASSED and redact_text(value) == value
    }
    encoded = json.dumps(body, default=str)
    reason = body.get("reason", body.get("error", body.get("problems")))
    env.update(
        {
            "ROTATOR_EVENT": str(body["event"]),
            "ROTATOR_EVENT_JSON": encoded,
            "ROTATOR_TIME": str(body["timestamp"]),
            "ROTATOR_LEVEL": str(body["level"]),
            "ROTATOR_ACCOUNT": "" if body.get("account") is None else str(body["account"]),
            "ROTATOR_REASON": "" if reason is None else str(reason),
            "ROTATOR_TEXT": str(body["text"]),
        }
    )
    return env


def webhook_label(url: str) -> str:
    """Return the part of a webhook URL that may be logged (no path, query or password)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


class _Outbox:
    """A bounded first-in first-out queue that can be closed."""

    def __init__(self, size: int) -> None:
        self._items: collections.deque[dict[str, Any]] = collections.deque()
        self._size = size
        self._closed = False
        self._changed = threading.Condition()

    def put(self, item: dict[str, Any]) -> bool:
        """Add ``item``; False when the outbox is full or closed."""
        with self._changed:
            if self._closed or len(self._items) >= self._size:
                return False
            self._items.append(item)
            self._changed.notify()
            return True

    def get(self) -> dict[str, Any] | None:
        """Return the next item, waiting for one; None once closed and empty."""
        with self._changed:
            while not self._items and not self._closed:
                self._changed.wait()
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        """Take no more items; ``get`` returns what is left, then None."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)


class _Destination:
    """One place events go to: its outbox, its thread and how it delivers."""

    def __init__(self, name: str, label: str, deliver: Callable[[dict[str, Any]], None]) -> None:
        self.name = name
        self.label = label
        self.deliver = deliver
        self.outbox: _Outbox | None = None
        self.thread: threading.Thread | None = None
        self.dropped = 0  # dropped since the outbox was last found full, the first one logged
        self.lock = threading.Lock()

    def drop(self, name: str) -> None:
        """Count an event the full outbox refused; log only the first of a run of them."""
        with self.lock:
            self.dropped += 1
            first = self.dropped == 1
        if first:
            emit(
                "notify.dropped",
                to=self.name,
                notification=name,
                count=1,
                reason="the outbox is full (the receiver is slow or down); "
                "more are counted until it has room",
            )

    def report_drops(self, reason: str, extra: int = 0) -> None:
        """Log how many were dropped since the first one logged (plus ``extra``), if any."""
        with self.lock:
            count, self.dropped = max(self.dropped - 1, 0) + extra, 0
        if count:
            emit("notify.dropped", to=self.name, count=count, reason=reason)


class Notifier:
    """Deliver the configured events to ``notify.command`` and ``notify.webhook``."""

    def __init__(
        self,
        settings: NotifySection,
        *,
        environ: Mapping[str, str] | None = None,
        backoff: float = BACKOFF_INITIAL,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self._environ = dict(os.environ if environ is None else environ)
        self._backoff = backoff
        self._clock = clock
        self._abort = threading.Event()  # set when closing gives up on what is left
        self._wanted = frozenset(settings.events)
        self._destinations: list[_Destination] = []
        if settings.command is not None:
            label = os.path.basename(settings.command[0])
            self._destinations.append(_Destination("command", label, self._run_command))
        if settings.webhook is not None:
            label = webhook_label(settings.webhook)
            self._destinations.append(_Destination("webhook", label, self._post))

    @property
    def enabled(self) -> bool:
        """Tell whether any destination is configured."""
        return bool(self._destinations)

    def start(self) -> None:
        """Start one delivery thread per destination."""
        for destination in self._destinations:
            destination.outbox = _Outbox(self.settings.queue)
            destination.thread = threading.Thread(
                target=self._work, args=(destination,), name=f"notify-{destination.name}"
            )
            destination.thread.daemon = True  # close() joins it; a hung command cannot block exit
            destination.thread.start()

    def wants(self, name: str) -> bool:
        """Tell whether events called ``name`` are sent (never the notifier's own)."""
        if name.startswith("notify."):
            return False
        return "*" in self._wanted or name in self._wanted

    def observe(self, event: Mapping[str, object]) -> None:
        """Queue ``event`` for every destination if it is wanted (a log listener: never blocks)."""
        name = str(event.get("event", ""))
        if not self.wants(name):
            return
        body = payload(event, self._clock())
        for destination in self._destinations:
            if destination.outbox is None:
                continue
            if not destination.outbox.put(body):
                destination.drop(name)
            elif destination.dropped:
                destination.report_drops("dropped while the outbox was full")

    def close(self, timeout: float) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then drop the rest."""
        for destination in self._destinations:
            if destination.outbox is not None:
                destination.outbox.close()
        deadline = time.monotonic() + timeout
        for destination in self._destinations:
            if destination.thread is not None:
                destination.thread.join(max(0.0, deadline - time.monotonic()))
        self._abort.set()
        for destination in self._destinations:
            destination.report_drops("dropped while the outbox was full")
            left = len(destination.outbox) if destination.outbox is not None else 0
            busy = destination.thread is not None and destination.thread.is_alive()
            # One still being tried when time ran out counts as dropped too.
            destination.report_drops("not delivered before shutdown", left + int(busy))

    # -- delivery (in the destination's thread) --------------------------------------------

    def _work(self, destination: _Destination) -> None:
        assert destination.outbox is not None
        while (body := destination.outbox.get()) is not None:
            if self._abort.is_set():
                return
            self._deliver(destination, body)

    def _deliver(self, destination: _Destination, body: dict[str, Any]) -> None:
        delay = self._backoff
        for attempt in range(1, self.settings.attempts + 1):
            # What both outcomes of a delivery log: where it went, what, which attempt.
            fields = {
                "to": destination.name,
                "target": destination.label,
                "notification": body["event"],
                "attempt": attempt,
            }
            try:
                destination.deliver(body)
            except NotifyError as exc:
                last = attempt == self.settings.attempts or not exc.retry
                retry_in_s = None if last else delay
                emit("notify.failed", **fields, error=redact_text(str(exc)), retry_in_s=retry_in_s)
                if last or self._abort.wait(delay):
                    return
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            emit("notify.sent", **fields)
            return

    def _run_command(self, body: dict[str, Any]) -> None:
        command = self.settings.command
        assert command is not None
        try:
            done = subprocess.run(  # noqa: S603 - the operator's own command, no shell
                list(command),
                input=json.dumps(body, default=str).encode(),
                env=command_environment(self._environ, body),
                capture_output=True,
                timeout=self.settings.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise NotifyError(f"the command ran longer than {self.settings.timeout:g}s") from None
        except OSError as exc:
            raise NotifyError(f"the command cannot be run: {exc.strerror or exc}") from None
        if done.returncode != 0:
            said = done.stderr.decode("utf-8", "replace").strip().splitlines()
            tail = f": {said[-1][:200]}" if said else ""
            raise NotifyError(f"the command exited with {done.returncode}{tail}")

    def _post(self, body: dict[str, Any]) -> None:
        url = self.settings.webhook
        assert url is not None
        request = urllib.request.Request(  # noqa: S310 - https, or http to a loopback host only
            url,
            data=json.dumps(body, default=str).encode(),
            headers={"Content-Type": "application/json", "User-Agent": f"rotator/{__version__}"},
            method="POST",
        )
        try:
            with _OPENER.open(request, timeout=self.settings.timeout) as answer:
                answer.read(65536)
        except urllib.error.HTTPError as exc:
            exc.close()
            # 408 and 429 say "later"; other 4xx will not change by sending it again.
            retry = exc.code >= 500 or exc.code in (408, 429)
            raise NotifyError(f"the webhook answered HTTP {exc.code}", retry=retry) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NotifyError(f"the webhook could not be reached: {reason}") from None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: one could send the event to a plain-http or other host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs


_OPENER = urllib.request.build_opener(_NoRedirects())


def start_notifier(settings: NotifySection, environ: Mapping[str, str]) -> Notifier | None:
    """Start a notifier listening to log events; None when ``[notify]`` names no destination."""
    notifier = Notifier(settings, environ=environ)
    if not notifier.enabled:
        return None
    notifier.start()
    add_listener(notifier.observe)
    return notifier


def stop_notifier(notifier: Notifier | None, timeout: float = DRAIN_SECONDS) -> None:
    """Stop listening, deliver what is queued for up to ``timeout`` seconds, then drop the rest."""
    if notifier is not None:
        remove_listener(notifier.observe)
        notifier.close(timeout)
