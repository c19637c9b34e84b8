"""The parts a daemon runs with, built from the settings in one go as one frozen bundle.

``build_parts`` is the only place that turns ``Settings`` into working parts: the client,
the policy and fit settings, the rotation setup, the pacer, the pause board and the
rotator. A reload builds a new bundle and the daemon swaps it whole; nothing is patched
attribute by attribute. What must outlive a swap is carried over explicitly from the
bundle before (``carried``):

- the pause board: its pauses, their levels, timers and the rotations waiting on them;
- the pacer: the writes counted in its window and those in flight (it takes the new limits);
- the rotator: the writes on the wire (drained at shutdown) and its one-write-per-account
  locks;
- the client, when the key, ``base_url`` and ``timeout`` are unchanged (else a new one;
  the daemon closes the old one once no write uses it: writes in flight finish on it).

The pause board and the rotator read the policy and the rotation setup of the bundle in
force (``in_force``) at each step, so a rotation that waits out a pause across a reload
goes on under the new settings (a new key, new ``credits_per_call``). The catalogs are not
here: ``library.Library`` keeps those whose folder and fit settings did not change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from rotator.answers import find_x_account
from rotator.client import XquikClient
from rotator.config import Settings
from rotator.errors import RotatorError
from rotator.images import FitSettings
from rotator.keys import ApiKey
from rotator.logs import add_secret, emit
from rotator.pacer import WritePacer
from rotator.pauses import PauseBoard
from rotator.policy import PolicySettings
from rotator.rotation import RotationSetup, Rotator
from rotator.state import StateStore

T = TypeVar("T")
FITTED_DIR = "fitted"
DRY_RUN_DIR = "dry-run"


@dataclasses.dataclass(frozen=True)
class Parts:
    """One consistent set of the daemon's parts, all from the same ``settings``."""

    settings: Settings
    key: ApiKey | None
    fit: FitSettings
    rotation: RotationSetup  # the client, policy and [api] settings rotations run with
    pacer: WritePacer  # carried across swaps
    pauses: PauseBoard  # carried across swaps
    rotator: Rotator  # carried across swaps

    @property
    def client(self) -> XquikClient | None:
        """Return the client (None: dry run or no key; nothing is ever sent)."""
        return self.rotation.client

    @property
    def policy(self) -> PolicySettings:
        """Return the policy's numbers."""
        return self.rotation.policy


def build_parts(
    settings: Settings,
    key: ApiKey | None,
    *,
    state: StateStore,
    state_dir: Path,
    dry_run: bool,
    in_force: Callable[[], Parts],
    carried: Parts | None = None,
    free_checks: bool = False,
) -> Parts:
    """Build the parts for ``settings``, carrying the live ones of ``carried`` (a reload).

    ``in_force`` returns the bundle the daemon runs with at that moment. ``free_checks``:
    a pause due to end asks the server first, with reads that cost no credits (the
    daemon's pauses; ``rotator rotate`` reports pauses instead of waiting). Only making a
    new client can fail (``RotatorError``), and it happens before anything carried is touched.
    """
    client = None if dry_run or key is None else _client_for(settings, key, carried)
    rotation = RotationSetup(
        client=client,
        policy=policy_settings(settings),
        api=settings.api,
        credits_per_call=settings.api.credits_per_call,
    )
    limits = settings.rate_limit
    if carried is None:
        pacer = WritePacer(limits.writes, limits.window, limits.concurrency)
        pauses = PauseBoard(
            state,
            lambda: in_force().policy,
            check_credits=(lambda: credits_available(in_force())) if free_checks else None,
            check_account=(
                (lambda account: account_healthy(in_force(), account)) if free_checks else None
            ),
        )
        rotator = Rotator(
            state=state,
            pacer=pacer,
            pauses=pauses,
            setup=lambda: in_force().rotation,
            fitted_dir=state_dir / FITTED_DIR,
        )
    else:
        pacer, pauses, rotator = carried.pacer, carried.pauses, carried.rotator
        pacer.reconfigure(limits.writes, limits.window, limits.concurrency)
    return Parts(settings, key, fit_settings(settings), rotation, pacer, pauses, rotator)


async def credits_available(parts: Parts) -> bool | None:
    """Tell whether the balance covers a write (free ``GET /credits``); None: unknown."""
    balance = await _free_read(
        parts,
        XquikClient.credits_balance,
        lambda error: emit("credits.check_failed", error=error),
    )
    if balance is None:
        return None
    needed = parts.rotation.credits_per_call
    emit("credits.checked", balance=balance, needed=needed)
    return balance >= needed


async def account_healthy(parts: Parts, account: str) -> bool | None:
    """Tell whether an X account is connected and usable (free ``GET /x/accounts``)."""

    def failed(error: str) -> None:
        emit("accounts.check_failed", error=error)

    accounts = await _free_read(parts, XquikClient.x_accounts, failed)
    known = None if accounts is None else find_x_account(accounts, account)
    return None if accounts is None else known is not None and known.usable


async def _free_read(
    parts: Parts,
    read: Callable[[XquikClient], Awaitable[T]],
    failed: Callable[[str], None],
) -> T | None:
    """Return what a free read answers; None when dry (no client) or it failed (``failed``)."""
    if parts.client is None:
        return None
    try:
        return await read(parts.client)
    except RotatorError as exc:
        failed(str(exc))
        return None


def _client_for(settings: Settings, key: ApiKey, carried: Parts | None) -> XquikClient:
    """Return the carried client if nothing it was made from changed, else a new one."""
    if carried is not None and carried.client is not None and carried.key is not None:
        before = carried.settings.api
        if key.reveal() == carried.key.reveal() and (before.base_url, before.timeout) == (
            settings.api.base_url,
            settings.api.timeout,
        ):
            return carried.client
    return open_client(settings, key)


def open_client(settings: Settings, key: ApiKey) -> XquikClient:
    """Return a new client for ``[api]`` and the key (the key is redacted from logs first)."""
    add_secret(key.reveal())
    return XquikClient(settings.api.base_url, key.reveal(), timeout=settings.api.timeout)


def policy_settings(settings: Settings) -> PolicySettings:
    """Return the policy's numbers from ``[retry]`` and ``[pause]`` (``pause.max`` is pause_max)."""
    retry, pause = settings.retry, settings.pause
    return PolicySettings(
        retry_initial=retry.initial,
        retry_max=retry.max,
        attempts=retry.attempts,
        **{f"pause_{name}": getattr(pause, name) for name in ("credits", "account", "auth", "max")},
    )


def fit_settings(settings: Settings) -> FitSettings:
    """Return the image fitting settings: the ``[images]`` keys of the same names."""
    images = settings.images
    return FitSettings(
        **{field.name: getattr(images, field.name) for field in dataclasses.fields(FitSettings)}
    )


def state_dir_for(settings: Settings, *, dry_run: bool) -> Path:
    """Return the state directory; a dry run keeps its own, so it never moves real positions."""
    return settings.state_dir / DRY_RUN_DIR if dry_run else settings.state_dir
