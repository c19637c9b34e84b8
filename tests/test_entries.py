"""The entries in force: due entries wait in line as queued entries, not as rotations."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from fake_xquik import FakeXquik
from PIL import Image
from structlog.testing import capture_logs

from rotator.config import Settings, load_settings
from rotator.entries import Entries
from rotator.keys import find_api_key
from rotator.library import Library
from rotator.parts import FITTED_DIR, Parts, build_parts
from rotator.state import StateStore

ENTRIES = 40
GRANTS = 3  # writes the pacer allows in its (hour-long) window
CONCURRENCY = 1  # one request at a time: they reach the server in the order granted


def _settings(tmp_path: Path, fake: FakeXquik) -> Settings:
    """Write ``ENTRIES`` cron entries, one account and one image each, in a shuffled order."""
    lines = [
        "[api]",
        f'base_url = "{fake.base_url}"',
        'timeout = "5s"',
        "[rate_limit]",
        f"writes = {GRANTS}",
        'window = "1h"',
        f"concurrency = {CONCURRENCY}",
        "[state]",
        f'dir = "{tmp_path / "state"}"',
        "[images]",
        "min_size = 16",
        "[watch]",
        'mode = "polling"',
    ]
    for number in range(ENTRIES):
        account = f"acct{(number * 17) % ENTRIES:02d}"  # config order is not name order
        folder = tmp_path / account
        folder.mkdir()
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (number * 6, 40, 90)).save(buffer, "PNG")
        (folder / "1.png").write_bytes(buffer.getvalue())
        fake.connect_account(account)
        lines += [
            "[[accounts]]",
            f'account = "{account}"',
            f'folder = "{folder}"',
            'schedule = "* * * * *"',
        ]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_settings(path, {"XQUIK_API_KEY": fake.api_key})


def test_entries_due_at_once_start_only_as_many_rotations_as_the_pacer_takes(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """Prove N entries due at once hold ~k rotations, the rest queued; all go out once, in order."""
    settings = _settings(tmp_path, fake_xquik)
    key = find_api_key(settings, {"XQUIK_API_KEY": fake_xquik.api_key})
    order = [entry.account for entry in settings.accounts]

    async def go() -> tuple[int, int, int, int]:
        with StateStore.open(tmp_path / "state", lock=True) as state:
            now = dt.datetime.now(dt.UTC)
            for entry in settings.accounts:  # each missed a minute's run while "down"
                state.record_fire(entry.entry_id, entry.account, now - dt.timedelta(hours=2))
            held: list[Parts] = []
            held.append(
                build_parts(
                    settings,
                    key,
                    state=state,
                    state_dir=tmp_path / "state",
                    dry_run=False,
                    in_force=lambda: held[0],
                )
            )
            parts = held[0]
            background: list[asyncio.Task[None]] = []

            def spawn(coroutine: Coroutine[Any, Any, None]) -> None:
                background.append(asyncio.get_running_loop().create_task(coroutine))

            library = Library(
                asyncio.get_running_loop(),
                state=state,
                fitted_dir=tmp_path / "state" / FITTED_DIR,
                watch=settings.watch,
                spawn=spawn,
                on_change=lambda _folder: None,
            )
            most = 0

            def on_rotated() -> None:
                nonlocal most
                most = max(most, len(entries.tasks()))

            entries = Entries(
                state=state,
                parts=lambda: held[0],
                library=library,
                stopping=lambda: False,
                on_rotated=on_rotated,
            )
            await library.start([entry.folder for entry in settings.accounts], parts.fit)
            await entries.use(settings.accounts)
            before = len(asyncio.all_tasks())
            entries.schedule_all(now, first_start=True)  # the catch-up: all due at once
            # The granted writes are over once their answers are in the history.
            while len(state.history(limit=GRANTS)) < GRANTS:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # the pacer's window is full: nothing moves now
            stalled_tasks = len(asyncio.all_tasks()) - before
            stalled_rotations = len(entries.tasks())
            busy = sum(entries.is_busy(entry.entry_id) for entry in settings.accounts)
            parts.pacer.reconfigure(ENTRIES, 3600.0, CONCURRENCY)  # now let them all go
            while len(fake_xquik.writes()) < ENTRIES or entries.tasks():
                await asyncio.sleep(0.01)
            await parts.pauses.close()
            client = parts.client
            assert client is not None
            await client.aclose()
            library.close()
            return stalled_tasks, stalled_rotations, busy, most

    with capture_logs():
        stalled_tasks, stalled_rotations, busy, most = asyncio.run(go())
    # Waiting in line at the pacer: at most concurrency + 1 started rotations (and the
    # pacer's one timed wait); the other entries are queued, still due (busy), not tasks.
    assert stalled_rotations <= CONCURRENCY + 1
    assert stalled_tasks <= CONCURRENCY + 2
    assert busy == ENTRIES - GRANTS
    assert most <= 2 * CONCURRENCY + 1  # in line, plus those with a place granted
    # Nothing lost or doubled, and out in due order: ties (all due at once) in config order.
    written = [request.account for request in fake_xquik.writes()]
    assert written == order


def test_long_intervals_are_due_at_whole_seconds_and_share_their_job(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """``every 1h`` entries whose last rotations ended within one second are due at the same
    whole second, rounded up (one scheduler job for them all); ``every 30s`` keeps its
    instant."""
    lines = [
        "[api]",
        f'base_url = "{fake_xquik.base_url}"',
        "[state]",
        f'dir = "{tmp_path / "state"}"',
        "[watch]",
        'mode = "polling"',
    ]
    for number, schedule in enumerate(["every 1h"] * 5 + ["every 30s"]):
        folder = tmp_path / f"f{number}"
        folder.mkdir()
        lines += [
            "[[accounts]]",
            f'account = "acct{number}"',
            f'folder = "{folder}"',
            f'schedule = "{schedule}"',
        ]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = load_settings(path, {"XQUIK_API_KEY": fake_xquik.api_key})
    # Last rotations that ended in one second, at .1 to .85 s past it.
    ended = dt.datetime.now(dt.UTC).replace(microsecond=100_000)
    now = ended + dt.timedelta(minutes=1)

    async def go() -> list[dt.datetime | None]:
        with StateStore.open(tmp_path / "state", lock=True) as state:
            for number, entry in enumerate(settings.accounts):
                state.record_fire(entry.entry_id, entry.account, ended + number * SPREAD)
            parts = build_parts(
                settings,
                None,
                state=state,
                state_dir=tmp_path / "state",
                dry_run=True,
                in_force=lambda: parts,
            )
            library = Library(
                asyncio.get_running_loop(),
                state=state,
                fitted_dir=tmp_path / "state" / FITTED_DIR,
                watch=settings.watch,
                spawn=lambda coroutine: coroutine.close(),
                on_change=lambda _folder: None,
            )
            entries = Entries(
                state=state,
                parts=lambda: parts,
                library=library,
                stopping=lambda: False,
                on_rotated=lambda: None,
            )
            await library.start([entry.folder for entry in settings.accounts], parts.fit)
            await entries.use(settings.accounts)
            entries.schedule_all(now, first_start=True)
            entries.scheduler.start()
            dues = [entries.scheduler.next_due(entry.entry_id) for entry in settings.accounts]
            entries.scheduler.shutdown()
            library.close()
            return dues

    with capture_logs():
        dues = asyncio.run(go())
    whole = ended.replace(microsecond=0) + dt.timedelta(hours=1, seconds=1)
    assert dues[:5] == [whole] * 5
    assert dues[5] == now  # overdue: due now, to the microsecond


SPREAD = dt.timedelta(milliseconds=150)  # between the entries' last rotation ends
