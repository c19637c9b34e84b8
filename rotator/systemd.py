"""Tell systemd how the daemon is doing, over the sd_notify datagram protocol.

No dependency: the protocol is one ``AF_UNIX`` ``SOCK_DGRAM`` datagram of newline-separated
``KEY=value`` assignments sent to the socket named in ``$NOTIFY_SOCKET`` (a filesystem path,
or ``@name`` for an abstract socket). Without that variable every call is a no-op returning
False, so the daemon runs the same outside systemd.

The service uses it like this::

    notifier = SystemdNotifier.from_environment()   # also forgets the variables
    ...first scan done, scheduler running...
    notifier.ready("3 accounts, next rotation 12:00 UTC")
    # on SIGHUP
    notifier.reloading()
    ...
    notifier.ready("reloaded")
    # every notifier.watchdog_interval seconds, from the event loop itself
    notifier.watchdog()
    # on the way out
    notifier.stopping()

Sending never raises and never logs: systemd being away must not take the daemon down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, MutableMapping

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def _socket_address(value: str | None) -> str | None:
    """Turn a ``$NOTIFY_SOCKET`` value into an address for ``sendto``, or None if unusable."""
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: the kernel name starts with a NUL byte instead of "@".
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # "vsock:..." (VMs) and relative paths are not for us; stay silent rather than guess.
    return None


def watchdog_interval(
    environ: Mapping[str, str] | None = None, *, pid: int | None = None
) -> float | None:
    """Return how often to send ``WATCHDOG=1`` (half of ``$WATCHDOG_USEC``), in seconds.

    None when systemd set no watchdog, or set one for another process
    (``$WATCHDOG_PID`` present and not ours).
    """
    env = os.environ if environ is None else environ
    try:
        period_usec = int(env.get(WATCHDOG_USEC, ""))
    except ValueError:
        return None
    if period_usec <= 0:
        return None
    owner = env.get(WATCHDOG_PID)
    if owner is not None:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return period_usec / 2 / 1_000_000


def monotonic_usec() -> int:
    """Return ``CLOCK_MONOTONIC`` in microseconds, the clock systemd compares reloads against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class SystemdNotifier:
    """Send sd_notify messages to one socket; a no-op when there is none."""

    def __init__(
        self, notify_socket: str | None, *, watchdog_interval: float | None = None
    ) -> None:
        self._address = _socket_address(notify_socket)
        self._socket: socket.socket | None = None
        self.watchdog_interval = watchdog_interval
        """Seconds between ``WATCHDOG=1`` pings (half the period), or None for no watchdog."""

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None, *, unset_environment: bool = True
    ) -> SystemdNotifier:
        """Build a notifier from ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``/``$WATCHDOG_PID``.

        With ``unset_environment`` (the default) the three variables are removed after reading,
        so a child process cannot talk to systemd on our behalf; read everything you need
        from the returned notifier (``watchdog_interval``) rather than from the environment.
        """
        env = os.environ if environ is None else environ
        notifier = cls(env.get(NOTIFY_SOCKET), watchdog_interval=watchdog_interval(env))
        if unset_environment:
            for name in (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID):
                env.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """Tell whether there is a socket to notify (we run under systemd with Type=notify)."""
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"KEY=value"`` each) as one datagram; return True if it went out.

        Raises ValueError for a malformed field (a programming error); a failed send only
        returns False.
        """
        for field in fields:
            if "=" not in field or "\n" in field:
                raise ValueError(f"not a single KEY=value assignment: {field!r}")
        if self._address is None or not fields:
            return False
        payload = "\n".join(fields).encode()
        try:
            if self._socket is None:
                # Non-blocking: a full receive queue must not stall the event loop.
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(payload, self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Say start-up (or a reload) is complete: ``READY=1``, with an optional status line."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", _status_field(status))

    def reloading(self, now_usec: int | None = None) -> bool:
        """Say a reload has begun: ``RELOADING=1`` and ``MONOTONIC_USEC`` (systemd ≥ 253 wants it).

        ``now_usec`` is ``CLOCK_MONOTONIC`` in microseconds; read from the clock if omitted.
        """
        stamp = monotonic_usec() if now_usec is None else now_usec
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={stamp}")

    def stopping(self) -> bool:
        """Say the daemon is shutting down: ``STOPPING=1``."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl status`` shows: ``STATUS=...``."""
        return self.notify(_status_field(text))

    def watchdog(self) -> bool:
        """Tell the watchdog the event loop is alive: ``WATCHDOG=1``."""
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket; later calls reopen it."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __repr__(self) -> str:
        shown = None if self._address is None else self._address.replace("\0", "@", 1)
        interval = self.watchdog_interval
        return f"SystemdNotifier(notify_socket={shown!r}, watchdog_interval={interval!r})"


def _status_field(text: str) -> str:
    """Make ``STATUS=<text>`` on one line (a newline would start another assignment)."""
    return "STATUS=" + " ".join(text.split())


def notify(*fields: str) -> bool:
    """Send ``fields`` once to ``$NOTIFY_SOCKET`` as it is now; False if unset or not sent."""
    notifier = SystemdNotifier(os.environ.get(NOTIFY_SOCKET))
    try:
        return notifier.notify(*fields)
    finally:
        notifier.close()
