"""The daemon's lifecycle: start, serve, reload, shut down.

``Daemon.run`` opens the state (one daemon per state dir), builds its parts from the
settings (``parts.build_parts``), scans and watches the image folders (``library``),
schedules every entry (``entries``), tells systemd READY, then serves until SIGTERM or
SIGINT. Signal handlers only set a flag or queue a reload; the main loop does the work.
A reload reads the config again and, if it is valid, builds a new parts bundle and swaps
it whole (what must live on is carried: see ``parts``); the old client is closed once no
write uses it. On the way out the daemon stops taking work, lets writes already on the
wire finish (at most ``DRAIN_SECONDS``), and exits 0. The heartbeat file, the systemd
watchdog and the metrics are fed from here.

One job at some 450 lines: the daemon's life from start to exit, and the things only a
live daemon does on its way (heartbeat, reload, drain). What it runs is elsewhere: the
parts in ``parts``, the folders in ``library``, the entries and their rotations in
``entries``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import gc
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from rotator import __version__, manual
from rotator.catalog import Catalog
from rotator.client import XquikClient
from rotator.clock import utc_now
from rotator.config import Settings, load_settings
from rotator.control import ControlServer
from rotator.entries import Entries
from rotator.errors import ConfigError, RotatorError
from rotator.heartbeat import remove_heartbeat, write_heartbeat
from rotator.keys import NO_KEY, ApiKey, find_api_key
from rotator.library import Library
from rotator.logs import add_listener, configure, emit, redact_text, remove_listener
from rotator.metrics import Metrics
from rotator.notify import Notifier, start_notifier, stop_notifier
from rotator.parts import FITTED_DIR, Parts, build_parts, state_dir_for
from rotator.pauses import PauseBoard
from rotator.rotation import RotationResult
from rotator.state import StateStore
from rotator.systemd import SystemdNotifier

DRAIN_SECONDS = 10.0  # how long writes already sent may take to finish on shutdown
HEARTBEAT_SECONDS = 10.0
HISTORY_KEPT = dt.timedelta(days=365)  # the audit trail of writes, kept a year
HISTORY_PRUNE_EVERY = 86400.0
WORKER_THREADS = 4  # scans, image decoding, polls: the same few threads whatever the machine
CLIENT_IDLE_WAIT = 900.0  # how long a replaced client waits for its writes before closing


class Daemon:
    """The long-running service."""

    parts: Parts  # the bundle in force, built when serving starts and swapped by reloads
    state: StateStore
    library: Library
    entries: Entries

    def __init__(
        self,
        settings: Settings,
        api_key: ApiKey | None,
        *,
        dry_run: bool,
        environ: Mapping[str, str],
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self._at_start = (settings, api_key)  # the parts are built from these once serving starts
        self.dry_run = dry_run
        self.environ = environ
        self.notifier = notifier or SystemdNotifier(None)
        self.state_dir = state_dir_for(settings, dry_run=dry_run)
        self._stop = asyncio.Event()
        self._stopped_by = "error"  # until a signal asks for the stop
        # The last reload's outcome, in the heartbeat for `rotator reload` to wait on.
        self._reload_outcome: dict[str, object] = {"count": 0, "ok": True, "problems": []}
        self._reload_requested = asyncio.Event()
        self._old_clients: list[XquikClient] = []
        self._background: set[asyncio.Task[None]] = set()
        self.metrics: Metrics | None = None
        self.notifications: Notifier | None = None
        self._control: ControlServer | None = None

    @property
    def settings(self) -> Settings:
        """Return the settings in force."""
        return self.parts.settings

    @property
    def pauses(self) -> PauseBoard:
        """Return the pause board (one for the daemon's life)."""
        return self.parts.pauses

    # -- lifecycle -----------------------------------------------------------------

    async def run(self) -> int:
        """Serve until asked to stop; return the exit code."""
        loop = asyncio.get_running_loop()
        # Bounded and fixed: the default would grow with the machine's core count.
        loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="rotator")
        )
        self.state = StateStore.open(self.state_dir, lock=True)
        self.notifications = start_notifier(self._at_start[0].notify, self.environ)
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
        settings, key = self._at_start
        self.parts = self._build(settings, key, carried=None)
        self.library = Library(
            loop,
            state=self.state,
            fitted_dir=self.state_dir / FITTED_DIR,
            watch=settings.watch,
            spawn=self._spawn,
            on_change=self._folder_changed,
        )
        self.entries = Entries(
            state=self.state,
            parts=lambda: self.parts,
            library=self.library,
            stopping=self._stop.is_set,
            on_rotated=self._update_metrics,
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
                key_source=key.source if key else None,
                pid=os.getpid(),
            )
            self._start_metrics()
            self.pauses.restore()
            await self._start_control()
            await self.library.start([entry.folder for entry in settings.accounts], self.parts.fit)
            await self.entries.use(settings.accounts)
            # Jobs added before the start are taken in one go, not with a wake-up each.
            self.entries.schedule_all(utc_now(), first_start=True)
            self.entries.scheduler.start()
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

    def _build(self, settings: Settings, key: ApiKey | None, *, carried: Parts | None) -> Parts:
        return build_parts(
            settings,
            key,
            state=self.state,
            state_dir=self.state_dir,
            dry_run=self.dry_run,
            in_force=lambda: self.parts,
            carried=carried,
            free_checks=True,
        )

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
        self.entries.scheduler.shutdown()
        on_the_wire = self.parts.rotator.writing
        tasks = self.entries.tasks()
        writing = [task for task in tasks if task in on_the_wire]
        for task in tasks:
            if task not in on_the_wire:
                task.cancel()
        if writing:
            await asyncio.wait(writing, timeout=DRAIN_SECONDS)
        for task in [*tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*tasks, *self._background, return_exceptions=True)
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("control", self._stop_control),
            ("pauses", self.pauses.close),
            ("watcher", self._stop_watching),
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

    async def _stop_watching(self) -> None:
        self.library.close()

    async def _stop_metrics(self) -> None:
        if self.metrics is not None:
            remove_listener(self.metrics.observe)
            await asyncio.to_thread(self.metrics.close)

    async def _close_clients(self) -> None:
        for client in [self.parts.client, *self._old_clients]:
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

    # -- heartbeat, watchdog, metrics, periodic repair ------------------------------------

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
                    self.state.prune_history(before=utc_now() - HISTORY_KEPT)
                watching = self.library.watcher.check_alive()
                now = asyncio.get_running_loop().time()
                # A restarted observer may have missed events: rescan at once.
                if not watching or now - last_rescan >= self.settings.watch.rescan:
                    last_rescan = now
                    await self.library.rescan()
            except Exception as exc:  # the next round tries again
                emit("catalog.rescan_failed", error=f"{type(exc).__name__}: {exc}")

    def _beat(self) -> None:
        due = self.entries.due()
        summary = {
            "pid": os.getpid(),
            "dry_run": self.dry_run,
            "pauses": [pause.summary() for pause in self.pauses.all()],
            "pause_kinds": sorted({pause.kind for pause in self.pauses.all()}),
            "next_due": due.encoded,
            "status": self._status_line(),
            "reload": self._reload_outcome,
        }
        write_heartbeat(self.state_dir, utc_now(), summary)
        self.notifier.status(str(summary["status"]))
        self._update_metrics()

    def _start_metrics(self) -> None:
        address = self.settings.metrics.address
        if address is None:
            return
        self.metrics = Metrics(credits_per_call=lambda: self.parts.rotation.credits_per_call)
        host, port = self.metrics.serve(*address)
        add_listener(self.metrics.observe)
        emit("metrics.listening", address=f"{host}:{port}", paths=["/metrics", "/healthz"])

    def _folder_changed(self, folder: Path | None) -> None:
        self.entries.folder_changed(folder)  # made after the library, which calls this

    def _update_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.update(self.entries.figures(self.pauses.all()))

    def _status_line(self) -> str:
        due = self.entries.due()
        parts = [f"{due.accounts} accounts, {len(self.entries)} entries"]
        if due.soonest is not None:
            when, account = due.soonest
            parts.append(
                f"next rotation {when.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC ({account})"
            )
        pauses = self.pauses.all()
        if pauses:
            parts.append(f"{len(pauses)} paused: " + "; ".join(p.summary() for p in pauses))
        if self.dry_run:
            parts.append("dry run")
        if not self._reload_outcome["ok"]:
            problems = self._reload_outcome["problems"]
            first = problems[0] if isinstance(problems, list) and problems else "?"
            parts.insert(0, f"reload failed ({first}); running the previous config")
        return ", ".join(parts)

    # -- by hand, through the control socket (see ``manual.LiveDaemon``) -----------------

    def catalog_of(self, entry_id: str) -> Catalog | None:
        """Return the catalog of an entry in force."""
        return self.entries.catalog_of(entry_id)

    def is_busy(self, entry_id: str) -> bool:
        """Tell whether a rotation of the entry is running (or waiting out a pause)."""
        return self.entries.is_busy(entry_id)

    async def rotate_by_hand(self, entry_id: str, image: str | None) -> RotationResult | None:
        """Rotate an entry now, not waiting for pauses; None when it failed inside."""
        return await self.entries.rotate_by_hand(entry_id, image)

    # -- reload -----------------------------------------------------------------------------

    async def _reload(self) -> None:
        """Re-read the config and swap in parts built from it; keep the old ones if invalid."""
        self.notifier.reloading()
        await self.pauses.sync()  # `rotator resume` works even while the config is broken
        old = self.parts
        try:
            settings = load_settings(old.settings.config_path, self.environ)
            key = None if self.dry_run else find_api_key(settings, self.environ)
            if not self.dry_run and key is None:
                raise ConfigError(NO_KEY)
            # Built before anything changes: parts that cannot be made keep the old config.
            new = self._build(settings, key, carried=old)
        except RotatorError as exc:
            problems = getattr(exc, "problems", None) or [str(exc)]
            emit("daemon.reload_failed", problems=problems, kept="the running config")
            self._reload_done(problems)
            return
        self.parts = new  # the swap: every part reads the new bundle from here on
        configure(settings.log.level, settings.log.format)
        if old.client is not None and new.client is not old.client:
            self._spawn(self._close_when_idle(old.client))
        new_key = key is not None and (old.key is None or key.reveal() != old.key.reveal())
        if new_key:
            await self.pauses.end("key", None, "a new API key was loaded")
        if settings.notify != old.settings.notify:
            replaced, self.notifications = (
                self.notifications,
                start_notifier(settings.notify, self.environ),
            )
            self._spawn(asyncio.to_thread(stop_notifier, replaced))
        added, removed, changed = await self.entries.use(settings.accounts)
        self.entries.schedule_all(utc_now(), first_start=False, only=set(added) | set(changed))
        emit(
            "daemon.reloaded",
            entries=len(self.entries),
            added=added,
            removed=removed,
            changed=changed,
            new_key=new_key,
            needs_restart=_restart_only_changes(old.settings, settings),
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
        deadline = asyncio.get_running_loop().time() + CLIENT_IDLE_WAIT
        while self.parts.rotator.writing and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(1)
        self._old_clients.remove(client)
        await client.aclose()


def _restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """Return the changed settings a reload cannot apply (they wait for a restart)."""
    return [
        name for name in ("watch", "metrics", "state") if getattr(old, name) != getattr(new, name)
    ]
