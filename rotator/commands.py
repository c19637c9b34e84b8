"""The commands behind the CLI, one function each, returning the exit code.

``run`` starts the daemon; the others read the config, the image folders and the
state (read-only while a daemon runs) and print a report for people, or JSON. Each
takes plain typed arguments; ``rotator.cli`` parses the command line and calls them.

Why one module at this size: its one job is what each command does and prints. The
commands share one way to load the settings and warn, to find and mask the key, to
read the heartbeat and the state read-only, to ask a running daemon first, and to print
JSON with the key masked; split per command, those helpers would be shared by modules
that otherwise have nothing in common.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from rotator import control, manual
from rotator.advice import (
    INTENDED_KINDS,
    SELF_ENDING_KINDS,
    SHORT_KINDS,
    next_step,
    next_step_for_error,
)
from rotator.answers import find_x_account
from rotator.catalog import (
    Catalog,
    CatalogImage,
    MemoryValidationCache,
    natural_key,
)
from rotator.client import XquikClient
from rotator.clock import utc_now
from rotator.config import (
    AccountEntry,
    Settings,
    choose_state_dir,
    load_settings,
    resolve_config_path,
)
from rotator.cron import calls_per_day, every_due, local_date
from rotator.durations import format_duration, parse_duration
from rotator.errors import (
    ConfigError,
    ImageError,
    MissingKeyError,
    NoStateError,
    RotatorError,
    StateError,
    StateLockedError,
)
from rotator.heartbeat import read_heartbeat
from rotator.images import FitSettings, check_line, fit_image_bytes, set_library_sink
from rotator.keys import NO_KEY, ApiKey, find_api_key
from rotator.library import StateValidationCache, scan_once
from rotator.logs import add_secret, configure, emit, library_warning, redact_text
from rotator.names import escape_name
from rotator.parts import build_parts, fit_settings, state_dir_for
from rotator.planner import Position, advance, next_image
from rotator.rotation import RotationResult
from rotator.scheduling import cron_fire_times
from rotator.service import HEARTBEAT_SECONDS, Daemon
from rotator.state import (
    EntryState,
    Pause,
    StateStore,
    WriteRecord,
    check_state_file,
    copy_state,
    state_exists,
)
from rotator.systemd import SystemdNotifier


def _settings(config: str | None, environ: Mapping[str, str], *, warn: bool = True) -> Settings:
    """Load the settings; warn on stderr of what they ignored (the daemon logs it instead)."""
    settings = load_settings(resolve_config_path(config, environ), environ)
    if warn:
        for warning in settings.env_warnings:
            sys.stderr.write(f"rotator: warning: {warning}\n")
    return settings


def _key(settings: Settings, environ: Mapping[str, str]) -> ApiKey:
    key = find_api_key(settings, environ)
    if key is None:
        raise MissingKeyError(NO_KEY)
    add_secret(key.reveal())
    return key


def _live_heartbeat(
    settings: Settings,
) -> tuple[float, dict[str, object], bool] | None:
    """Return the age, summary and dry-run flag of the freshest heartbeat, if any.

    A dry-run daemon keeps its own state (and heartbeat) under ``<state dir>/dry-run``.
    """
    found = []
    for dry_run in (False, True):
        beat = read_heartbeat(state_dir_for(settings, dry_run=dry_run))
        if beat is not None:
            found.append(((utc_now() - beat[0]).total_seconds(), beat[1], dry_run))
    return min(found, key=lambda item: item[0]) if found else None


_FUTURE_TOLERANCE = 2.0  # seconds a heartbeat may seem ahead (file time rounding)


def _is_fresh(age: float) -> bool:
    # A heartbeat dated in the future proves nothing (the clock went back, or a forgery).
    return -_FUTURE_TOLERANCE <= age <= 3 * HEARTBEAT_SECONDS


def _require_state(settings: Settings) -> Path:
    """Return the state directory, or say plainly that there is none (exit 1)."""
    state_dir = settings.state_dir
    if state_exists(state_dir):
        return state_dir
    message = (
        f"no state in {state_dir}: no daemon has run with this config yet (the state lives in "
        "state.dir, else $STATE_DIRECTORY, else /var/lib/rotator for a config in "
        "/etc/rotator, else in state/ beside the config)"
    )
    if state_exists(state_dir_for(settings, dry_run=True)):
        message += f"; a dry run keeps its own state in {state_dir_for(settings, dry_run=True)}"
    raise NoStateError(message)


def _error_step(last_error: str | None, account: str) -> str | None:
    """Return what to do about an entry's last error (stored as ``code: message``)."""
    if not last_error:
        return None
    return next_step_for_error(last_error.split(":", 1)[0].strip(), account)


def _unknown_account(name: str) -> ConfigError:
    return ConfigError(f"--account: no [[accounts]] entry has account {name!r}")


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(_redacted(data), indent=2, default=str) + "\n")


def _redacted(data: Any) -> Any:
    """Return ``data`` with the key masked in every string (server text may echo it)."""
    if isinstance(data, str):
        return redact_text(data)
    if isinstance(data, dict):
        return {key: _redacted(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_redacted(value) for value in data]
    return data


def _register_key_quietly(settings: Settings, environ: Mapping[str, str]) -> None:
    """Register the key, if one can be found, so that it is masked in what is printed."""
    try:
        key = find_api_key(settings, environ)
    except ConfigError:
        return
    if key is not None:
        add_secret(key.reveal())


# -- run ---------------------------------------------------------------------------------


def run(config: str | None, *, dry_run: bool) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    environ = dict(os.environ)
    settings = _settings(config, environ, warn=False)
    key = None if dry_run else _key(settings, environ)
    os.umask(0o077)  # whatever the daemon creates (state, fitted copies) is for its user only
    configure(settings.log.level, settings.log.format)
    set_library_sink(library_warning)
    if key is not None and key.warning:
        emit("config.warning", message=key.warning)
    for warning in settings.env_warnings:
        emit("config.warning", message=warning)
    notifier = SystemdNotifier.from_environment()
    daemon = Daemon(settings, key, dry_run=dry_run, environ=environ, notifier=notifier)
    return asyncio.run(daemon.run())


# -- rotate --------------------------------------------------------------------------------


def rotate(
    config: str | None, *, account: str | None, image: str | None, dry_run: bool, as_json: bool
) -> int:
    """Rotate now, once, for every entry (or one account's), then exit."""
    environ = dict(os.environ)
    settings = _settings(config, environ)
    entries = manual.entries_of(settings.accounts, account)
    if not dry_run:
        # A running daemon rotates it itself: its state, its pacer, its pauses.
        request = {"command": "rotate", "account": account}
        if image is not None:
            request["image"] = manual.image_path(image, Path.cwd())
        reply = control.ask(settings.state_dir, request)
        if reply is not None:
            return _print_reply(reply, sys.stdout, as_json=as_json)
    key = None if dry_run else _key(settings, environ)
    # A one-shot command: its results go to stdout, its log lines to stderr.
    configure(settings.log.level, settings.log.format, stream=sys.stderr)
    set_library_sink(library_warning)
    with tempfile.TemporaryDirectory(prefix="rotator-dry-run-") as scratch:
        # A dry run works on a copy of the real state: it previews exactly what the next
        # real rotation would send (positions, pauses, refusals) and changes none of it.
        preview = Path(scratch) if dry_run else None
        if preview is not None:
            copy_state(settings.state_dir, preview)
        results = asyncio.run(
            rotate_now(settings, key, entries, image=image, dry_run=dry_run, state_dir=preview)
        )
    if as_json:
        _print_json(
            _redacted(
                [
                    {
                        "account": result.account,
                        "result": result.kind,
                        "image": result.image,
                        "reason": result.reason or None,
                        "ok": result.ok,
                    }
                    for result in results
                ]
            )
        )
    for result in [] if as_json else results:
        sys.stdout.write(redact_text(manual.result_line(result)) + "\n")
    return 0 if all(result.ok for result in results) else 1


async def rotate_now(
    settings: Settings,
    key: ApiKey | None,
    entries: Sequence[AccountEntry],
    *,
    image: str | None,
    dry_run: bool,
    state_dir: Path | None = None,
) -> list[RotationResult]:
    """Rotate ``entries`` once now (``rotator rotate``); pauses are reported, not waited.

    ``state_dir`` overrides where the state is read and written (a dry run's scratch copy).
    """
    state_dir = state_dir or state_dir_for(settings, dry_run=dry_run)
    with StateStore.open(state_dir, lock=True) as state:
        parts = build_parts(
            settings, key, state=state, state_dir=state_dir, dry_run=dry_run, in_force=lambda: parts
        )
        try:
            parts.pauses.restore()
            catalogs = await scan_once(state, [entry.folder for entry in entries], parts.fit)
            chosen: list[tuple[AccountEntry, Catalog, str | None]] = []
            for entry in entries:
                catalog = catalogs[entry.folder]
                forced = _forced_image(catalog.folder, image)
                if image is not None and forced is None:
                    continue
                if forced is not None and catalog.get(forced) is None:
                    reasons = dict(catalog.rejected())
                    why = reasons.get(forced, "not found among the folder's images")
                    raise ConfigError(f"--image: {image} cannot be sent: {why}")
                chosen.append((entry, catalog, forced))
            if not chosen:
                raise ConfigError(f"--image: {image} is not inside the folder of any chosen entry")
            gc.freeze()  # the entries and catalogs loaded above live until the end
            rotations = (
                parts.rotator.rotate(entry, catalog, image=forced, wait_for_pauses=False)
                for entry, catalog, forced in chosen
            )
            return list(await asyncio.gather(*rotations))
        finally:  # also when a bad --image stops it before anything is sent
            await parts.pauses.close()
            if parts.client is not None:
                await parts.client.aclose()


def _forced_image(folder: Path, image: str | None) -> str | None:
    """Return ``image`` relative to ``folder``, or None when it is not inside."""
    if image is None:
        return None
    path = Path(image).expanduser().resolve()
    if not path.is_relative_to(folder):
        return None
    return escape_name(path.relative_to(folder).as_posix())


# -- check ---------------------------------------------------------------------------------


def check(config: str | None, *, online: bool, as_json: bool) -> int:
    """Validate the config and every image; with --online, the key, credits and accounts."""
    environ = dict(os.environ)
    settings = _settings(config, environ)
    report: dict[str, Any] = {"config": str(settings.config_path), "entries": [], "ok": True}
    fits = fit_settings(settings)
    catalogs = _scanned_catalogs(settings)
    for entry in settings.accounts:
        catalog = catalogs[entry.folder]
        files = [_describe_usable(catalog, image, fits) for image in catalog.usable()]
        files += [
            {"path": path, "state": "rejected", "detail": f"rejected: {reason}"}
            for path, reason in catalog.rejected()
        ]
        files.sort(key=lambda item: natural_key(str(item["path"])))
        problems = []
        if not entry.folder.is_dir():
            problems.append(
                "folder is not a folder" if entry.folder.exists() else "folder does not exist"
            )
        if not catalog.usable():
            problems.append("no usable image")
        rejected = len(catalog.rejected())
        if rejected:
            problems.append(f"{rejected} rejected file{'s' if rejected != 1 else ''}")
        report["entries"].append(
            {
                "account": entry.account,
                "folder": escape_name(str(entry.folder)),
                "schedule": entry.schedule.text,
                "order": entry.order,
                "usable": len(catalog.usable()),
                "rejected": rejected,
                "files": files,
                "problems": problems,
            }
        )
        if problems:
            report["ok"] = False
    # Reading the key surfaces an unreadable api.key_file here, not first at `run`.
    offline_key = find_api_key(settings, environ)
    if offline_key is not None:
        add_secret(offline_key.reveal())
    if online:
        key = _key(settings, environ)
        if key.warning:
            report["warnings"] = [key.warning]
        report["online"] = asyncio.run(_check_online(settings, key))
        if report["online"]["problems"]:
            report["ok"] = False
    if as_json:
        _print_json(report)
    else:
        _print_check(_redacted(report))
    return 0 if report["ok"] else 1


def _describe_usable(catalog: Catalog, image: CatalogImage, fits: FitSettings) -> dict[str, str]:
    """Return a usable file's line; one that needs fitting is fitted, to show the result."""
    if not image.verdict.needs_fit:
        return {"path": image.relative, "state": "ok", "detail": check_line(image.verdict)}
    try:
        fitted = fit_image_bytes(catalog.read_image(image), fits)
    except ImageError as exc:
        return {"path": image.relative, "state": "rejected", "detail": f"rejected: {exc}"}
    return {"path": image.relative, "state": "fitted", "detail": check_line(fitted)}


def _scanned_catalogs(settings: Settings) -> dict[Path, Catalog]:
    """Scan each configured folder once (entries may share one); nothing is cached on disk."""
    fits = fit_settings(settings)
    catalogs: dict[Path, Catalog] = {}
    for entry in settings.accounts:
        if entry.folder not in catalogs:
            catalog = Catalog(entry.folder, fits, MemoryValidationCache(), _quiet)
            catalog.apply_scan(catalog.scan())
            catalogs[entry.folder] = catalog
    return catalogs


def _quiet(event: str, **fields: object) -> None:
    """Swallow catalog events: ``check`` prints its own report."""
    del event, fields


def _print_check(report: dict[str, Any]) -> None:
    out = sys.stdout
    out.write(f"config: {report['config']} (valid)\n")
    for entry in report["entries"]:
        out.write(
            f"\n{entry['account']}  {entry['folder']}  {entry['schedule']}  {entry['order']}\n"
        )
        for item in entry["files"]:
            detail = str(item["detail"]).split(": ", 1)[-1]
            out.write(f"  {item['state']:<9} {item['path']}  {detail}\n")
        summary = f"  {entry['usable']} usable, {entry['rejected']} rejected"
        if entry["problems"]:
            summary += "  -- problem: " + ", ".join(entry["problems"])
        out.write(summary + "\n")
    online = report.get("online")
    if online:
        out.write("\nonline:\n")
        for line in online["lines"]:
            out.write(f"  {line}\n")
        for problem in online["problems"]:
            out.write(f"  problem: {problem}\n")
    for warning in report.get("warnings", []):
        out.write(f"\nwarning: {warning}\n")
    out.write("\nall good\n" if report["ok"] else "\nproblems found\n")


async def _check_online(settings: Settings, key: ApiKey) -> dict[str, Any]:
    lines: list[str] = []
    problems: list[str] = []
    result: dict[str, Any] = {"lines": lines, "problems": problems}
    async with XquikClient(
        settings.api.base_url, key.reveal(), timeout=settings.api.timeout
    ) as client:
        try:
            account = await client.account_info()
        except RotatorError as exc:
            # Only a 401/403 says anything about the key; a DNS or TLS failure does not.
            status = getattr(exc, "status", None)
            what = "the API key was not accepted" if status in {401, 403} else "the API failed"
            problems.append(f"{what}: {exc}" if status else f"the API could not be reached: {exc}")
            return result
        plan = account.get("plan")
        lines.append(f"key accepted (from {key.source}); plan: {plan}")
        result["plan"] = plan
        if plan not in (None, "active"):
            problems.append(f"the plan is {plan!r}: writes need an active subscription")
        try:
            balance = await client.credits_balance()
            per_call = settings.api.credits_per_call
            lines.append(f"credits: {balance} (about {balance // max(per_call, 1)} rotations)")
            result["balance"] = balance
            if balance < per_call:
                problems.append(f"credits: {balance} is less than one write ({per_call})")
        except RotatorError as exc:
            problems.append(f"credits could not be read: {exc}")
        try:
            connected = await client.x_accounts()
        except RotatorError as exc:
            problems.append(f"connected accounts could not be read: {exc}")
            return result
        result["accounts"] = {}
        for name in sorted({entry.account for entry in settings.accounts}):
            known = find_x_account(connected, name)
            if known is None:
                problems.append(f"{name}: not connected to this Xquik account")
                result["accounts"][name] = None
                continue
            result["accounts"][name] = {"status": known.status, "health": known.health}
            lines.append(f"{name}: connected, status {known.status}, health {known.health}")
            if not known.usable:
                problems.append(f"{name}: {known.status}/{known.health}; see the Xquik dashboard")
    return result


# -- plan ----------------------------------------------------------------------------------


def plan(config: str | None, *, count: int, start: dt.datetime | None, as_json: bool) -> int:
    """Print the next rotations of every entry after ``--from`` (default now) and their cost."""
    environ = dict(os.environ)
    settings = _settings(config, environ)
    start = start or utc_now()
    saved = _read_entries(settings)
    catalogs = _scanned_catalogs(settings)
    entries: list[dict[str, Any]] = []
    per_day = 0.0
    for entry in settings.accounts:
        names = [image.relative for image in catalogs[entry.folder].usable()]
        state = saved.get(entry.entry_id)
        position = Position(
            last_image=state.last_image if state else None,
            shown_in_cycle=state.shown_in_cycle if state else frozenset(),
        )
        rng = random.Random(0)  # noqa: S311 - a preview, not a promise
        images: list[str | None] = []
        times = _next_times(entry, start, state, count)
        for _ in times:
            image = next_image(entry.order, names, position, rng, sort_key=natural_key)
            images.append(image)
            if image is not None:
                position = advance(entry.order, names, position, image)
        entries.append(
            {
                "account": entry.account,
                "folder": str(entry.folder),
                "schedule": entry.schedule.text,
                "timezone": str(entry.timezone),
                "order": entry.order,
                "usable": len(names),
                "jitter": entry.jitter,
                "instants": [when.astimezone(entry.timezone).isoformat() for when in times],
                "images": images,
                "calls_per_day": _calls_per_day(entry, start),
            }
        )
        per_day += entries[-1]["calls_per_day"]
    per_call = settings.api.credits_per_call
    report = {
        "from": start.isoformat(),
        "entries": entries,
        "calls_per_day": per_day,
        "calls_per_month": per_day * 30,
        "credits_per_call": per_call,
        "credits_per_month": per_day * 30 * per_call,
    }
    if as_json:
        _print_json(report)
    else:
        _print_plan(report)
    return 0


def _print_plan(report: dict[str, Any]) -> None:
    out = sys.stdout
    for item in report["entries"]:
        out.write(
            f"{item['account']}  {item['folder']}  {item['schedule']}  {item['order']}"
            f"  ({item['usable']} usable images)\n"
        )
        zone = ZoneInfo(item["timezone"])
        for when, image in zip(item["instants"], item["images"], strict=True):
            label = image or "(no usable image)"
            if image is not None and item["order"] != "sequential":
                label += "  (random pick)"
            local = dt.datetime.fromisoformat(when).astimezone(zone)
            out.write(f"  {local:%Y-%m-%d %H:%M:%S %Z}  {label}\n")
        if item["jitter"]:
            out.write(f"  (each up to {format_duration(item['jitter'])} later: jitter)\n")
        out.write(f"  {item['calls_per_day']:.1f} calls/day\n\n")
    per_day = report["calls_per_day"]
    out.write(
        f"total: {per_day:.1f} calls/day, {report['calls_per_month']:.0f} calls/month, "
        f"{report['credits_per_month']:,.0f} credits/month at {report['credits_per_call']} "
        "credits per call\n"
    )


def _read_entries(settings: Settings) -> dict[str, EntryState]:
    # No state yet: nothing has run. A state that cannot be read is an error (exit 2).
    if not state_exists(settings.state_dir):
        return {}
    with StateStore.open(settings.state_dir, lock=False, readonly=True) as state:
        return {row.entry_id: row for row in state.entries()}


def _next_times(
    entry: AccountEntry, now: dt.datetime, saved: EntryState | None, count: int
) -> list[dt.datetime]:
    """Return an entry's next ``count`` rotation times after ``now``, as the daemon keeps them."""
    every = entry.schedule.every
    if every is None:
        return cron_fire_times(entry.schedule, entry.timezone, now, count)
    # "every D": D after the last rotation's end, a success or a give-up (as the daemon).
    first = every_due(
        every, now, saved.last_success if saved else None, saved.last_fire if saved else None
    )
    times: list[dt.datetime] = []
    for n in range(count):
        try:
            when = first + dt.timedelta(seconds=every * n)
            when.astimezone(entry.timezone)  # shown in the entry's zone
        except OverflowError:  # beyond the years 1-9999 in UTC or in the zone
            continue
        times.append(when)
    return times


def _calls_per_day(entry: AccountEntry, now: dt.datetime) -> float:
    every, cron = entry.schedule.every, entry.schedule.cron
    if cron is None:
        return 86400.0 / every if every else 0.0
    return calls_per_day(cron, local_date(entry.timezone, now))


# -- status --------------------------------------------------------------------------------


def _write_ledger_lines(out: TextIO, item: dict[str, Any]) -> None:
    """Print what the write ledger says of one entry: an uncertain or a pending write."""
    if item["uncertain"]:
        action = f"; write action {item['last_action_id']}" if item["last_action_id"] else ""
        out.write(
            f"  last write:    uncertain (the server did not confirm it{action}); "
            "that image is not sent again blindly\n"
        )
    if item["pending_action_id"]:
        out.write(f"  write pending: {item['pending_action_id']} (resumed before anything new)\n")


def _ledger(
    state: StateStore, settings: Settings, now: dt.datetime, report: dict[str, Any]
) -> dict[str, WriteRecord | None]:
    """Return each entry's pending write; put the credits spent in 30 days in ``report``."""
    report["credits_spent_30d"] = state.credits_spent(since=now - dt.timedelta(days=30))
    return {entry.entry_id: state.pending_write(entry.entry_id) for entry in settings.accounts}


def _pending_action(record: WriteRecord | None) -> str | None:
    """Return the write action a pending write waits on, or "no answer yet", or None."""
    if record is None:
        return None
    return record.action_id or "no answer yet"


def status(config: str | None, *, as_json: bool) -> int:
    """Print what the state says of each entry: last success, image, next due, pauses."""
    environ = dict(os.environ)
    settings = _settings(config, environ)
    _register_key_quietly(settings, environ)
    now = utc_now()
    state_dir = _require_state(settings)
    report: dict[str, Any] = {"state_dir": str(state_dir), "entries": [], "pauses": []}
    beat = _live_heartbeat(settings)
    running = beat is not None and _is_fresh(beat[0])
    report["daemon"] = "not running"
    next_due: dict[str, Any] = {}
    if beat is not None and running:
        report["daemon"] = "running (dry run)" if beat[2] else "running"
        raw = beat[1].get("next_due")
        next_due = raw if isinstance(raw, dict) and not beat[2] else {}
    # _require_state made sure there is one; a state that cannot be read is an error (exit 2).
    with StateStore.open(state_dir, lock=False, readonly=True) as state:
        rows = {row.entry_id: row for row in state.entries()}
        pauses = [p for p in state.pauses() if p.until > now]
        refused = state.refused_images()
        history = {row.entry_id: row for row in reversed(state.history(limit=500))}
        pending = _ledger(state, settings, now, report)
    # Not sent again until the file changes (its content hash with it).
    report["refused_images"] = [{"path": path, "code": code} for path, code in refused]
    for entry in settings.accounts:
        row = rows.get(entry.entry_id)
        due = next_due.get(entry.entry_id)
        if due is None:
            times = _next_times(entry, now, row, 1)
            due = times[0].isoformat() if times else None
        last = history.get(entry.entry_id)
        report["entries"].append(
            {
                "account": entry.account,
                "folder": escape_name(str(entry.folder)),
                "schedule": entry.schedule.text,
                "last_success": row.last_success.isoformat() if row and row.last_success else None,
                "current_image": row.last_image if row else None,
                "next_due": due,
                "last_error": row.last_error if row else None,
                "next_step": _error_step(row.last_error if row else None, entry.account),
                "last_outcome": last.outcome if last else None,
                "uncertain": bool(row and row.uncertain),
                "last_action_id": last.action_id if last else None,
                "pending_action_id": _pending_action(pending.get(entry.entry_id)),
            }
        )
    for pause in pauses:
        report["pauses"].append(
            {
                "scope": pause.scope,
                "account": pause.account,
                "kind": pause.kind,
                "reason": pause.reason,
                "until": pause.until.isoformat(),
                "next_step": next_step(pause.kind, pause.account),
            }
        )
    if as_json:
        _print_json(report)
    else:
        _print_status(_redacted(report))
    return 0


def relative_time(iso: str | None, now: dt.datetime) -> str:
    """Return ``iso`` with how far it is from ``now``: ``... (in 2h 5m)``, ``... (3m ago)``."""
    if iso is None:
        return "-"
    try:
        when = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    seconds = (when - now).total_seconds()
    # The two largest units are enough to read at a glance ("1d 4h", not "1d4h12m9s").
    parts = re.findall(r"\d+[a-z]+", format_duration(abs(round(seconds))))[:2]
    span = " ".join(parts)
    if abs(seconds) < 1:
        return f"{iso} (now)"
    return f"{iso} (in {span})" if seconds > 0 else f"{iso} ({span} ago)"


def _print_status(report: dict[str, Any]) -> None:
    now = utc_now()
    out = sys.stdout
    out.write(f"daemon: {report['daemon']}  (state: {report['state_dir']})\n")
    for item in report["entries"]:
        out.write(f"\n{item['account']}  {item['folder']}  {item['schedule']}\n")
        last = relative_time(item["last_success"], now) if item["last_success"] else "never"
        out.write(f"  last success:  {last}\n")
        out.write(f"  current image: {item['current_image'] or '-'}\n")
        out.write(f"  next due:      {relative_time(item['next_due'], now)}\n")
        if item["last_error"]:
            out.write(f"  last error:    {item['last_error']}\n")
        if item["next_step"]:
            out.write(f"  next step:     {item['next_step']}\n")
        _write_ledger_lines(out, item)
    if report["refused_images"]:
        out.write("\nrefused by the server (not sent again until the file changes):\n")
        for item in report["refused_images"]:
            out.write(f"  {item['path']}  ({item['code']})\n")
    out.write(
        f"\ncredits spent (30 days): {report.get('credits_spent_30d', 0)}\n\npauses: "
        + ("none" if not report["pauses"] else "")
        + "\n"
    )
    for pause in report["pauses"]:
        who = "all accounts" if pause["scope"] == "key" else pause["account"]
        until = relative_time(pause["until"], now)
        out.write(f"  {who}: {pause['kind']} ({pause['reason']}) until {until}\n")
        out.write(f"    next step: {pause['next_step']}\n")


# -- history -------------------------------------------------------------------------------


def history(
    config: str | None, *, account: str | None, since: str | None, limit: int, as_json: bool
) -> int:
    """Print the audit history, oldest first: what was sent when, and what came of it."""
    environ = dict(os.environ)
    settings = _settings(config, environ)
    after = _parse_since(since, utc_now()) if since else None
    if account is not None:
        known = {entry.account for entry in settings.accounts}
        if account not in known:
            raise _unknown_account(account)
    # The history holds what the server said; mask the key in case it ever echoed it.
    _register_key_quietly(settings, environ)
    with StateStore.open(_require_state(settings), lock=False, readonly=True) as state:
        rows = state.history(limit=limit, account=account, since=after)
    rows.reverse()
    items = [
        {
            "time": row.time.isoformat(),
            "account": row.account,
            "image": row.image,
            "outcome": row.outcome,
            "error": row.error_code,
            "status": row.status,
            "request_id": row.request_id,
            "action_id": row.action_id,
            "credits": row.credits,
            "message": row.message,
            "attempt": row.attempt,
            "duration_ms": row.duration_ms,
        }
        for row in rows
    ]
    items = _redacted(items)
    if as_json:
        _print_json({"state_dir": escape_name(str(settings.state_dir)), "history": items})
        return 0
    out = sys.stdout
    if not items:
        out.write("no history" + (f" since {after.isoformat()}" if after else "") + "\n")
    for item in items:
        line = f"{item['time']}  {item['account']}  {item['outcome']:<9}  {item['image'] or '-'}"
        if item["error"]:
            line += f"  {item['error']}"
        if item["outcome"] != "success" and item["message"]:
            line += f": {item['message']}"
        ids = [f"request {item['request_id']}"] if item["request_id"] else []
        ids += [f"action {item['action_id']}"] if item["action_id"] else []
        if item["credits"]:
            ids.append(f"{item['credits']} credits")
        if ids:
            line += f"  ({', '.join(ids)})"
        out.write(line + "\n")
    return 0


def _parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """Read --since: a duration back from ``now`` (2d) or an ISO 8601 time (UTC if bare)."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        pass
    else:
        try:
            return now - dt.timedelta(seconds=seconds)
        except OverflowError:
            return dt.datetime.min.replace(tzinfo=dt.UTC)  # further back than any history
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since: {text!r} is neither a duration (2d, 6h) nor an ISO 8601 time"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


# -- resume --------------------------------------------------------------------------------


def resume(config: str | None, *, account: str | None, as_json: bool) -> int:
    """End pauses by hand (the key's and every account's, or one account's); reset the backoff."""
    environ = dict(os.environ)
    settings = _settings(config, environ)
    reply = control.ask(settings.state_dir, {"command": "resume", "account": account})
    if reply is not None:
        return _print_reply(reply, sys.stdout, as_json=as_json)
    configured = {entry.account for entry in settings.accounts}
    # An account no longer configured may still have a stored pause to end: look first.
    no_state = not state_exists(settings.state_dir)
    if account is not None and account not in configured and no_state:
        raise _unknown_account(account)
    _require_state(settings)
    try:
        store = _state_by_hand(settings)
    except StateError as exc:
        raise StateError(f"nothing to resume: {exc}") from exc
    with store as state:
        pauses = state.pauses()
        if account is not None and account not in configured | {
            str(pause.account) for pause in pauses
        }:
            raise _unknown_account(account)
        ended = manual.resume_offline(state, account)
    return _answer(0, manual.resumed_message(ended), by="state", as_json=as_json)


# -- reload --------------------------------------------------------------------------------

RELOAD_WAIT_SECONDS = 60.0  # a reload rescans changed folders: give it time


def reload(config: str | None, *, as_json: bool) -> int:
    """Ask the running daemon to re-read its config; wait for the outcome and report it.

    This is the unit's ``ExecReload=``: its exit status is what ``systemctl reload``
    reports, so a config the daemon refused makes the reload fail, with the reason.
    A config this command cannot read is still sent to the daemon: it says why it keeps
    the old one, and ``systemctl status`` shows it.
    """
    environ = dict(os.environ)
    try:
        state_dir = _settings(config, environ).state_dir
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"rotator: {problem}\n")
        # Where the daemon keeps its state without state.dir: what the broken file may hold.
        state_dir = choose_state_dir(None, environ, resolve_config_path(config, environ))
    beat = read_heartbeat(state_dir)
    pid = beat[1].get("pid") if beat is not None else None
    if beat is None or not isinstance(pid, int) or not _is_fresh(_age(beat[0])):
        sys.stderr.write(f"rotator: no running daemon (no fresh heartbeat in {state_dir})\n")
        return 1
    before = _reload_outcome(beat[1])
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        sys.stderr.write(f"rotator: cannot signal the daemon (pid {pid}): {exc.strerror}\n")
        return 1
    deadline = time.monotonic() + RELOAD_WAIT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.1)
        beat = read_heartbeat(state_dir)
        outcome = _reload_outcome(beat[1]) if beat is not None else before
        if outcome["count"] <= before["count"]:
            continue
        if as_json:
            _print_json({"ok": outcome["ok"], "pid": pid, "problems": outcome["problems"]})
            return 0 if outcome["ok"] else 1
        if outcome["ok"]:
            sys.stdout.write(f"reloaded (pid {pid})\n")
            return 0
        for problem in outcome["problems"]:
            sys.stderr.write(f"rotator: reload failed: {problem}\n")
        sys.stderr.write("rotator: the daemon keeps running on its previous config\n")
        return 1
    sys.stderr.write(f"rotator: no reload outcome from the daemon in {RELOAD_WAIT_SECONDS:.0f}s\n")
    return 1


def _age(when: dt.datetime) -> float:
    return (utc_now() - when).total_seconds()


def _reload_outcome(summary: Mapping[str, object]) -> dict[str, Any]:
    """Read the last reload's outcome from a heartbeat summary (count 0: none yet)."""
    raw = summary.get("reload")
    outcome = raw if isinstance(raw, dict) else {}
    count, problems = outcome.get("count"), outcome.get("problems")
    return {
        "count": count if isinstance(count, int) else 0,
        "ok": outcome.get("ok") is True,
        "problems": [str(p) for p in problems] if isinstance(problems, list) else [],
    }


# -- pause, skip, exclude, include -----------------------------------------------------------


def pause(
    config: str | None, *, account: str | None, for_seconds: float | None, as_json: bool
) -> int:
    """Hold the writes of one account (or of all) until resumed, or for a while."""
    settings = _settings(config, dict(os.environ))
    if account is not None:
        manual.entries_of(settings.accounts, account)
    request = {"command": "pause", "account": account, "seconds": for_seconds}
    reply = control.ask(settings.state_dir, request)
    if reply is not None:
        return _print_reply(reply, sys.stdout, as_json=as_json)
    with _state_by_hand(settings) as state:
        done = manual.pause_offline(state, account, for_seconds)
    message = done + " (the daemon keeps it when it starts)"
    return _answer(0, message, by="state", as_json=as_json)


def skip(config: str | None, *, account: str, as_json: bool) -> int:
    """Move an account's entries past the image their next rotation would send."""
    settings = _settings(config, dict(os.environ))
    entries = manual.entries_of(settings.accounts, account)
    reply = control.ask(settings.state_dir, {"command": "skip", "account": account})
    if reply is not None:
        return _print_reply(reply, sys.stdout, as_json=as_json)
    lines = []
    with _state_by_hand(settings) as state:
        fits = fit_settings(settings)
        for entry in entries:
            catalog = Catalog(entry.folder, fits, StateValidationCache(state), _quiet)
            catalog.apply_scan(catalog.scan())
            lines.append(f"{entry.account}: skipped {manual.skip(state, entry, catalog)}")
    return _answer(0, "\n".join(lines), by="state", as_json=as_json)


def exclude(config: str | None, *, account: str, image: str, as_json: bool) -> int:
    """Never pick an image for an account until it is included again."""
    return _image_by_hand(config, "exclude", account=account, image=image, as_json=as_json)


def include(config: str | None, *, account: str, image: str, as_json: bool) -> int:
    """Let an excluded image be picked again."""
    return _image_by_hand(config, "include", account=account, image=image, as_json=as_json)


def _image_by_hand(
    config: str | None, command: str, *, account: str, image: str, as_json: bool
) -> int:
    settings = _settings(config, dict(os.environ))
    entries = manual.entries_of(settings.accounts, account)
    image = manual.image_path(image, Path.cwd())
    entry, relative = manual.entry_for_image(entries, image)
    request = {"command": command, "account": account, "image": image}
    reply = control.ask(settings.state_dir, request)
    if reply is not None:
        return _print_reply(reply, sys.stdout, as_json=as_json)
    with _state_by_hand(settings) as state:
        act = manual.exclude if command == "exclude" else manual.include
        message = act(state, entry, relative)
    return _answer(0, message, by="state", as_json=as_json)


def _state_by_hand(settings: Settings) -> StateStore:
    """Open the state to change it by hand: only when no daemon holds it."""
    try:
        return StateStore.open(settings.state_dir, lock=True)
    except StateLockedError as exc:
        raise RotatorError(
            f"{exc}, and it does not answer on {control.socket_path(settings.state_dir)}; "
            "see its log for control.unavailable, or restart it"
        ) from None


def _print_reply(reply: dict[str, Any], out: Any, *, as_json: bool = False) -> int:
    """Print the daemon's answer (an error on stderr) and return its exit code."""
    code = int(reply["exit"])
    message = str(reply.get("message", ""))
    if as_json:
        return _answer(code, message, by="daemon", as_json=True)
    if code != 0 and not reply.get("results"):
        sys.stderr.write(f"rotator: {message}\n")
    elif message:
        out.write(message + "\n")
    return code


def _answer(code: int, message: str, *, by: str, as_json: bool) -> int:
    """Print what a by-hand command did (``by`` the daemon or on the state); return ``code``."""
    if as_json:
        _print_json({"ok": code == 0, "exit": code, "by": by, "message": message})
    else:
        sys.stdout.write(message + "\n")
    return code


# -- health --------------------------------------------------------------------------------


def health(config: str | None, *, allow_paused: bool, as_json: bool) -> int:
    """Exit 0 when the daemon runs and can do its job, 1 otherwise, with one line.

    A fresh heartbeat is not enough: a key-wide pause that needs a person (credits, a
    refused key) or a pause on every account means no avatar changes until someone acts.
    ``--allow-paused`` asks only whether the daemon is alive.
    """
    environ = dict(os.environ)
    settings = _settings(config, environ)
    for dry_run in (False, True):
        state_dir = state_dir_for(settings, dry_run=dry_run)
        if state_exists(state_dir):
            check_state_file(state_dir)  # a broken state is never "healthy"
    verdict = _health(settings, allow_paused=allow_paused)
    if as_json:
        _print_json(verdict)
    else:
        sys.stdout.write(f"{verdict['line']}\n")
    return 0 if verdict["healthy"] else 1


def _health(settings: Settings, *, allow_paused: bool) -> dict[str, Any]:
    """Judge the daemon's health: ``healthy``, the one ``line`` to print, and the facts."""
    beat = _live_heartbeat(settings)
    if beat is None:
        line = f"unhealthy: no heartbeat in {settings.state_dir} (is the daemon running?)"
        return {"healthy": False, "line": line, "pid": None}
    age, summary, dry_run = beat
    facts: dict[str, Any] = {"pid": summary.get("pid"), "heartbeat_age_s": round(age, 1)}
    facts["dry_run"] = dry_run
    if age < -_FUTURE_TOLERANCE:
        line = (
            f"unhealthy: the last heartbeat is dated {-age:.0f}s in the future "
            "(the clock went back, or it is not the daemon's)"
        )
        return {"healthy": False, "line": line, **facts}
    if not _is_fresh(age):
        line = f"unhealthy: last heartbeat {age:.0f}s ago (the daemon is stuck or gone)"
        return {"healthy": False, "line": line, **facts}
    now = utc_now()
    try:
        with StateStore.open(
            state_dir_for(settings, dry_run=dry_run), lock=False, readonly=True
        ) as state:
            pauses = [pause for pause in state.pauses() if pause.until > now]
    except StateError as exc:
        return {"healthy": False, "line": f"unhealthy: the state cannot be read: {exc}", **facts}
    facts["paused"] = sorted({pause.kind for pause in pauses})
    blocked = _blocking_pause(settings, pauses)
    if blocked is not None and not allow_paused:
        return {"healthy": False, "line": f"unhealthy: {blocked}", **facts}
    line = f"healthy: heartbeat {max(age, 0):.0f}s ago, pid {summary.get('pid')}"
    if dry_run:
        line += " (dry run)"
    if pauses:
        line += "; paused: " + ", ".join(facts["paused"])
    return {"healthy": True, "line": line, **facts}


def _blocking_pause(settings: Settings, pauses: list[Pause]) -> str | None:
    """Return why no avatar can change until someone acts or a long pause ends, if so."""
    pauses = [pause for pause in pauses if pause.kind not in INTENDED_KINDS]
    for pause in pauses:
        if pause.scope == "key" and pause.kind not in SELF_ENDING_KINDS:
            return (
                f"all accounts paused: {pause.kind} ({pause.reason}) until "
                f"{pause.until.isoformat()}; next step: {next_step(pause.kind, None)}"
            )
    # Short throttles end by themselves within minutes: they do not make it unhealthy.
    held = {
        str(pause.account): pause
        for pause in pauses
        if pause.scope == "account" and pause.kind not in SHORT_KINDS
    }
    accounts = sorted({entry.account for entry in settings.accounts})
    if accounts and all(account in held for account in accounts):
        parts = []
        for account in accounts:
            pause = held[account]
            step = next_step(pause.kind, account)
            parts.append(f"{account}: {pause.kind} ({pause.reason}); next step: {step}")
        return "every account is paused: " + "; ".join(parts)
    return None
