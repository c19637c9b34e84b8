"""The commands behind the CLI, one function each, returning the exit code.

``run`` starts the daemon; the others read the config, the image folders and the
state (read-only while a daemon runs) and print a report for people, or JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rotator import control, manual
from rotator.catalog import Catalog, CatalogImage, MemoryValidationCache, natural_key
from rotator.client import XquikClient, find_x_account
from rotator.config import AccountEntry, Settings, load_settings, resolve_config_path
from rotator.durations import format_duration
from rotator.errors import (
    ConfigError,
    ImageError,
    MissingKeyError,
    RotatorError,
    StateError,
    StateLockedError,
)
from rotator.images import FitSettings, describe, fit_image
from rotator.keys import NO_KEY, ApiKey, find_api_key
from rotator.logs import add_secret, configure, emit
from rotator.planner import Position, advance, next_image
from rotator.scheduling import cron_fire_times
from rotator.service import (
    HEARTBEAT_SECONDS,
    Daemon,
    StateValidationCache,
    fit_settings,
    rotate_now,
    state_dir_for,
)
from rotator.state import StateStore, read_heartbeat
from rotator.systemd import SystemdNotifier


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    return load_settings(resolve_config_path(args.config, environ), environ)


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
            found.append(((_now() - beat[0]).total_seconds(), beat[1], dry_run))
    return min(found, key=lambda item: item[0]) if found else None


def _is_fresh(age: float) -> bool:
    return age <= 3 * HEARTBEAT_SECONDS


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# -- run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    environ = dict(os.environ)
    settings = _settings(args, environ)
    key = None if args.dry_run else _key(settings, environ)
    configure(settings.log.level, settings.log.format)
    if key is not None and key.warning:
        emit("config.warning", message=key.warning)
    notifier = SystemdNotifier.from_environment()
    daemon = Daemon(settings, key, dry_run=args.dry_run, environ=environ, notifier=notifier)
    return asyncio.run(daemon.run())


# -- rotate --------------------------------------------------------------------------------


def rotate(args: argparse.Namespace) -> int:
    """Rotate now, once, for every entry (or one account's), then exit."""
    environ = dict(os.environ)
    settings = _settings(args, environ)
    entries = manual.entries_of(settings.accounts, args.account)
    if not args.dry_run:
        # A running daemon rotates it itself: its state, its pacer, its pauses.
        request = {"command": "rotate", "account": args.account}
        if args.image is not None:
            request["image"] = manual.image_path(args.image, Path.cwd())
        reply = control.ask(settings.state_dir, request)
        if reply is not None:
            return _print_reply(reply, sys.stderr)
    key = None if args.dry_run else _key(settings, environ)
    configure(settings.log.level, settings.log.format)
    results = asyncio.run(
        rotate_now(settings, key, entries, image=args.image, dry_run=args.dry_run)
    )
    for result in results:
        sys.stderr.write(manual.result_line(result) + "\n")
    return 0 if all(result.ok for result in results) else 1


# -- check ---------------------------------------------------------------------------------


def check(args: argparse.Namespace) -> int:
    """Validate the config and every image; with --online, the key, credits and accounts."""
    environ = dict(os.environ)
    settings = _settings(args, environ)
    report: dict[str, Any] = {"config": str(settings.config_path), "entries": [], "ok": True}
    fits = fit_settings(settings)
    catalogs = _scanned_catalogs(settings)
    for entry in settings.accounts:
        catalog = catalogs[entry.folder]
        files = [_describe_usable(image, fits) for image in catalog.usable()]
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
                "folder": str(entry.folder),
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
    if args.online:
        key = _key(settings, environ)
        if key.warning:
            report["warnings"] = [key.warning]
        report["online"] = asyncio.run(_check_online(settings, key))
        if report["online"]["problems"]:
            report["ok"] = False
    if args.json:
        _print_json(report)
    else:
        _print_check(report)
    return 0 if report["ok"] else 1


def _describe_usable(image: CatalogImage, fits: FitSettings) -> dict[str, str]:
    """Return a usable file's line; one that needs fitting is fitted, to show the result."""
    if not image.verdict.needs_fit:
        return {"path": image.relative, "state": "ok", "detail": describe(image.verdict)}
    try:
        fitted = fit_image(image.path, fits)
    except ImageError as exc:
        return {"path": image.relative, "state": "rejected", "detail": f"rejected: {exc}"}
    return {"path": image.relative, "state": "fitted", "detail": describe(fitted)}


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
            problems.append(f"the API key was not accepted: {exc}")
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


def plan(args: argparse.Namespace) -> int:
    """Print the next rotations of every entry and what they cost."""
    environ = dict(os.environ)
    settings = _settings(args, environ)
    now = _now()
    saved = _read_entries(settings)
    catalogs = _scanned_catalogs(settings)
    total_per_day = 0.0
    out = sys.stdout
    for entry in settings.accounts:
        catalog = catalogs[entry.folder]
        names = [image.relative for image in catalog.usable()]
        state = saved.get(entry.entry_id)
        position = Position(
            last_image=state.last_image if state else None,
            shown_in_cycle=state.shown_in_cycle if state else frozenset(),
        )
        last_success = state.last_success if state else None
        times = _next_times(entry, now, last_success, args.count)
        per_day = _calls_per_day(entry, now)
        total_per_day += per_day
        out.write(
            f"{entry.account}  {entry.folder}  {entry.schedule.text}  {entry.order}"
            f"  ({len(names)} usable images)\n"
        )
        rng = random.Random(0)  # noqa: S311 - a preview, not a promise
        for when in times:
            image = next_image(entry.order, names, position, rng, sort_key=natural_key)
            label = image or "(no usable image)"
            if image is not None:
                position = advance(entry.order, names, position, image)
                if entry.order != "sequential":
                    label += "  (random pick)"
            local = when.astimezone(entry.timezone)
            out.write(f"  {local:%Y-%m-%d %H:%M:%S %Z}  {label}\n")
        if entry.jitter:
            out.write(f"  (each up to {format_duration(entry.jitter)} later: jitter)\n")
        out.write(f"  {per_day:.1f} calls/day\n\n")
    per_call = settings.api.credits_per_call
    out.write(
        f"total: {total_per_day:.1f} calls/day, {total_per_day * 30:.0f} calls/month, "
        f"{total_per_day * 30 * per_call:,.0f} credits/month at {per_call} credits per call\n"
    )
    return 0


def _read_entries(settings: Settings) -> dict[str, Any]:
    try:
        with StateStore.open(settings.state_dir, lock=False, readonly=True) as state:
            return {row.entry_id: row for row in state.entries()}
    except StateError:
        return {}


def _next_times(
    entry: AccountEntry, now: dt.datetime, last_success: dt.datetime | None, count: int
) -> list[dt.datetime]:
    every = entry.schedule.every
    if every is None:
        return cron_fire_times(entry.schedule, entry.timezone, now, count)
    first = now
    if last_success is not None:
        first = max(now, last_success + dt.timedelta(seconds=every))
    return [first + dt.timedelta(seconds=every * n) for n in range(count)]


def _calls_per_day(entry: AccountEntry, now: dt.datetime) -> float:
    every = entry.schedule.every
    if every is not None:
        return 86400.0 / every
    week = now + dt.timedelta(days=7)
    fires = cron_fire_times(entry.schedule, entry.timezone, now, 7 * 24 * 60 + 1)
    return len([when for when in fires if when <= week]) / 7.0


# -- status --------------------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    """Print what the state says of each entry: last success, image, next due, pauses."""
    environ = dict(os.environ)
    settings = _settings(args, environ)
    now = _now()
    state_dir = settings.state_dir
    report: dict[str, Any] = {"state_dir": str(state_dir), "entries": [], "pauses": []}
    beat = _live_heartbeat(settings)
    running = beat is not None and _is_fresh(beat[0])
    report["daemon"] = "not running"
    next_due: dict[str, Any] = {}
    if beat is not None and running:
        report["daemon"] = "running (dry run)" if beat[2] else "running"
        raw = beat[1].get("next_due")
        next_due = raw if isinstance(raw, dict) and not beat[2] else {}
    try:
        with StateStore.open(state_dir, lock=False, readonly=True) as state:
            rows = {row.entry_id: row for row in state.entries()}
            pauses = [p for p in state.pauses() if p.until > now]
            refused = state.refused_images()
            history = {row.entry_id: row for row in reversed(state.history(limit=500))}
    except StateError:
        rows, pauses, history, refused = {}, [], {}, []
    # Not sent again until the file changes (its content hash with it).
    report["refused_images"] = [{"path": path, "code": code} for path, code in refused]
    for entry in settings.accounts:
        row = rows.get(entry.entry_id)
        due = next_due.get(entry.entry_id)
        if due is None:
            times = _next_times(entry, now, row.last_success if row else None, 1)
            due = times[0].isoformat() if times else None
        last = history.get(entry.entry_id)
        report["entries"].append(
            {
                "account": entry.account,
                "folder": str(entry.folder),
                "schedule": entry.schedule.text,
                "last_success": row.last_success.isoformat() if row and row.last_success else None,
                "current_image": row.last_image if row else None,
                "next_due": due,
                "last_error": row.last_error if row else None,
                "last_outcome": last.outcome if last else None,
                "uncertain": bool(row and row.uncertain),
            }
        )
    for pause in pauses:
        kind, _, reason = pause.reason.partition(":")
        report["pauses"].append(
            {
                "scope": pause.scope,
                "account": pause.account,
                "kind": kind,
                "reason": reason or kind,
                "until": pause.until.isoformat(),
            }
        )
    if args.json:
        _print_json(report)
        return 0
    out = sys.stdout
    out.write(f"daemon: {report['daemon']}  (state: {state_dir})\n")
    for item in report["entries"]:
        out.write(f"\n{item['account']}  {item['folder']}  {item['schedule']}\n")
        out.write(f"  last success:  {item['last_success'] or 'never'}\n")
        out.write(f"  current image: {item['current_image'] or '-'}\n")
        out.write(f"  next due:      {item['next_due'] or '-'}\n")
        if item["last_error"]:
            out.write(f"  last error:    {item['last_error']}\n")
        if item["uncertain"]:
            out.write("  last write:    uncertain (the server did not confirm it)\n")
    if report["refused_images"]:
        out.write("\nrefused by the server (not sent again until the file changes):\n")
        for item in report["refused_images"]:
            out.write(f"  {item['path']}  ({item['code']})\n")
    out.write("\npauses: " + ("none" if not report["pauses"] else "") + "\n")
    for pause in report["pauses"]:
        who = "all accounts" if pause["scope"] == "key" else pause["account"]
        out.write(f"  {who}: {pause['kind']} ({pause['reason']}) until {pause['until']}\n")
    return 0


# -- resume --------------------------------------------------------------------------------


def resume(args: argparse.Namespace) -> int:
    """End pauses by hand (the key's and every account's, or one account's); reset the backoff."""
    environ = dict(os.environ)
    settings = _settings(args, environ)
    reply = control.ask(settings.state_dir, {"command": "resume", "account": args.account})
    if reply is not None:
        return _print_reply(reply, sys.stdout)
    try:
        store = _state_by_hand(settings)
    except StateError as exc:
        raise StateError(f"nothing to resume: {exc}") from exc
    with store as state:
        pauses = state.pauses()
        accounts = {entry.account for entry in settings.accounts}
        if args.account is not None and args.account not in accounts | {
            str(pause.account) for pause in pauses
        }:
            raise ConfigError(f"--account: no [[accounts]] entry has account {args.account!r}")
        ended = manual.resume_offline(state, args.account)
    sys.stdout.write(manual.resumed_message(ended) + "\n")
    return 0


# -- pause, skip, exclude, include -----------------------------------------------------------


def pause(args: argparse.Namespace) -> int:
    """Hold the writes of one account (or of all) until resumed, or for a while."""
    settings = _settings(args, dict(os.environ))
    if args.account is not None:
        manual.entries_of(settings.accounts, args.account)
    request = {"command": "pause", "account": args.account, "seconds": args.for_seconds}
    reply = control.ask(settings.state_dir, request)
    if reply is not None:
        return _print_reply(reply, sys.stdout)
    with _state_by_hand(settings) as state:
        done = manual.pause_offline(state, args.account, args.for_seconds)
    sys.stdout.write(done + " (the daemon keeps it when it starts)\n")
    return 0


def skip(args: argparse.Namespace) -> int:
    """Move an account's entries past the image their next rotation would send."""
    settings = _settings(args, dict(os.environ))
    entries = manual.entries_of(settings.accounts, args.account)
    reply = control.ask(settings.state_dir, {"command": "skip", "account": args.account})
    if reply is not None:
        return _print_reply(reply, sys.stdout)
    with _state_by_hand(settings) as state:
        fits = fit_settings(settings)
        for entry in entries:
            catalog = Catalog(entry.folder, fits, StateValidationCache(state), _quiet)
            catalog.apply_scan(catalog.scan())
            skipped = manual.skip(state, entry, catalog)
            sys.stdout.write(f"{entry.account}: skipped {skipped}\n")
    return 0


def exclude(args: argparse.Namespace) -> int:
    """Never pick an image for an account until it is included again."""
    return _image_by_hand(args, "exclude")


def include(args: argparse.Namespace) -> int:
    """Let an excluded image be picked again."""
    return _image_by_hand(args, "include")


def _image_by_hand(args: argparse.Namespace, command: str) -> int:
    settings = _settings(args, dict(os.environ))
    entries = manual.entries_of(settings.accounts, args.account)
    image = manual.image_path(args.image, Path.cwd())
    entry, relative = manual.entry_for_image(entries, image)
    request = {"command": command, "account": args.account, "image": image}
    reply = control.ask(settings.state_dir, request)
    if reply is not None:
        return _print_reply(reply, sys.stdout)
    with _state_by_hand(settings) as state:
        act = manual.exclude if command == "exclude" else manual.include
        sys.stdout.write(act(state, entry, relative) + "\n")
    return 0


def _state_by_hand(settings: Settings) -> StateStore:
    """Open the state to change it by hand: only when no daemon holds it."""
    try:
        return StateStore.open(settings.state_dir, lock=True)
    except StateLockedError as exc:
        raise RotatorError(
            f"{exc}, and it does not answer on {control.socket_path(settings.state_dir)}; "
            "see its log for control.unavailable, or restart it"
        ) from None


def _print_reply(reply: dict[str, Any], out: Any) -> int:
    """Print the daemon's answer (an error on stderr) and return its exit code."""
    code = int(reply["exit"])
    message = str(reply.get("message", ""))
    if code != 0 and not reply.get("results"):
        sys.stderr.write(f"rotator: {message}\n")
    elif message:
        out.write(message + "\n")
    return code


# -- health --------------------------------------------------------------------------------


def health(args: argparse.Namespace) -> int:
    """Exit 0 when the running daemon's heartbeat is fresh, 1 otherwise, with one line."""
    environ = dict(os.environ)
    settings = _settings(args, environ)
    beat = _live_heartbeat(settings)
    if beat is None:
        sys.stdout.write(
            f"unhealthy: no heartbeat in {settings.state_dir} (is the daemon running?)\n"
        )
        return 1
    age, summary, dry_run = beat
    if not _is_fresh(age):
        sys.stdout.write(
            f"unhealthy: last heartbeat {age:.0f}s ago (the daemon is stuck or gone)\n"
        )
        return 1
    line = f"healthy: heartbeat {max(age, 0):.0f}s ago, pid {summary.get('pid')}"
    if dry_run:
        line += " (dry run)"
    kinds = summary.get("pause_kinds")
    if isinstance(kinds, list) and kinds:
        # A credits or auth pause needs a person, not a restart: report it, stay healthy.
        line += "; paused: " + ", ".join(str(kind) for kind in kinds)
    sys.stdout.write(line + "\n")
    return 0
