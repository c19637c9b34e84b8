"""The entries in force: when each is due, its rotation, and the figures they show.

``Entries`` keeps one run per configured entry: its catalog (from the ``Library``), its
job in the scheduler and its rotation in progress. A due time starts a rotation, or is
merged into the one still running; a cron entry missed while the daemon was down runs
once at start; an "every D" entry is due D after its last rotation's end. An entry
removed by a reload is cancelled unless a write of it is on the wire: then it ends after
that write. Rotations run on the rotator of the parts in force (``parts``).

Due entries wait in line as queued runs, not as rotations: a due entry joins the line
(after its jitter, a timer), and a rotation's task starts only while fewer than the
pacer's concurrency + 1 started rotations still wait for their turn at the pacer. A
rotation leaves the line when the pacer grants its place (or it goes to wait out an
account's pause, a resumed write or the account's other write, or it ends); the next
queued entry starts then. Ten thousand entries due at once cost a deque slot each, not
a task and its coroutine frames (~4 KiB), and they reach the pacer (FIFO) in the order
they came due: by due time, ties in config order (``RotationScheduler``). Rotations by
hand do not queue: they go straight to the pacer.

The next due times and the metrics figures are computed again only after something
changed (``changed``), so an idle daemon does no work per entry.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rotator.catalog import Catalog
from rotator.clock import utc_now
from rotator.config import AccountEntry
from rotator.cron import every_due
from rotator.errors import RotatorError
from rotator.heartbeat import EncodedJson
from rotator.library import Library
from rotator.logs import emit
from rotator.metrics import EntryFigures, Snapshot, entry_label
from rotator.parts import Parts
from rotator.rotation import RotationResult
from rotator.scheduling import RotationScheduler, cron_missed_since
from rotator.state import Pause, StateStore

# ``every`` intervals from this long (seconds) are due at whole seconds (at most 1 % late).
SHARED_SECOND_FROM = 100


@dataclasses.dataclass(frozen=True)
class DueTimes:
    """Every entry's next due time, as computed after the last change."""

    times: dict[str, dt.datetime]
    encoded: EncodedJson  # the same, as the heartbeat writes it
    soonest: tuple[dt.datetime, str] | None  # (when, account)
    accounts: int


@dataclasses.dataclass(eq=False, slots=True)
class _EntryRun:
    """An entry and its rotation in progress."""

    entry: AccountEntry
    catalog: Catalog
    task: asyncio.Task[RotationResult | None] | None = None
    retired: bool = False  # removed by a reload: its rotation ends after the write on the wire
    fired_at: dt.datetime | None = None  # the latest due time, merged ones included
    queued: bool = False  # due: in line for a turn at the pacer, or its jitter running

    @property
    def busy(self) -> bool:
        return self.queued or (self.task is not None and not self.task.done())


class _Turn:
    """A started rotation's place in line: given up once, however often it is called."""

    __slots__ = ("_give_up",)

    def __init__(self, give_up: Callable[[], None]) -> None:
        self._give_up: Callable[[], None] | None = give_up

    def __call__(self) -> None:
        give_up, self._give_up = self._give_up, None
        if give_up is not None:
            give_up()

    def done(self, _task: object) -> None:
        self()


class Entries:
    """The entries in force, their schedules and their rotations."""

    def __init__(
        self,
        *,
        state: StateStore,
        parts: Callable[[], Parts],
        library: Library,
        stopping: Callable[[], bool],
        on_rotated: Callable[[], None],
    ) -> None:
        self._state = state
        self._parts = parts
        self._library = library
        self._stopping = stopping
        self._on_rotated = on_rotated
        self._rng = random.Random()  # noqa: S311 - jitter is not cryptography
        self._runs: dict[str, _EntryRun] = {}
        self._retired: set[_EntryRun] = set()
        self._line: collections.deque[_EntryRun] = collections.deque()  # due, not started
        self._in_line = 0  # rotations started that still wait for their turn at the pacer
        self._jitters: dict[_EntryRun, asyncio.TimerHandle] = {}  # due, jitter running
        self.scheduler = RotationScheduler(self._on_due, self._on_missed)
        self._due_cache: DueTimes | None = None
        self._stale_figures: set[str] | None = None  # None: all of them
        self._entry_figures: dict[str, EntryFigures] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def tasks(self) -> list[asyncio.Task[RotationResult | None]]:
        """Return the rotations under way, of retired entries too."""
        runs = [*self._runs.values(), *self._retired]
        return [run.task for run in runs if run.task is not None and not run.task.done()]

    # -- the entries in force ----------------------------------------------------------

    async def use(self, entries: Sequence[AccountEntry]) -> tuple[list[str], list[str], list[str]]:
        """Make the entries in force be ``entries``; return added, removed, changed ids."""
        wanted = {entry.entry_id: entry for entry in entries}
        self.scheduler.set_order(wanted)  # ties in due time go out in config order
        removed = [entry_id for entry_id in self._runs if entry_id not in wanted]
        writing = self._parts().rotator.writing
        for entry_id in removed:
            run = self._runs.pop(entry_id)
            self.scheduler.remove(entry_id)
            run.retired = True
            if (timer := self._jitters.pop(run, None)) is not None:
                timer.cancel()
            run.queued = False  # left in the line, it is passed over there
            if run.task is not None and run.task not in writing:
                run.task.cancel()
            elif run.busy:
                self._retired.add(run)  # awaited at shutdown if still writing then
        await self._library.use([entry.folder for entry in entries], self._parts().fit)
        added: list[str] = []
        changed: list[str] = []
        for entry_id, entry in wanted.items():
            catalog = self._library.catalog(entry.folder)
            existing = self._runs.get(entry_id)
            if existing is None:
                self._runs[entry_id] = _EntryRun(entry=entry, catalog=catalog)
                added.append(entry_id)
                continue
            existing.catalog = catalog  # new after an [images] change
            if existing.entry != entry:
                existing.entry = entry
                changed.append(entry_id)
        self.changed()
        return added, removed, changed

    def schedule_all(
        self, now: dt.datetime, *, first_start: bool, only: set[str] | None = None
    ) -> None:
        """(Re)schedule the entries (those in ``only`` if given) from their history."""
        known = self._state.entry_times()  # one read for all
        for entry_id, run in self._runs.items():
            if only is not None and entry_id not in only:
                continue
            last_fire, last_success = known.get(entry_id, (None, None))
            self._schedule(run, last_fire, last_success, now, first_start=first_start)

    def _schedule(
        self,
        run: _EntryRun,
        last_fire: dt.datetime | None,
        last_success: dt.datetime | None,
        now: dt.datetime,
        *,
        first_start: bool,
    ) -> None:
        """(Re)schedule one entry from its config and its history."""
        entry = run.entry
        self.changed(entry.entry_id)
        schedule = entry.schedule
        if schedule.every is None:
            self.scheduler.schedule_cron(entry.entry_id, schedule, entry.timezone)
            if last_fire is None:
                self._record_fire(run, now)  # the baseline: nothing was owed before now
            elif first_start and cron_missed_since(schedule, entry.timezone, last_fire, now):
                # Missed while the daemon was down: run once now (coalesced), not once per miss.
                self._on_due(entry.entry_id)
            return
        # "every D" counts from the last rotation's end: its success, or the end recorded
        # in last_fire (a give-up too; a rotation cut short by a stop records none).
        when = every_due(schedule.every, now, last_success, last_fire) + self._jitter(entry)
        if schedule.every >= SHARED_SECOND_FROM:
            # To the whole second, rounded up: the entries due in the same second share one
            # scheduler job (about 1 KiB each), as cron entries sharing a schedule do. At
            # their own microseconds, 10,000 entries held 10,000 jobs.
            when = when.replace(microsecond=0) + dt.timedelta(seconds=bool(when.microsecond))
        self.scheduler.schedule_at(entry.entry_id, when)

    def _jitter(self, entry: AccountEntry) -> dt.timedelta:
        return (
            dt.timedelta(seconds=self._rng.uniform(0, entry.jitter))
            if entry.jitter
            else dt.timedelta()
        )

    def _on_due(self, entry_id: str) -> None:
        """Queue a rotation for an entry, or merge it into the one still waiting."""
        run = self._runs.get(entry_id)
        if run is None or self._stopping():
            return
        self.changed(entry_id)  # its job moved on to the next due time, or ended
        run.fired_at = utc_now()  # recorded when the rotation ends, so a crash catches it up
        if run.busy:
            emit("rotation.merged", account=run.entry.account, entry=entry_id)
            return
        run.queued = True
        if run.entry.schedule.every is None and run.entry.jitter:
            delay = self._jitter(run.entry).total_seconds()
            self._jitters[run] = asyncio.get_running_loop().call_later(delay, self._queue, run)
        else:
            self._queue(run)

    def _queue(self, run: _EntryRun) -> None:
        """Put a due entry in line for the pacer (after its jitter, if any)."""
        self._jitters.pop(run, None)
        if not run.queued or self._stopping():
            run.queued = False
            return
        self._line.append(run)
        self._start_next()

    def _start_next(self) -> None:
        """Start the rotations of queued entries while few started ones wait in line."""
        limit = self._parts().pacer.concurrency + 1  # one more: the pacer never idles
        while self._line and self._in_line < limit and not self._stopping():
            run = self._line.popleft()
            if not run.queued:  # retired (or stopped) while it waited
                continue
            run.queued = False
            self._in_line += 1
            turn = _Turn(self._turn_taken)
            task = asyncio.get_running_loop().create_task(self._rotate(run, on_turn=turn))
            # Also when cancelled before it ever ran (its ``finally`` would not run then).
            task.add_done_callback(turn.done)
            run.task = task

    def _turn_taken(self) -> None:
        self._in_line -= 1
        self._start_next()

    def _record_fire(self, run: _EntryRun, when: dt.datetime) -> None:
        try:
            self._state.record_fire(run.entry.entry_id, run.entry.account, when)
        except RotatorError as exc:  # the rotations matter more than the bookkeeping
            emit("state.write_failed", entry=run.entry.entry_id, error=str(exc))

    def _stop_reason(self, run: _EntryRun) -> str | None:
        if self._stopping():
            return "shutting down"
        if run.retired:
            return "entry removed from the config"
        return None

    def _on_missed(self, entry_id: str, kind: str) -> None:
        emit("schedule.missed", entry=entry_id, kind=kind)

    # -- by hand, through the control socket ------------------------------------------

    def catalog_of(self, entry_id: str) -> Catalog | None:
        """Return the catalog of an entry in force."""
        run = self._runs.get(entry_id)
        return run.catalog if run is not None else None

    def is_busy(self, entry_id: str) -> bool:
        """Tell whether a rotation of the entry is running (or waiting out a pause)."""
        run = self._runs.get(entry_id)
        return run is not None and run.busy

    async def rotate_by_hand(self, entry_id: str, image: str | None) -> RotationResult | None:
        """Rotate an entry now, not waiting for pauses; None when it failed inside."""
        run = self._runs.get(entry_id)
        if run is None or run.busy or self._stopping():
            raise RotatorError("the entry is busy or the daemon is stopping; try again soon")
        task = asyncio.get_running_loop().create_task(self._rotate(run, image=image, by_hand=True))
        run.task = task  # awaited (and drained at shutdown) like any rotation
        return await task

    async def _rotate(
        self,
        run: _EntryRun,
        *,
        image: str | None = None,
        by_hand: bool = False,
        on_turn: Callable[[], None] = lambda: None,
    ) -> RotationResult | None:
        entry = run.entry
        result = None
        try:
            result = await self._parts().rotator.rotate(
                entry,
                run.catalog,
                image=image,
                wait_for_pauses=not by_hand,
                stop_reason=lambda: self._stop_reason(run),
                on_turn=on_turn,
            )
            if self._stop_reason(run) is None and run.fired_at is not None:
                # Done with this due time: a restart from here on owes it nothing. An
                # "every" entry keeps the rotation's end instead, success or give-up: the
                # next one is due D after it, across restarts too.
                ended = run.fired_at if entry.schedule.every is None else utc_now()
                self._record_fire(run, ended)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one entry's failure must not stop the daemon
            emit("rotation.skipped", account=entry.account, reason=f"internal error: {exc}")
        finally:
            self._retired.discard(run)
            every = run.entry.schedule.every
            if (
                every is not None
                and not self._stopping()
                and self._runs.get(entry.entry_id) is run
                and (not by_hand or (result is not None and result.ok))
            ):
                # "every D" counts from this rotation's end: the success just recorded.
                when = utc_now() + dt.timedelta(seconds=every) + self._jitter(run.entry)
                self.scheduler.schedule_at(entry.entry_id, when)
            self.changed(entry.entry_id)
            self._on_rotated()
            if run.task is asyncio.current_task():
                run.task = None  # over: its task and result are not kept per entry
        return result

    # -- what the heartbeat and the metrics show ---------------------------------------

    def changed(self, entry_id: str | None = None) -> None:
        """Note that schedules or figures changed (of one entry, or of all when None).

        Heartbeats and metrics read what was computed last until something changes,
        so an idle daemon does no work per entry.
        """
        self._due_cache = None
        if entry_id is None:
            self._stale_figures = None
        elif self._stale_figures is not None:
            self._stale_figures.add(entry_id)

    def folder_changed(self, folder: Path | None) -> None:
        """Note that a folder's images changed (None: maybe every folder's)."""
        if folder is None:
            self.changed()
            return
        for entry_id, run in self._runs.items():
            if run.entry.folder == folder:
                self.changed(entry_id)

    def due(self) -> DueTimes:
        """Return every entry's next due time, computed again only after a change."""
        if self._due_cache is None:
            times = {
                entry_id: when
                for entry_id in self._runs
                if (when := self.scheduler.next_due(entry_id)) is not None
            }
            soonest = min(times.items(), key=lambda item: item[1], default=None)
            self._due_cache = DueTimes(
                times=times,
                encoded=EncodedJson.of({k: v.isoformat() for k, v in times.items()}),
                soonest=(soonest[1], self._runs[soonest[0]].entry.account) if soonest else None,
                accounts=len({run.entry.account for run in self._runs.values()}),
            )
        return self._due_cache

    def figures(self, pauses: Sequence[Pause]) -> Snapshot:
        """Return the metrics snapshot; only entries changed since the last one are read."""
        stale = self._stale_figures
        if stale is None:
            self._entry_figures = {}
            stale = set(self._runs)
        if stale:
            due = self.due().times
            # One read for many; None (not an empty result) means ask entry by entry.
            times = self._state.entry_times() if len(stale) > 1 else None
            config_dir = self._parts().settings.config_path.parent
            for entry_id in stale:
                run = self._runs.get(entry_id)
                if run is None:
                    self._entry_figures.pop(entry_id, None)
                    continue
                if times is not None:
                    last = times.get(entry_id, (None, None))[1]
                else:
                    last = self._state.entry(entry_id).last_success
                when = due.get(entry_id)
                self._entry_figures[entry_id] = EntryFigures(
                    account=run.entry.account,
                    entry=entry_label(run.entry.account, run.entry.folder, config_dir),
                    next_rotation=when.timestamp() if when else None,
                    last_success=last.timestamp() if last else None,
                    usable_images=len(run.catalog.usable()),
                    rejected_images=len(run.catalog.rejected()),
                )
        self._stale_figures = set()
        scopes: dict[str, int] = {}
        for pause in pauses:
            scopes[pause.scope] = scopes.get(pause.scope, 0) + 1
        return Snapshot(
            entries=tuple(self._entry_figures.values()),
            pauses_by_scope=scopes,
            taken_at=time.monotonic(),
        )
