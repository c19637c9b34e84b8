"""The daemon: wires every part together and owns the event loop, signals and reloads.

``Daemon.run`` is the lifecycle: open the state (one daemon per state dir), scan the
image folders, start watching them, schedule every entry, tell systemd READY, then
serve until SIGTERM/SIGINT. Signal handlers only set a flag or queue a reload; the
loop does the work. On the way out the daemon stops taking work, lets writes
already on the wire finish (at most ``DRAIN_SECONDS``), and exits 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import gc
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from rotator import __version__, manual
from rotator.catalog import CacheEntry, Catalog, ScanResult, prune_fitted
from rotator.client import XquikClient, find_x_account
from rotator.config import AccountEntry, Settings, load_settings
from rotator.control import ControlServer
from rotator.cron import every_due
from rotator.errors import ConfigError, RotatorError
from rotator.images import FitSettings, ImageVerdict
from rotator.keys import NO_KEY, ApiKey, find_api_key
from rotator.logs import (
    add_listener,
    add_secret,
    configure,
    emit,
    redact_text,
    remove_listener,
)
from rotator.metrics import EntryFigures, Metrics, Snapshot, entry_label
from rotator.names import escape_name
from rotator.notify import Notifier, start_notifier, stop_notifier
from rotator.pacer import WritePacer
from rotator.pauses import PauseBoard
from rotator.policy import PolicySettings
from rotator.rotation import RotationResult, Rotator
from rotator.scheduling import RotationScheduler, cron_missed_since
from rotator.state import (
    EncodedJson,
    EntryState,
    StateStore,
    remove_heartbeat,
    write_heartbeat,
)
from rotator.systemd import SystemdNotifier
from rotator.watcher import FolderWatcher

DRAIN_SECONDS = 10.0  # how long writes already sent may take to finish on shutdown
HEARTBEAT_SECONDS = 10.0
HISTORY_KEPT = dt.timedelta(days=365)  # the audit trail of writes, kept a year
HISTORY_PRUNE_EVERY = 86400.0
SCAN_BATCH = 100  # folders scanned per worker-thread call (one call per folder costs more)
WORKER_THREADS = 4  # scans, image decoding, polls: the same few threads whatever the machine
FITTED_DIR = "fitted"
DRY_RUN_DIR = "dry-run"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- small translations between config and the parts ---------------------------------


def policy_settings(settings: Settings) -> PolicySettings:
    """Return the policy's numbers from ``[retry]`` and ``[pause]``."""
    return PolicySettings(
        retry_initial=settings.retry.initial,
        retry_max=settings.retry.max,
        attempts=settings.retry.attempts,
        pause_credits=settings.pause.credits,
        pause_account=settings.pause.account,
        pause_auth=settings.pause.auth,
        pause_max=settings.pause.max,
    )


def fit_settings(settings: Settings) -> FitSettings:
    """Return the image fitting settings from ``[images]``."""
    images = settings.images
    return FitSettings(
        fit=images.fit,
        size=images.size,
        crop=images.crop,
        max_bytes=images.max_bytes,
        max_source_bytes=images.max_source_bytes,
        max_pixels=images.max_pixels,
        min_size=images.min_size,
        max_decoded_bytes=images.max_decoded_bytes,
    )


def state_dir_for(settings: Settings, *, dry_run: bool) -> Path:
    """Return the state directory; a dry run keeps its own, so it never moves real positions."""
    return settings.state_dir / DRY_RUN_DIR if dry_run else settings.state_dir


class StateValidationCache:
    """The catalog's validation cache, kept in the state database."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self.catalog: Catalog | None = None  # its images answer first: no query for them
        # The whole cache read once for a start-up scan (None: one query per file).
        self.snapshot: dict[str, tuple[int, int, str]] | None = None

    def get(self, path: str, size: int, mtime_ns: int) -> ImageVerdict | None:
        """Return the cached verdict of a file, if it has not changed since."""
        known = self._known(path, size, mtime_ns)
        if known is not None:
            return known
        if self.snapshot is not None:
            saved = self.snapshot.get(path)
            if saved is None or saved[:2] != (size, mtime_ns):
                return None
            row = self._state.cache_decode(saved[2])
        else:
            row = self._state.cache_get(path, size, mtime_ns)
        if row is None:
            return None
        try:
            return ImageVerdict(**row)  # type: ignore[arg-type]
        except TypeError:  # written by another version: look at the file again
            return None

    def _known(self, path: str, size: int, mtime_ns: int) -> ImageVerdict | None:
        """Return the verdict the catalog holds for this very version of the file, if any.

        A periodic rescan then costs a stat per file, not a database query per file.
        """
        if self.catalog is None:
            return None
        root = f"{self.catalog.folder}{os.sep}"
        if not path.startswith(root):
            return None
        image = self.catalog.get(path[len(root) :].replace(os.sep, "/"))
        if image is None or (image.size_bytes, image.mtime_ns) != (size, mtime_ns):
            return None
        return image.verdict

    def put(self, path: str, size: int, mtime_ns: int, verdict: ImageVerdict) -> None:
        """Remember a file's verdict."""
        self._state.cache_put(path, size, mtime_ns, dataclasses.asdict(verdict))

    def put_many(self, rows: Sequence[CacheEntry]) -> None:
        """Remember many verdicts in one transaction (one disk sync, not one per file)."""
        self._state.cache_put_many(
            (path, size, mtime_ns, dataclasses.asdict(verdict))
            for path, size, mtime_ns, verdict in rows
        )

    def forget(self, path: str) -> None:
        """Drop a file's verdict."""
        self._state.cache_forget(path)


@dataclasses.dataclass(frozen=True)
class _DueTimes:
    """Every entry's next due time, as computed after the last change."""

    times: dict[str, dt.datetime]
    encoded: EncodedJson  # the same, as the heartbeat writes it
    soonest: tuple[dt.datetime, str] | None  # (when, account)
    accounts: int


@dataclasses.dataclass(eq=False)
class _EntryRun:
    """An entry and its rotation in progress."""

    entry: AccountEntry
    catalog: Catalog
    task: asyncio.Task[RotationResult | None] | None = None
    retired: bool = False  # removed by a reload: its rotation ends after the write on the wire
    fired_at: dt.datetime | None = None  # the latest due time, merged ones included

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()


class Daemon:
    """The long-running service."""

    def __init__(
        self,
        settings: Settings,
        api_key: ApiKey | None,
        *,
        dry_run: bool,
        environ: Mapping[str, str],
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.api_key = api_key
        self.dry_run = dry_run
        self.environ = environ
        self.notifier = notifier or SystemdNotifier(None)
        self.state_dir = state_dir_for(settings, dry_run=dry_run)
        self._rng = random.Random()  # noqa: S311 - jitter is not cryptography
        self._stop = asyncio.Event()
        self._stopped_by = "error"  # until a signal asks for the stop
        # The last reload's outcome, in the heartbeat for `rotator reload` to wait on.
        self._reload_outcome: dict[str, object] = {"count": 0, "ok": True, "problems": []}
        self._reload_requested = asyncio.Event()
        self._runs: dict[str, _EntryRun] = {}
        self._catalogs: dict[Path, Catalog] = {}
        self._catalog_locks: dict[Path, asyncio.Lock] = {}
        self._catalog_roots: dict[Path, list[Path]] | None = None  # resolved folder -> keys
        self._old_clients: list[XquikClient] = []
        self._background: set[asyncio.Task[None]] = set()
        self._retired: set[_EntryRun] = set()
        self.metrics: Metrics | None = None
        self.notifications: Notifier | None = None
        self._control: ControlServer | None = None
        self._due_cache: _DueTimes | None = None
        self._stale_figures: set[str] | None = None  # None: all of them
        self._entry_figures: dict[str, EntryFigures] = {}
        self._quiet_adds: int | None = None  # counting start-up's image.added, not logging them

    # -- lifecycle -----------------------------------------------------------------

    async def run(self) -> int:
        """Serve until asked to stop; return the exit code."""
        loop = asyncio.get_running_loop()
        # Bounded and fixed: the default would grow with the machine's core count.
        loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="rotator")
        )
        self.state = StateStore.open(self.state_dir, lock=True)
        self.notifications = start_notifier(self.settings.notify, self.environ)
        try:
            return await self._serve(loop)
        except RotatorError:  # a problem of the setup (a busy metrics port): the CLI prints it
            raise
        except Exception as exc:
            emit("daemon.crashed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.state.close()
            await asyncio.to_thread(stop_notifier, self.notifications)

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> int:
        settings = self.settings
        self.client = self._make_client(settings, self.api_key)
        self.pauses = PauseBoard(
            self.state,
            policy_settings(settings),
            check_credits=self._credits_available,
            check_account=self._account_healthy,
        )
        self.rotator = _rotator(settings, self.state, self.state_dir, self.client, self.pauses)
        self.pacer = self.rotator.pacer
        self.scheduler = RotationScheduler(self._on_due, self._on_missed)
        self.watcher = FolderWatcher(
            loop,
            mode=settings.watch.mode,
            settle=settings.watch.settle,
            poll_interval=settings.watch.poll_interval,
            log=emit,
            on_file_ready=self._on_file_ready,
            on_path_gone=self._on_path_gone,
            on_dir_appeared=self._on_dir_appeared,
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop_by_signal)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
        try:
            emit(
                "daemon.started",
                version=__version__,
                config=str(settings.config_path),
                entries=len(settings.accounts),
                accounts=sorted({entry.account for entry in settings.accounts}),
                dry_run=self.dry_run,
                state_dir=str(self.state_dir),
                key_source=self.api_key.source if self.api_key else None,
                pid=os.getpid(),
            )
            self._start_metrics()
            self.pauses.restore()
            await self._start_control()
            self.watcher.start()
            # Start-up logs one line for the images found, not one per image (10,000 lines
            # of image.added took a third of a warm start at 1,000 entries x 10 images).
            self._quiet_adds = 0
            await self._set_entries(settings.accounts)
            emit(
                "catalog.scanned",
                folders=len(self._catalogs),
                usable=self._quiet_adds,
                rejected=sum(len(catalog.rejected()) for catalog in self._catalogs.values()),
            )
            self._quiet_adds = None
            # Jobs added before the start are taken in one go, not with a wake-up each.
            self._schedule_all(_now(), first_start=True)
            self.scheduler.start()
            # What start-up built (entries, catalogs, jobs) stays for the daemon's life:
            # keep it out of every later garbage collection, whose cost it would set.
            gc.freeze()
            self.notifier.ready(self._status_line())
            self._spawn(self._beat_forever())
            self._spawn(self._rescan_forever())
            await self._main_loop()
        finally:
            await self._shutdown(loop)
        return 0

    async def _main_loop(self) -> None:
        while not self._stop.is_set():
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload_requested.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self._reload_requested.is_set() and not self._stop.is_set():
                self._reload_requested.clear()
                await self._reload()

    async def _shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop taking work, let writes on the wire finish, close everything.

        Every step is best effort: one that fails must not keep the others from running.
        """
        self._stop.set()  # rotations end after the write they have on the wire
        self.notifier.stopping()
        # A second SIGTERM (systemd, a double Ctrl-C) must not kill the drain half-way:
        # it is already stopping, within DRAIN_SECONDS. Reloads are over, too.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, lambda: None)
        self.scheduler.shutdown()
        runs = [*self._runs.values(), *self._retired]
        tasks = [run.task for run in runs if run.task is not None and not run.task.done()]
        writing = [task for task in tasks if task in self.rotator.writing]
        for task in tasks:
            if task not in self.rotator.writing:
                task.cancel()
        if writing:
            await asyncio.wait(writing, timeout=DRAIN_SECONDS)
        for task in [*tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*tasks, *self._background, return_exceptions=True)
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("control", self._stop_control),
            ("pauses", self.pauses.close),
            ("watcher", self._stop_watcher),
            ("metrics", self._stop_metrics),
            ("clients", self._close_clients),
            ("heartbeat", lambda: asyncio.to_thread(remove_heartbeat, self.state_dir)),
        ]
        for name, step in steps:
            try:
                await step()
            except Exception as exc:  # best effort: log it and go on closing the rest
                emit("daemon.shutdown_step_failed", step=name, error=f"{type(exc).__name__}: {exc}")
        emit("daemon.stopped", reason=self._stopped_by, drained=len(writing))

    def _stop_by_signal(self) -> None:
        self._stopped_by = "signal"
        self._stop.set()

    async def _start_control(self) -> None:
        control = ControlServer(self.state_dir, lambda request: manual.handle(self, request))
        try:
            await control.start()
        except OSError as exc:  # the daemon still rotates; commands act on the state instead
            emit("control.unavailable", path=str(control.path), reason=str(exc))
            return
        self._control = control
        emit("control.listening", path=str(control.path))

    async def _stop_control(self) -> None:
        if self._control is not None:
            await self._control.close()

    async def _stop_watcher(self) -> None:
        self.watcher.stop()  # on the loop: its reader and timers belong to it

    async def _stop_metrics(self) -> None:
        if self.metrics is not None:
            remove_listener(self.metrics.observe)
            await asyncio.to_thread(self.metrics.close)

    async def _close_clients(self) -> None:
        for client in [self.client, *self._old_clients]:
            if client is not None:
                await client.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(
            coro, name=getattr(coro, "__qualname__", None)
        )
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            emit(
                "daemon.task_failed",
                task=task.get_name(),
                error=f"{type(exc).__name__}: {exc}",
            )

    async def _beat_forever(self) -> None:
        """Beat the heartbeat and the systemd watchdog, whatever else the daemon is doing."""
        interval = HEARTBEAT_SECONDS
        if self.notifier.watchdog_interval:
            interval = min(interval, self.notifier.watchdog_interval)
        while True:
            self.notifier.watchdog()
            try:
                self._beat()
            except Exception as exc:  # a full disk must not stop the watchdog pings
                emit("daemon.heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(interval)

    async def _rescan_forever(self) -> None:
        """Rescan every folder each ``watch.rescan`` (repairs missed events), sooner after a
        watcher restart; in its own task, so a slow folder never delays the heartbeat."""
        last_rescan = asyncio.get_running_loop().time()
        last_prune = -HISTORY_PRUNE_EVERY
        while True:
            await asyncio.sleep(min(HEARTBEAT_SECONDS, self.settings.watch.rescan))
            try:
                if asyncio.get_running_loop().time() - last_prune >= HISTORY_PRUNE_EVERY:
                    last_prune = asyncio.get_running_loop().time()
                    self.state.prune_history(before=_now() - HISTORY_KEPT)
                watching = self.watcher.check_alive()
                now = asyncio.get_running_loop().time()
                # A restarted observer may have missed events: rescan at once.
                if not watching or now - last_rescan >= self.settings.watch.rescan:
                    last_rescan = now
                    await self._rescan_all(list(self._catalogs))
            except Exception as exc:  # the next round tries again
                emit("catalog.rescan_failed", error=f"{type(exc).__name__}: {exc}")

    def _beat(self) -> None:
        due = self._due()
        summary = {
            "pid": os.getpid(),
            "dry_run": self.dry_run,
            "pauses": [pause.describe() for pause in self.pauses.all()],
            "pause_kinds": sorted({pause.kind for pause in self.pauses.all()}),
            "next_due": due.encoded,
            "status": self._status_line(),
            "reload": self._reload_outcome,
        }
        write_heartbeat(self.state_dir, _now(), summary)
        self.notifier.status(str(summary["status"]))
        if self.metrics is not None:
            self.metrics.update(self._figures())

    def _start_metrics(self) -> None:
        address = self.settings.metrics.address
        if address is None:
            return
        self.metrics = Metrics(credits_per_call=self.settings.api.credits_per_call)
        host, port = self.metrics.serve(*address)
        add_listener(self.metrics.observe)
        emit("metrics.listening", address=f"{host}:{port}", paths=["/metrics", "/healthz"])

    def _changed(self, entry_id: str | None = None) -> None:
        """Note that schedules or figures changed (of one entry, or of all when None).

        Heartbeats and metrics read what was computed last until something changes,
        so an idle daemon does no work per entry.
        """
        self._due_cache = None
        if entry_id is None:
            self._stale_figures = None
        elif self._stale_figures is not None:
            self._stale_figures.add(entry_id)

    def _due(self) -> _DueTimes:
        """Return every entry's next due time, computed again only after a change."""
        if self._due_cache is None:
            times = {
                entry_id: when
                for entry_id in self._runs
                if (when := self.scheduler.next_due(entry_id)) is not None
            }
            soonest = min(times.items(), key=lambda item: item[1], default=None)
            self._due_cache = _DueTimes(
                times=times,
                encoded=EncodedJson.of({k: v.isoformat() for k, v in times.items()}),
                soonest=(soonest[1], self._runs[soonest[0]].entry.account) if soonest else None,
                accounts=len({run.entry.account for run in self._runs.values()}),
            )
        return self._due_cache

    def _figures(self) -> Snapshot:
        """Return the metrics snapshot; only entries changed since the last one are read."""
        stale = self._stale_figures
        if stale is None:
            self._entry_figures = {}
            stale = set(self._runs)
        if stale:
            due = self._due().times
            saved: dict[str, EntryState] = {}
            if len(stale) > 1:
                saved = {row.entry_id: row for row in self.state.entries()}
            for entry_id in stale:
                run = self._runs.get(entry_id)
                if run is None:
                    self._entry_figures.pop(entry_id, None)
                    continue
                state = saved.get(entry_id) if saved else self.state.entry(entry_id)
                when = due.get(entry_id)
                last = state.last_success if state else None
                self._entry_figures[entry_id] = EntryFigures(
                    account=run.entry.account,
                    entry=entry_label(
                        run.entry.account, run.entry.folder, self.settings.config_path.parent
                    ),
                    next_rotation=when.timestamp() if when else None,
                    last_success=last.timestamp() if last else None,
                    usable_images=len(run.catalog.usable()),
                    rejected_images=len(run.catalog.rejected()),
                )
        self._stale_figures = set()
        scopes: dict[str, int] = {}
        for pause in self.pauses.all():
            scopes[pause.scope] = scopes.get(pause.scope, 0) + 1
        return Snapshot(
            entries=tuple(self._entry_figures.values()),
            pauses_by_scope=scopes,
            taken_at=time.monotonic(),
        )

    def _status_line(self) -> str:
        due = self._due()
        parts = [f"{due.accounts} accounts, {len(self._runs)} entries"]
        if due.soonest is not None:
            when, account = due.soonest
            parts.append(
                f"next rotation {when.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC ({account})"
            )
        pauses = self.pauses.all()
        if pauses:
            parts.append(f"{len(pauses)} paused: " + "; ".join(p.describe() for p in pauses))
        if self.dry_run:
            parts.append("dry run")
        if not self._reload_outcome["ok"]:
            problems = self._reload_outcome["problems"]
            first = problems[0] if isinstance(problems, list) and problems else "?"
            parts.insert(0, f"reload failed ({first}); running the previous config")
        return ", ".join(parts)

    # -- entries, catalogs, schedules ------------------------------------------------

    async def _set_entries(
        self, entries: Sequence[AccountEntry]
    ) -> tuple[list[str], list[str], list[str]]:
        """Make the entries in force be ``entries``; return added, removed, changed ids."""
        wanted = {entry.entry_id: entry for entry in entries}
        self.scheduler.set_order(wanted)  # ties in due time go out in config order
        removed = [entry_id for entry_id in self._runs if entry_id not in wanted]
        for entry_id in removed:
            run = self._runs.pop(entry_id)
            self.scheduler.remove(entry_id)
            run.retired = True
            if run.task is not None and run.task not in self.rotator.writing:
                run.task.cancel()
            elif run.busy:
                self._retired.add(run)  # awaited at shutdown if still writing then
        added: list[str] = []
        changed: list[str] = []
        fits = fit_settings(self.settings)
        in_config = dict.fromkeys(entry.folder for entry in entries)  # once each, in order
        new_folders = [folder for folder in in_config if folder not in self._catalogs]
        # Many new folders (a start): read the validation cache once, not once per file.
        snapshot = self.state.cache_snapshot() if len(new_folders) >= SCAN_BATCH else None
        caches = []
        for folder in new_folders:
            self._catalog_roots = None
            cache = StateValidationCache(self.state)
            cache.snapshot = snapshot
            caches.append(cache)
            self._catalogs[folder] = cache.catalog = Catalog(folder, fits, cache, self._catalog_log)
            self._catalog_locks[folder] = asyncio.Lock()
            # Watch first, then scan: a file that lands in between is seen by one of them.
            try:
                self.watcher.watch(self._catalogs[folder].folder, resolved=True)
            except (RotatorError, OSError) as exc:
                # A folder that does not exist yet is watched (and scanned) once it does.
                emit("watch.failed", folder=str(folder), reason=str(exc))
        await self._rescan_all(new_folders)
        for cache in caches:
            cache.snapshot = None  # it was true for that scan only: later ones ask the state
        for entry_id, entry in wanted.items():
            folder = entry.folder
            existing = self._runs.get(entry_id)
            if existing is None:
                self._runs[entry_id] = _EntryRun(entry=entry, catalog=self._catalogs[folder])
                added.append(entry_id)
                continue
            existing.catalog = self._catalogs[folder]  # new after an [images] change
            if existing.entry != entry:
                existing.entry = entry
                changed.append(entry_id)
        self._changed()
        in_use = {entry.folder for entry in entries}
        for folder in [folder for folder in self._catalogs if folder not in in_use]:
            self._catalog_roots = None
            del self._catalog_locks[folder]
            self.watcher.unwatch(self._catalogs.pop(folder).folder)
        return added, removed, changed

    def _schedule_all(
        self, now: dt.datetime, *, first_start: bool, only: set[str] | None = None
    ) -> None:
        known = {saved.entry_id: saved for saved in self.state.entries()}  # one read for all
        for entry_id, run in self._runs.items():
            if only is not None and entry_id not in only:
                continue
            saved = known.get(entry_id) or EntryState(entry_id=entry_id)
            self._schedule(run, saved, now, first_start=first_start)

    def _schedule(
        self, run: _EntryRun, saved: EntryState, now: dt.datetime, *, first_start: bool
    ) -> None:
        """(Re)schedule one entry from its config and its history."""
        entry = run.entry
        self._changed(entry.entry_id)
        schedule = entry.schedule
        if schedule.every is None:
            self.scheduler.schedule_cron(entry.entry_id, schedule, entry.timezone)
            if saved.last_fire is None:
                self._record_fire(run, now)  # the baseline: nothing was owed before now
            elif first_start and cron_missed_since(schedule, entry.timezone, saved.last_fire, now):
                # Missed while the daemon was down: run once now (coalesced), not once per miss.
                self._on_due(entry.entry_id)
            return
        # "every D" counts from the last rotation's end: its success, or the end recorded
        # in last_fire (a give-up too; a rotation cut short by a stop records none).
        when = every_due(schedule.every, now, saved.last_success, saved.last_fire)
        self.scheduler.schedule_at(entry.entry_id, when + self._jitter(entry))

    def _jitter(self, entry: AccountEntry) -> dt.timedelta:
        return (
            dt.timedelta(seconds=self._rng.uniform(0, entry.jitter))
            if entry.jitter
            else dt.timedelta()
        )

    def _on_due(self, entry_id: str) -> None:
        """Start a rotation for an entry, or merge it into the one still waiting."""
        run = self._runs.get(entry_id)
        if run is None or self._stop.is_set():
            return
        self._changed(entry_id)  # its job moved on to the next due time, or ended
        run.fired_at = _now()  # recorded when the rotation ends, so a crash catches it up
        if run.busy:
            emit("rotation.merged", account=run.entry.account, entry=entry_id)
            return
        run.task = asyncio.get_running_loop().create_task(self._rotate(run))

    def _record_fire(self, run: _EntryRun, when: dt.datetime) -> None:
        try:
            self.state.record_fire(run.entry.entry_id, run.entry.account, when)
        except RotatorError as exc:  # the rotations matter more than the bookkeeping
            emit("state.write_failed", entry=run.entry.entry_id, error=str(exc))

    def _stop_reason(self, run: _EntryRun) -> str | None:
        if self._stop.is_set():
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
        if run is None or run.busy or self._stop.is_set():
            raise RotatorError("the entry is busy or the daemon is stopping; try again soon")
        task = asyncio.get_running_loop().create_task(self._rotate(run, image=image, by_hand=True))
        run.task = task  # awaited (and drained at shutdown) like any rotation
        return await task

    async def _rotate(
        self, run: _EntryRun, *, image: str | None = None, by_hand: bool = False
    ) -> RotationResult | None:
        entry = run.entry
        result = None
        try:
            if entry.schedule.every is None and entry.jitter and not by_hand:
                await asyncio.sleep(self._jitter(entry).total_seconds())
            result = await self.rotator.rotate(
                entry,
                run.catalog,
                image=image,
                wait_for_pauses=not by_hand,
                stop_reason=lambda: self._stop_reason(run),
            )
            if self._stop_reason(run) is None and run.fired_at is not None:
                # Done with this due time: a restart from here on owes it nothing. An
                # "every" entry keeps the rotation's end instead, success or give-up: the
                # next one is due D after it, across restarts too.
                ended = run.fired_at if entry.schedule.every is None else _now()
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
                and not self._stop.is_set()
                and self._runs.get(entry.entry_id) is run
                and (not by_hand or (result is not None and result.ok))
            ):
                # "every D" counts from this rotation's end: the success just recorded.
                when = _now() + dt.timedelta(seconds=every) + self._jitter(run.entry)
                self.scheduler.schedule_at(entry.entry_id, when)
            self._changed(entry.entry_id)
            if self.metrics is not None:
                self.metrics.update(self._figures())
            if run.task is asyncio.current_task():
                run.task = None  # over: its task and result are not kept per entry
        return result

    # -- folders -----------------------------------------------------------------------

    def _catalogs_for(self, path: Path) -> list[Path]:
        """Return the folders whose catalog holds ``path`` (watcher paths are resolved).

        One look-up per ancestor of ``path``: the cost follows its depth, not the folder count.
        """
        if self._catalog_roots is None:  # made again after the catalogs changed
            self._catalog_roots = {}
            for folder, catalog in self._catalogs.items():
                self._catalog_roots.setdefault(catalog.folder, []).append(folder)
        roots = self._catalog_roots
        return [folder for root in (path, *path.parents) for folder in roots.get(root, ())]

    async def _rescan(self, folder: Path, *, prune: bool = True) -> None:
        await self._rescan_all([folder], prune=prune)

    async def _rescan_all(self, folders: Sequence[Path], *, prune: bool = True) -> None:
        """Scan folders, many to a worker-thread call, and prune fitted copies once at the end.

        Each catalog's lock is held from its scan to applying it, so a file event handled
        meanwhile cannot be undone by an older scan.
        """
        pending = [folder for folder in folders if folder in self._catalogs]
        for start in range(0, len(pending), SCAN_BATCH):
            batch = [
                (folder, self._catalogs[folder]) for folder in pending[start : start + SCAN_BATCH]
            ]
            locks = [self._catalog_locks[folder] for folder, _ in batch]
            for lock in locks:
                await lock.acquire()
            try:
                results = await asyncio.to_thread(_scan_all, [catalog for _, catalog in batch])
                for (folder, catalog), result in zip(batch, results, strict=True):
                    if self._catalogs.get(folder) is catalog:  # not dropped meanwhile
                        catalog.apply_scan(result)
                        self._folder_changed(folder, len(pending))
            finally:
                for lock in locks:
                    lock.release()
        if prune and pending:
            await self._prune_fitted()

    async def _prune_fitted(self) -> None:
        """Delete fitted copies whose source is gone from every catalog."""
        keep: set[str] = set()
        for catalog in self._catalogs.values():
            keep |= catalog.fitted_names()
        await asyncio.to_thread(prune_fitted, self.state_dir / FITTED_DIR, keep)

    def _catalog_log(self, event: str, **fields: object) -> None:
        """Log for the catalogs; the first scan's additions become one summary line."""
        if event == "image.added" and self._quiet_adds is not None:
            self._quiet_adds += 1
            return
        emit(event, **fields)

    def _folder_changed(self, folder: Path, among: int = 1) -> None:
        """Note that a folder's images changed (for the metrics); all at once in a full rescan."""
        if among > 1:
            self._changed()
            return
        for entry_id, run in self._runs.items():
            if run.entry.folder == folder:
                self._changed(entry_id)

    def _on_file_ready(self, path: Path) -> None:
        for folder in self._catalogs_for(path):
            self._spawn(self._inspect(folder, path))

    async def _inspect(self, folder: Path, path: Path) -> None:
        catalog = self._catalogs.get(folder)
        if catalog is None:
            return
        async with self._catalog_locks[folder]:
            result = await asyncio.to_thread(catalog.inspect_path, path)
            if result is None:
                catalog.remove_path(path)
            else:
                catalog.apply_file(result)
        self._folder_changed(folder)

    def _on_path_gone(self, path: Path) -> None:
        folders = self._catalogs_for(path)
        for folder in folders:
            # Under the catalog's lock: a rescan in flight must not bring the file back.
            self._spawn(self._remove(folder, path))

    async def _remove(self, folder: Path, path: Path) -> None:
        catalog = self._catalogs.get(folder)
        if catalog is None:
            return
        async with self._catalog_locks[folder]:
            catalog.remove_path(path)
        self._folder_changed(folder)
        await self._prune_fitted()

    def _on_dir_appeared(self, path: Path) -> None:
        for folder in self._catalogs_for(path):
            self._spawn(self._rescan(folder))

    # -- free reads for pauses -----------------------------------------------------------

    async def _credits_available(self) -> bool | None:
        if self.client is None:
            return None
        try:
            balance = await self.client.credits_balance()
        except RotatorError as exc:
            emit("credits.check_failed", error=str(exc))
            return None
        emit("credits.checked", balance=balance, needed=self.settings.api.credits_per_call)
        return balance >= self.settings.api.credits_per_call

    async def _account_healthy(self, account: str) -> bool | None:
        if self.client is None:
            return None
        try:
            accounts = await self.client.x_accounts()
        except RotatorError as exc:
            emit("accounts.check_failed", error=str(exc))
            return None
        known = find_x_account(accounts, account)
        return known is not None and known.usable

    # -- reload -----------------------------------------------------------------------------

    def _make_client(self, settings: Settings, key: ApiKey | None) -> XquikClient | None:
        if self.dry_run or key is None:
            return None
        return _client(settings, key)

    async def _reload(self) -> None:
        """Re-read the config; keep the old one if the new one is invalid."""
        self.notifier.reloading()
        await self.pauses.sync()  # `rotator resume` works even while the config is broken
        try:
            new = load_settings(self.settings.config_path, self.environ)
            key = None if self.dry_run else find_api_key(new, self.environ)
            if not self.dry_run and key is None:
                raise ConfigError(NO_KEY)
            new_key = key is not None and (
                self.api_key is None or key.reveal() != self.api_key.reveal()
            )
            old = self.settings
            client_changed = new_key or (new.api.base_url, new.api.timeout) != (
                old.api.base_url,
                old.api.timeout,
            )
            # Built before anything changes: a client that cannot be made keeps the old config.
            client = self._make_client(new, key) if client_changed else self.client
        except RotatorError as exc:
            problems = getattr(exc, "problems", None) or [str(exc)]
            emit("daemon.reload_failed", problems=problems, kept="the running config")
            self._reload_done(problems)
            return
        self.settings = new
        configure(new.log.level, new.log.format)
        self.pacer.reconfigure(
            new.rate_limit.writes, new.rate_limit.window, new.rate_limit.concurrency
        )
        self.pauses.settings = self.rotator.policy = policy_settings(new)
        self.rotator.api = new.api
        if client_changed:
            if self.client is not None:
                self._spawn(self._close_when_idle(self.client))
            self.client = self.rotator.client = client
            self.api_key = key
        if new_key:
            await self.pauses.end("key", None, "a new API key was loaded")
        if new.notify != old.notify:
            replaced, self.notifications = (
                self.notifications,
                start_notifier(new.notify, self.environ),
            )
            self._spawn(asyncio.to_thread(stop_notifier, replaced))
        if fit_settings(new) != fit_settings(old):
            self._drop_catalogs()  # made again below with the new [images] settings
        added, removed, changed = await self._set_entries(new.accounts)
        self._schedule_all(_now(), first_start=False, only=set(added) | set(changed))
        emit(
            "daemon.reloaded",
            entries=len(self._runs),
            added=added,
            removed=removed,
            changed=changed,
            new_key=new_key,
            needs_restart=_restart_only_changes(old, new),
        )
        self._reload_done([])

    def _reload_done(self, problems: list[str]) -> None:
        """Publish a reload's outcome: STATUS= and READY=1, and the heartbeat at once."""
        count = self._reload_outcome["count"]
        self._reload_outcome = {
            "count": (count if isinstance(count, int) else 0) + 1,
            "ok": not problems,
            "problems": [redact_text(str(problem)) for problem in problems],
        }
        self.notifier.ready(self._status_line())
        try:
            self._beat()
        except OSError as exc:  # `rotator reload` then times out and says so
            emit("daemon.heartbeat_failed", error=f"{type(exc).__name__}: {exc}")

    async def _close_when_idle(self, client: XquikClient) -> None:
        """Close a replaced client once the writes (and polls) that use it are over."""
        self._old_clients.append(client)
        deadline = asyncio.get_running_loop().time() + 900
        while self.rotator.writing and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(1)
        self._old_clients.remove(client)
        await client.aclose()

    def _drop_catalogs(self) -> None:
        for catalog in self._catalogs.values():
            self.watcher.unwatch(catalog.folder)
        self._catalogs.clear()
        self._catalog_roots = None
        self._catalog_locks.clear()


def _scan_all(catalogs: Sequence[Catalog]) -> list[ScanResult]:
    """Scan catalogs one after the other (in a worker thread)."""
    return [catalog.scan() for catalog in catalogs]


def _restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """Return the changed settings a reload cannot apply (they wait for a restart)."""
    return [
        name for name in ("watch", "metrics", "state") if getattr(old, name) != getattr(new, name)
    ]


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
        pauses = PauseBoard(state, policy_settings(settings))
        pauses.restore()
        client = None if dry_run or key is None else _client(settings, key)
        rotator = _rotator(settings, state, state_dir, client, pauses)
        catalogs: dict[Path, Catalog] = {}
        jobs = []
        for entry in entries:
            if entry.folder not in catalogs:
                catalog = Catalog(
                    entry.folder, fit_settings(settings), StateValidationCache(state), emit
                )
                catalog.apply_scan(await asyncio.to_thread(catalog.scan))
                catalogs[entry.folder] = catalog
            catalog = catalogs[entry.folder]
            forced = _forced_image(catalog.folder, image)
            if image is not None and forced is None:
                continue
            if forced is not None and catalog.get(forced) is None:
                reasons = dict(catalog.rejected())
                why = reasons.get(forced, "not found among the folder's images")
                raise ConfigError(f"--image: {image} cannot be sent: {why}")
            jobs.append(
                rotator.rotate(entry, catalogs[entry.folder], image=forced, wait_for_pauses=False)
            )
        if not jobs:
            raise ConfigError(f"--image: {image} is not inside the folder of any chosen entry")
        gc.freeze()  # the entries and catalogs loaded above live until the end
        try:
            return list(await asyncio.gather(*jobs))
        finally:
            await pauses.close()
            if client is not None:
                await client.aclose()


def _forced_image(folder: Path, image: str | None) -> str | None:
    """Return ``image`` relative to ``folder``, or None when it is not inside."""
    if image is None:
        return None
    path = Path(image).expanduser().resolve()
    if not path.is_relative_to(folder):
        return None
    return escape_name(path.relative_to(folder).as_posix())


def _rotator(
    settings: Settings,
    state: StateStore,
    state_dir: Path,
    client: XquikClient | None,
    pauses: PauseBoard,
) -> Rotator:
    """Build the rotation machinery (with its own pacer) from the settings."""
    limits = settings.rate_limit
    return Rotator(
        state=state,
        client=client,
        pacer=WritePacer(limits.writes, limits.window, limits.concurrency),
        pauses=pauses,
        policy=pauses.settings,
        api=settings.api,
        fitted_dir=state_dir / FITTED_DIR,
        credits_per_call=settings.api.credits_per_call,
    )


def _client(settings: Settings, key: ApiKey) -> XquikClient:
    add_secret(key.reveal())
    return XquikClient(settings.api.base_url, key.reveal(), timeout=settings.api.timeout)
