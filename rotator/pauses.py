"""Pauses of the whole key or of one account, kept in the state and ended on time.

A pause is set by the policy (rate limits, billing, a refused key, an account
that needs attention). Rotations that meet a pause wait for it to end and then go
on; nothing is written meanwhile. Each pause logs ``pause.started`` once and
``pause.ended`` once. When a pause is due to end, a check that costs no credits may
keep it going instead: the free ``GET /credits`` for billing pauses, the free
``GET /x/accounts`` for account pauses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable

from rotator.advice import next_step
from rotator.clock import utc_now
from rotator.logs import emit
from rotator.policy import PauseKind, PolicySettings, doubling
from rotator.state import Pause, PauseScope, StateStore

CreditsCheck = Callable[[], Awaitable[bool | None]]
AccountCheck = Callable[[str], Awaitable[bool | None]]
RETRY_FAILED_CHECK = 30.0  # seconds before a pause whose end could not be handled is tried again
_KINDS: frozenset[str] = frozenset(
    {"rate_limit", "x_rate_limited", "daily", "account", "credits", "auth", "manual"}
)


class PauseBoard:
    """The pauses in force, their persistence, and the tasks that end them."""

    def __init__(
        self,
        state: StateStore,
        settings: PolicySettings | Callable[[], PolicySettings],
        *,
        check_credits: CreditsCheck | None = None,
        check_account: AccountCheck | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._state = state
        # A callable is read afresh at each use: the daemon's reload swaps what it returns.
        self._settings = settings if callable(settings) else lambda: settings
        self._check_credits = check_credits
        self._check_account = check_account
        self._clock = clock
        self._pauses: dict[tuple[PauseScope, str | None], Pause] = {}
        self._levels: dict[tuple[str, str | None, str], int] = {}
        self._timers: dict[tuple[PauseScope, str | None], asyncio.Task[None]] = {}
        self._changed = asyncio.Condition()

    # -- reading -------------------------------------------------------------------

    @property
    def settings(self) -> PolicySettings:
        """Return the policy settings in force."""
        return self._settings()

    def active(self, account: str) -> Pause | None:
        """Return the pause that holds writes for ``account`` (the key's first)."""
        return self._pauses.get(("key", None)) or self._pauses.get(("account", account))

    def current(self, scope: PauseScope, account: str | None) -> Pause | None:
        """Return the pause in force for exactly this scope (and account), if any."""
        return self._pauses.get((scope, account if scope == "account" else None))

    def all(self) -> list[Pause]:
        """Return every pause in force."""
        return list(self._pauses.values())

    def level_for(self, scope: PauseScope, account: str | None, kind: str) -> int:
        """Return how many times this pause came back without a success in between."""
        return self._levels.get((scope, account if scope == "account" else None, kind), 0)

    # -- changing ------------------------------------------------------------------

    def restore(self) -> None:
        """Take up the pauses kept in the state (a restart does not end them early)."""
        for pause in self._state.pauses():
            if pause.kind not in _KINDS:
                continue
            self._levels[(pause.scope, pause.account, pause.kind)] = pause.level + 1
            self._pauses[(pause.scope, pause.account)] = pause
            self._arm(pause)

    def pause(
        self,
        *,
        scope: PauseScope,
        account: str | None,
        kind: PauseKind,
        reason: str,
        seconds: float,
    ) -> Pause:
        """Pause writes of the key or of one account for ``seconds`` (extend, never shorten)."""
        now = self._clock()
        account = account if scope == "account" else None
        until = now + dt.timedelta(seconds=max(0.0, seconds))
        current = self._pauses.get((scope, account))
        if current is not None and current.until >= until:
            return current
        if current is not None and current.kind == kind:
            # Writes in flight together meet the same pause: extend it, do not double it.
            extended = dataclasses.replace(current, until=until)
            self._store(extended)
            self._arm(extended)
            return extended
        pause = Pause(
            scope=scope,
            account=account,
            kind=kind,
            reason=reason,
            until=until,
            level=self.level_for(scope, account, kind),
            started=current.started if current is not None else now,
        )
        self._store(pause)
        self._levels[(scope, account, kind)] = pause.level + 1
        if current is None:
            emit(
                "pause.started",
                scope=scope,
                account=account,
                reason=reason,
                kind=kind,
                until=until.isoformat(),
                seconds=round(seconds, 3),
                next_step=next_step(kind, account),
            )
        self._arm(pause)
        return pause

    def succeeded(self, account: str) -> None:
        """Forget pause levels after a successful write (the trouble has passed)."""
        for key in [k for k in self._levels if k[0] == "key" or k[1] == account]:
            del self._levels[key]

    def forget_levels(self, account: str | None) -> None:
        """Forget pause levels of the key and ``account`` (of every account when None)."""
        if account is None:
            self._levels.clear()
        else:
            self.succeeded(account)

    async def end(self, scope: PauseScope, account: str | None, why: str) -> bool:
        """End a pause now (``rotator resume``, a new key); False when there was none."""
        account = account if scope == "account" else None
        pause = self._pauses.pop((scope, account), None)
        self._state.clear_pause(scope=scope, account=account)
        timer = self._timers.pop((scope, account), None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        if pause is None:
            return False
        emit(
            "pause.ended",
            scope=scope,
            account=account,
            reason=pause.reason,
            kind=pause.kind,
            until=pause.until.isoformat(),
            why=why,
        )
        async with self._changed:
            self._changed.notify_all()
        return True

    async def sync(self) -> None:
        """End the pauses that were cleared in the state by ``rotator resume``."""
        kept = {
            (row.scope, row.account if row.scope == "account" else None)
            for row in self._state.pauses()
        }
        for scope, account in [key for key in self._pauses if key not in kept]:
            await self.end(scope, account, "resumed by hand")

    async def wait(self, account: str) -> None:
        """Wait until no pause holds writes for ``account``."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.active(account) is None)

    async def close(self) -> None:
        """Stop the timers (the pauses stay in the state for the next start)."""
        timers = list(self._timers.values())
        self._timers.clear()
        for timer in timers:
            timer.cancel()
        for timer in timers:
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    # -- internals -----------------------------------------------------------------

    def _store(self, pause: Pause) -> None:
        self._pauses[(pause.scope, pause.account)] = pause
        self._state.set_pause(pause, now=self._clock())

    def _arm(self, pause: Pause) -> None:
        key = (pause.scope, pause.account)
        old = self._timers.pop(key, None)
        if old is not None and old is not asyncio.current_task():
            old.cancel()
        self._timers[key] = asyncio.get_running_loop().create_task(self._run_out(key))

    async def _run_out(self, key: tuple[PauseScope, str | None]) -> None:
        """Sleep until the pause's end, then end it or, if a free check says so, extend it."""
        while (pause := self._pauses.get(key)) is not None:
            remaining = (pause.until - self._clock()).total_seconds()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            try:
                extension = await self._still_needed(pause)
                if extension is None:
                    await self.end(pause.scope, pause.account, "time is up")
                    return
                level = max(pause.level, self.level_for(pause.scope, pause.account, pause.kind) - 1)
                extended = dataclasses.replace(
                    pause, until=self._clock() + dt.timedelta(seconds=extension), level=level
                )
                self._store(extended)
            except Exception as exc:  # a dead timer would hold the pause forever: try again
                emit("pause.check_failed", scope=pause.scope, account=pause.account, error=str(exc))
                await asyncio.sleep(RETRY_FAILED_CHECK)

    async def _still_needed(self, pause: Pause) -> float | None:
        """Return how much longer a pause must last by a free check, or None to end it."""
        if pause.kind == "credits" and self._check_credits is not None:
            # Only a balance that shows credits ends it: never spend a write to find out.
            return None if await self._check_credits() is True else self.settings.pause_credits
        if pause.kind == "account" and self._check_account is not None and pause.account:
            if await self._check_account(pause.account) is not False:
                return None
            level = self.level_for("account", pause.account, "account")
            self._levels[("account", pause.account, "account")] = level + 1
            return doubling(self.settings.pause_account, level, self.settings.pause_max)
        return None
