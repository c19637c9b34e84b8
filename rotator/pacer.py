"""Pace avatar writes: at most N in any span of the window, at most C in flight.

The server counts writes in a fixed window that starts when the first one
*arrives*. We cannot see arrivals, so each write holds its place in our sliding
window from the moment it is sent until ``window`` seconds after its answer came
back (the answer always comes after the server counted the write). Then no span of
``window`` seconds, wherever the server's window starts, sees more than N writes.
Waiters are served in arrival order (``asyncio.Lock`` is FIFO). The due order itself
lives in the daemon's line of due entries (``rotator.entries``): it starts rotations in
due order and only a few at a time, so the few waiting here are the line's head.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable


class WritePacer:
    """Admit writes under a sliding-window limit and a concurrency limit."""

    def __init__(
        self,
        writes: int,
        window: float,
        concurrency: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writes = writes
        self.window = window
        self.concurrency = concurrency
        self._clock = clock
        self._answered: collections.deque[float] = collections.deque()  # answer times
        self._in_flight = 0
        self._admission = asyncio.Lock()
        self._changed = asyncio.Event()

    def wait_time(self) -> float:
        """Return how long until one more write may start (0 when it may start now)."""
        now = self._clock()
        while self._answered and self._answered[0] + self.window <= now:
            self._answered.popleft()
        if self._in_flight >= self.concurrency:
            return float("inf")  # until a write in flight is answered
        if self._in_flight + len(self._answered) < self.writes:
            return 0.0
        if len(self._answered) == 0:
            return float("inf")
        # The oldest answered write leaves the window first.
        return self._answered[0] + self.window - now

    async def acquire(self) -> Place:
        """Wait for a place; return it, to be given back once (more is a no-op).

        Give it back as soon as the write is answered (call it): that moment starts its
        window. A place whose write was never sent goes back with ``Place.unused``.
        """
        async with self._admission:
            while (delay := self.wait_time()) > 0:
                self._changed.clear()
                timeout = None if delay == float("inf") else delay
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout)
            self._in_flight += 1
        return Place(self)

    def _give_back(self, *, sent: bool) -> None:
        self._in_flight -= 1
        if sent:
            self._answered.append(self._clock())
        self._changed.set()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Place]:
        """Hold a place while the block runs; it yields the place, to give back early."""
        release = await self.acquire()
        try:
            yield release
        finally:
            release()

    def reconfigure(self, writes: int, window: float, concurrency: int) -> None:
        """Take new limits (config reload); writes already counted stay counted."""
        self.writes, self.window, self.concurrency = writes, window, concurrency
        self._changed.set()


class Place:
    """One write's place in the pacer: call it when the write is answered."""

    __slots__ = ("_pacer",)

    def __init__(self, pacer: WritePacer) -> None:
        self._pacer: WritePacer | None = pacer

    def __call__(self) -> None:
        """Give the place back as a write sent: it counts in the window from now."""
        self._give_back(sent=True)

    def unused(self) -> None:
        """Give the place back without a write: nothing went out, so nothing is counted."""
        self._give_back(sent=False)

    def _give_back(self, *, sent: bool) -> None:
        pacer, self._pacer = self._pacer, None
        if pacer is not None:
            pacer._give_back(sent=sent)
