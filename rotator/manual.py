"""Control by hand: pause, resume, skip, exclude, include and rotate now.

Each action works two ways: on the running daemon's own parts (its pause board, its
catalogs), when a command reaches it through the control socket, or on the state
directly when no daemon runs. ``handle`` is the daemon's side of the control socket.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from rotator.catalog import Catalog, natural_key
from rotator.clock import utc_now
from rotator.config import AccountEntry, Settings
from rotator.control import Answer, Request, answer
from rotator.durations import format_duration
from rotator.errors import ConfigError, RotatorError
from rotator.logs import emit
from rotator.pauses import PauseBoard
from rotator.planner import Position, advance, next_image
from rotator.rotation import RotationResult
from rotator.state import Pause, PauseScope, StateStore

MANUAL = "manual"
PAUSED_BY_HAND = "paused by hand"
UNTIL_RESUMED = 100 * 365 * 86400.0  # a pause without --for lasts until `rotator resume`


# -- which entries, which image ---------------------------------------------------------------


def entries_of(accounts: Sequence[AccountEntry], account: str | None) -> list[AccountEntry]:
    """Return the entries of ``account`` (all when None); ConfigError when there is none."""
    found = [entry for entry in accounts if account in (None, entry.account)]
    if not found:
        raise ConfigError(f"--account: no [[accounts]] entry has account {account!r}")
    return found


def image_path(text: str, cwd: Path) -> str:
    """Return ``--image`` as the daemon should see it: absolute if it names a file from ``cwd``."""
    path = Path(text).expanduser()
    if path.is_absolute():
        return str(path)
    if (cwd / path).exists():
        return str((cwd / path).resolve())
    return text  # relative to the entry's folder (as `status` shows images)


def relative_image(folder: Path, image: str) -> str | None:
    """Return ``image`` relative to ``folder``, or None when it is not inside it."""
    path = Path(image)
    if path.is_absolute():
        for base in (folder, folder.resolve()):
            for candidate in (path, path.resolve()):
                if candidate.is_relative_to(base) and candidate != base:
                    return candidate.relative_to(base).as_posix()
        return None
    relative = PurePosixPath(path.as_posix())
    if ".." in relative.parts or not relative.parts or relative.as_posix() == ".":
        return None
    return relative.as_posix()


def entry_for_image(entries: Sequence[AccountEntry], image: str) -> tuple[AccountEntry, str]:
    """Return the entry whose folder holds ``image``, and its path relative to that folder."""
    for entry in entries:
        relative = relative_image(entry.folder, image)
        if relative is not None and (
            Path(image).is_absolute() or (entry.folder / relative).exists() or len(entries) == 1
        ):
            return entry, relative
    raise ConfigError(f"--image: {image} is not inside the folder of any chosen entry")


# -- pause and resume -------------------------------------------------------------------------


def _scope(account: str | None) -> PauseScope:
    return "key" if account is None else "account"


def _who(account: str | None) -> str:
    return "all accounts" if account is None else account


def _until_text(seconds: float | None) -> str:
    return "until resumed" if seconds is None else f"for {format_duration(seconds)}"


def pause_offline(state: StateStore, account: str | None, seconds: float | None) -> str:
    """Pause writes in the state (the daemon takes it up when it starts); return what was done."""
    now = utc_now()
    until = now + dt.timedelta(seconds=UNTIL_RESUMED if seconds is None else seconds)
    pause = Pause(
        scope=_scope(account),
        account=account,
        kind=MANUAL,
        reason=PAUSED_BY_HAND,
        until=until,
        level=0,
        started=now,
    )
    state.set_pause(pause, now=now)
    return f"paused {_who(account)} {_until_text(seconds)}"


def pause_live(pauses: PauseBoard, account: str | None, seconds: float | None) -> str:
    """Pause writes now in the running daemon; rotations due meanwhile wait."""
    pauses.pause(
        scope=_scope(account),
        account=account,
        kind="manual",
        reason=PAUSED_BY_HAND,
        seconds=UNTIL_RESUMED if seconds is None else seconds,
    )
    return f"paused {_who(account)} {_until_text(seconds)}"


def resume_offline(state: StateStore, account: str | None) -> list[str]:
    """End the stored pauses (of one account, or all); return whose pauses ended."""
    ended = []
    for pause in state.pauses():
        if account is not None and pause.account != account:
            continue
        state.clear_pause(scope=pause.scope, account=pause.account)
        ended.append(_who(pause.account if pause.scope == "account" else None))
    return ended


async def resume_live(pauses: PauseBoard, state: StateStore, account: str | None) -> list[str]:
    """End the daemon's pauses now and reset their doubling; the config is not read again."""
    ended = []
    for pause in pauses.all():
        if account is not None and pause.account != account:
            continue
        if await pauses.end(pause.scope, pause.account, "resumed by hand"):
            ended.append(_who(pause.account))
    # Pauses in the state the daemon does not hold (written by another version) end too.
    ended += [who for who in resume_offline(state, account) if who not in ended]
    pauses.forget_levels(account)
    return ended


def resumed_message(ended: Sequence[str]) -> str:
    """Return the line ``resume`` prints."""
    return "ended the pause of " + ", ".join(ended) if ended else "no pause to end"


# -- skip, exclude, include ------------------------------------------------------------------


def skip(state: StateStore, entry: AccountEntry, catalog: Catalog) -> str:
    """Count the image the next rotation would send as shown, without sending it; return it."""
    if entry.order == "random":
        raise RotatorError(
            f"{entry.account}: order = 'random' picks anew each time: there is no next image"
        )
    refused = state.refused_hashes()
    excluded = {image for _, image in state.excluded_images(entry.entry_id)}
    names = [
        image.relative
        for image in catalog.usable()
        if image.verdict.sha256 not in refused and image.relative not in excluded
    ]
    saved = state.entry(entry.entry_id)
    position = Position(last_image=saved.last_image, shown_in_cycle=saved.shown_in_cycle)
    rng = random.Random()  # noqa: S311 - picking images is not cryptography
    name = next_image(entry.order, names, position, rng, sort_key=natural_key)
    if name is None:
        raise RotatorError(f"{entry.account}: no usable image in {entry.folder} to skip")
    after = advance(entry.order, [image.relative for image in catalog.usable()], position, name)
    state.set_position(
        entry_id=entry.entry_id,
        account=entry.account,
        last_image=name,
        shown_in_cycle=after.shown_in_cycle,
    )
    return name


def exclude(state: StateStore, entry: AccountEntry, image: str) -> str:
    """Keep ``image`` from being picked for ``entry`` until included again."""
    added = state.exclude_image(entry_id=entry.entry_id, image=image, now=utc_now())
    done = f"{entry.account}: {image} {'excluded' if added else 'was already excluded'}"
    return done + "\n" + _still_excluded(state, entry)


def include(state: StateStore, entry: AccountEntry, image: str) -> str:
    """Let ``image`` be picked again for ``entry``."""
    removed = state.include_image(entry_id=entry.entry_id, image=image)
    if removed:
        return f"{entry.account}: {image} included again\n" + _still_excluded(state, entry)
    raise RotatorError(f"{entry.account}: {image} is not excluded; {_still_excluded(state, entry)}")


def _still_excluded(state: StateStore, entry: AccountEntry) -> str:
    images = [image for _, image in state.excluded_images(entry.entry_id)]
    where = f"{entry.account} ({entry.folder})"
    return f"excluded for {where}: {', '.join(images)}" if images else f"none excluded for {where}"


def result_line(result: RotationResult) -> str:
    """Return one line for a rotation's result (``alice: uploaded a.png``)."""
    return (
        f"{result.account}: {result.kind}"
        + (f" {result.image}" if result.image else "")
        + (f" ({result.reason})" if result.reason and not result.ok else "")
    )


# -- the daemon's side of the control socket --------------------------------------------------


class LiveDaemon(Protocol):
    """What the control commands need of the running daemon."""

    state: StateStore

    @property
    def settings(self) -> Settings:
        """Return the settings in force."""

    @property
    def pauses(self) -> PauseBoard:
        """Return the daemon's pause board."""

    def catalog_of(self, entry_id: str) -> Catalog | None:
        """Return the catalog of an entry in force."""

    def is_busy(self, entry_id: str) -> bool:
        """Tell whether a rotation of the entry is running."""

    async def rotate_by_hand(self, entry_id: str, image: str | None) -> RotationResult | None:
        """Rotate the entry now (``image`` relative to its folder); None when it failed."""


async def handle(daemon: LiveDaemon, request: Request) -> Answer:
    """Carry out one control request on the running daemon; log what was asked and answered."""
    fields = {name: request.get(name) for name in ("account", "image", "seconds")}
    try:
        reply = await _handle(daemon, request)
    except RotatorError as exc:
        code = 2 if isinstance(exc, ConfigError) else 1
        emit("control.command", command=request["command"], **fields, exit=code, answer=str(exc))
        raise
    emit(
        "control.command",
        command=request["command"],
        **fields,
        exit=reply["exit"],
        answer=reply["message"],
    )
    return reply


async def _handle(daemon: LiveDaemon, request: Request) -> Answer:
    command = request["command"]
    account = _text(request, "account")
    image = _text(request, "image")
    if command == "ping":
        return answer(0, "pong")
    if command == "resume":
        if account is not None:
            _known_account(daemon, account)
        ended = await resume_live(daemon.pauses, daemon.state, account)
        return answer(0, resumed_message(ended), ended=ended)
    if command == "pause":
        if account is not None:
            _known_account(daemon, account)
        seconds = request.get("seconds")
        if seconds is not None and (
            not isinstance(seconds, int | float) or not 0 < seconds <= UNTIL_RESUMED
        ):
            raise ConfigError("--for: must be above zero and at most 100 years")
        return answer(0, pause_live(daemon.pauses, account, seconds))
    if command == "rotate":
        return await _rotate(daemon, account, image)
    if account is None:
        raise ConfigError("--account: required")
    entries = entries_of(daemon.settings.accounts, account)
    if command == "skip":
        lines = []
        for entry in entries:
            catalog = daemon.catalog_of(entry.entry_id)
            if catalog is None:
                continue
            if daemon.is_busy(entry.entry_id):
                raise RotatorError(f"{account}: a rotation is running; skip once it has ended")
            lines.append(f"{account}: skipped {skip(daemon.state, entry, catalog)}")
        return answer(0, "\n".join(lines))
    if command in ("exclude", "include"):
        if image is None:
            raise ConfigError("--image: required")
        entry, relative = entry_for_image(entries, image)
        act = exclude if command == "exclude" else include
        return answer(0, act(daemon.state, entry, relative))
    raise ConfigError(f"unknown command {command!r}")


async def _rotate(daemon: LiveDaemon, account: str | None, image: str | None) -> Answer:
    entries = entries_of(daemon.settings.accounts, account)
    chosen: list[tuple[AccountEntry, str | None]] = []
    if image is None:
        chosen = [(entry, None) for entry in entries]
    else:
        entry, relative = entry_for_image(entries, image)
        catalog = daemon.catalog_of(entry.entry_id)
        if catalog is not None and catalog.get(relative) is None:
            why = dict(catalog.rejected()).get(relative, "not found among the folder's images")
            raise ConfigError(f"--image: {image} cannot be sent: {why}")
        chosen = [(entry, relative)]
    busy = [entry.account for entry, _ in chosen if daemon.is_busy(entry.entry_id)]
    if busy:
        raise RotatorError(f"{', '.join(busy)}: a rotation is running already; try again soon")
    results: list[dict[str, Any]] = []
    lines = []
    for entry, forced in chosen:
        result = await daemon.rotate_by_hand(entry.entry_id, forced)
        if result is None:
            lines.append(f"{entry.account}: skipped (internal error: see the daemon's log)")
            results.append({"account": entry.account, "kind": "skipped", "ok": False})
            continue
        lines.append(result_line(result))
        results.append(
            {
                "account": result.account,
                "kind": result.kind,
                "image": result.image,
                "reason": result.reason,
                "ok": result.ok,
            }
        )
    ok = all(item["ok"] for item in results)
    return answer(0 if ok else 1, "\n".join(lines), results=results)


def _known_account(daemon: LiveDaemon, account: str) -> None:
    accounts = {entry.account for entry in daemon.settings.accounts}
    paused = {pause.account for pause in daemon.pauses.all()}
    if account not in accounts | paused:
        raise ConfigError(f"--account: no [[accounts]] entry has account {account!r}")


def _text(request: Request, name: str) -> str | None:
    value = request.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"--{name}: must be a non-empty string")
    return value
