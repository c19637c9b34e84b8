"""Filesystem events of image folders, delivered on the event loop once files settle.

This is the only module that imports watchdog. Observer threads do nothing but hand
each raw event to the loop (``loop.call_soon_threadsafe``): an exception inside a
watchdog handler silently kills its thread. Everything else happens on the loop: a
created or modified file is reported by ``on_file_ready`` only after its size and
mtime stayed the same for ``settle`` seconds; deletions and moves out are reported by
``on_path_gone`` at once; new folders by ``on_dir_appeared`` (the service rescans them,
because files moved in with a folder produce no events of their own).

Call every method from the loop's thread. ``stop()`` joins the observer threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from rotator.errors import RotatorError

WatchMode = Literal["auto", "native", "polling"]
ObserverKind = Literal["native", "polling"]

# Opened / closed-without-write events are left out: our own reads would echo back.
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]
_MAX_CHECK_INTERVAL = 0.5
_MIN_CHECK_INTERVAL = 0.01
_FOLDER_MISSING = (errno.ENOENT, errno.ENOTDIR)

Signature = tuple[int, int, int]  # size, mtime_ns, ctime_ns


class _Forwarder(FileSystemEventHandler):
    """Hand every raw event to the loop and do nothing else (runs on watchdog's thread)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sink: Callable[[FileSystemEvent], None]
    ) -> None:
        self._loop = loop
        self._sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        # A closed loop means we are shutting down: the event no longer matters.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._sink, event)


@dataclasses.dataclass
class _Settling:
    """A path waiting to stay unchanged for ``settle`` seconds."""

    signature: Signature | None
    stable_since: float
    timer: asyncio.TimerHandle | None = None


class FolderWatcher:
    """Watch folders (recursively) and report settled files, gone paths and new folders."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        mode: WatchMode,
        settle: float,
        poll_interval: float,
        log: Callable[..., None],
        on_file_ready: Callable[[Path], None],
        on_path_gone: Callable[[Path], None],
        on_dir_appeared: Callable[[Path], None],
        native_observer_factory: Callable[[], BaseObserver] = Observer,
    ) -> None:
        if mode not in ("auto", "native", "polling"):
            raise ValueError(f"watch mode must be auto, native or polling, not {mode!r}")
        self._loop = loop
        self._mode = mode
        self._settle = max(0.0, settle)
        self._check_interval = min(max(self._settle / 2, _MIN_CHECK_INTERVAL), _MAX_CHECK_INTERVAL)
        self._poll_interval = poll_interval
        self._log = log
        self._on_file_ready = on_file_ready
        self._on_path_gone = on_path_gone
        self._on_dir_appeared = on_dir_appeared
        self._native_observer_factory = native_observer_factory
        self._handler = _Forwarder(loop, self._on_event)
        self._observers: dict[ObserverKind, BaseObserver] = {}
        self._folders: dict[Path, tuple[ObserverKind, ObservedWatch] | None] = {}
        self._settling: dict[Path, _Settling] = {}
        self._reported: dict[Path, Signature] = {}
        self._running = False

    @property
    def mode_in_use(self) -> str:
        """Return "native", "polling", or "native+polling" when some folders fell back."""
        kinds = sorted({entry[0] for entry in self._folders.values() if entry is not None})
        if not kinds:
            return "polling" if self._mode == "polling" else "native"
        return "+".join(kinds)

    def watch(self, folder: Path) -> None:
        """Start watching ``folder`` and everything under it; a folder already watched is kept."""
        key = Path(os.path.realpath(folder))
        if key in self._folders:
            return
        # Kept even when missing: check_alive attaches it once the folder appears.
        self._folders[key] = None
        if not key.is_dir():
            raise RotatorError(f"cannot watch {key} yet: it is not a folder (watched once it is)")
        if self._running:
            self._folders[key] = self._schedule(key)

    def unwatch(self, folder: Path) -> None:
        """Stop watching ``folder``; forget its pending files."""
        key = Path(os.path.realpath(folder))
        entry = self._folders.pop(key, None)
        if entry is not None:
            kind, watch = entry
            observer = self._observers.get(kind)
            if observer is not None:
                # It may already be gone with its folder.
                with contextlib.suppress(KeyError, OSError):
                    observer.unschedule(watch)
        self._forget_under(key)

    def start(self) -> None:
        """Start the observers and watch every folder given so far."""
        if self._running:
            return
        self._running = True
        for folder in self._folders:
            if folder.is_dir():  # a missing one is attached by check_alive when it appears
                self._folders[folder] = self._schedule(folder)

    def stop(self) -> None:
        """Stop the observers, join their threads and drop pending files."""
        self._running = False
        for observer in self._observers.values():
            observer.stop()
        for observer in self._observers.values():
            if observer.is_alive():
                observer.join()
        self._observers.clear()
        for folder in self._folders:
            self._folders[folder] = None
        for settling in self._settling.values():
            if settling.timer is not None:
                settling.timer.cancel()
        self._settling.clear()

    def check_alive(self) -> bool:
        """Restart dead observer threads and re-attach folders; False if anything was restarted.

        Events may have been lost meanwhile, so after False the service should rescan.
        A watched folder that was deleted is watched again once it exists again.
        """
        if not self._running:
            return True
        healthy = True
        for kind, observer in list(self._observers.items()):
            if observer.is_alive():
                continue
            healthy = False
            self._log("watch.restarted", mode=kind, reason="observer thread died")
            del self._observers[kind]
            with contextlib.suppress(Exception):
                observer.stop()
            for folder, entry in self._folders.items():
                if entry is not None and entry[0] == kind:
                    self._folders[folder] = None
        for folder, entry in list(self._folders.items()):
            if entry is not None:
                kind, watch = entry
                observer = self._observers[kind]
                if any(e.watch == watch and e.is_alive() for e in observer.emitters):
                    continue
                # An emitter stops by itself when its folder is deleted.
                with contextlib.suppress(KeyError, OSError):
                    observer.unschedule(watch)
                self._folders[folder] = None
                healthy = False
            if not folder.is_dir():
                continue  # still missing: try again at the next check
            try:
                kind, watch = self._folders[folder] = self._schedule(folder)
            except RotatorError as exc:
                self._log("watch.failed", folder=str(folder), reason=str(exc))
                continue
            healthy = False
            self._log("watch.restarted", folder=str(folder), mode=kind)
        return healthy

    # -- scheduling -----------------------------------------------------------------------

    def _schedule(self, folder: Path) -> tuple[ObserverKind, ObservedWatch]:
        """Watch one folder with the configured kind of observer, falling back if allowed."""
        if self._mode == "polling":
            return "polling", self._schedule_on("polling", folder)
        try:
            return "native", self._schedule_on("native", folder)
        except OSError as exc:
            reason = _describe_os_error(exc)
            if self._mode == "native" or exc.errno in _FOLDER_MISSING:
                raise RotatorError(f"cannot watch {folder} natively: {reason}") from exc
            self._log("watch.fallback", folder=str(folder), reason=reason)
        try:
            return "polling", self._schedule_on("polling", folder)
        except OSError as exc:
            raise RotatorError(f"cannot watch {folder}: {_describe_os_error(exc)}") from exc

    def _schedule_on(self, kind: ObserverKind, folder: Path) -> ObservedWatch:
        observer = self._observers.get(kind)
        if observer is None:
            if kind == "native":
                observer = self._native_observer_factory()
            else:
                observer = PollingObserver(timeout=self._poll_interval)
            observer.daemon = True
            observer.start()
            self._observers[kind] = observer
        return observer.schedule(
            self._handler, str(folder), recursive=True, event_filter=_EVENT_FILTER
        )

    # -- events, on the loop ----------------------------------------------------------------

    def _on_event(self, event: FileSystemEvent) -> None:
        """Turn one raw watchdog event into settling, gone or appeared."""
        if not self._running:
            return
        source = _as_path(event.src_path)
        if isinstance(event, FileMovedEvent | DirMovedEvent):
            if source is not None:
                self._gone(source)
            destination = _as_path(event.dest_path)
            if destination is not None and self._is_watched(destination):
                if event.is_directory:
                    self._on_dir_appeared(destination)
                else:
                    self._start_settling(destination)
            return
        if source is None or not self._is_watched(source):
            return
        if isinstance(event, FileDeletedEvent | DirDeletedEvent):
            self._gone(source)
        elif isinstance(event, DirCreatedEvent):
            self._on_dir_appeared(source)
        elif not event.is_directory:
            self._start_settling(source)

    def _gone(self, path: Path) -> None:
        self._forget_under(path)
        if self._is_watched(path):
            self._on_path_gone(path)

    def _start_settling(self, path: Path) -> None:
        """Restart the quiet-time clock for ``path`` (a new write means not done yet)."""
        now = self._loop.time()
        settling = self._settling.get(path)
        if settling is None:
            settling = _Settling(signature=_signature(path), stable_since=now)
            self._settling[path] = settling
        else:
            settling.signature = _signature(path)
            settling.stable_since = now
        if settling.timer is None:
            settling.timer = self._loop.call_later(self._check_interval, self._check, path)

    def _check(self, path: Path) -> None:
        """Report ``path`` once it stayed unchanged for ``settle`` seconds; else look again."""
        settling = self._settling.get(path)
        if settling is None or not self._running:
            return
        settling.timer = None
        current = _signature(path)
        if current is None:
            # Gone or a folder now: deletions and folders have their own events.
            del self._settling[path]
            return
        now = self._loop.time()
        if current != settling.signature:
            settling.signature = current
            settling.stable_since = now
        elif now - settling.stable_since >= self._settle:
            del self._settling[path]
            # Duplicate events after a report must not report the same version twice.
            if self._reported.get(path) != current:
                self._reported[path] = current
                self._on_file_ready(path)
            return
        settling.timer = self._loop.call_later(self._check_interval, self._check, path)

    def _forget_under(self, path: Path) -> None:
        """Drop pending and reported state for ``path`` and everything under it."""
        for table in (self._settling, self._reported):
            for key in [key for key in table if key == path or path in key.parents]:
                entry = table.pop(key)
                if isinstance(entry, _Settling) and entry.timer is not None:
                    entry.timer.cancel()

    def _is_watched(self, path: Path) -> bool:
        return any(path == folder or folder in path.parents for folder in self._folders)


def _as_path(raw: bytes | str) -> Path | None:
    text = os.fsdecode(raw)
    return Path(text) if text else None


def _signature(path: Path) -> Signature | None:
    """Return (size, mtime_ns, ctime_ns) of a regular file, or None."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns


def _describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "inotify watch limit reached (fs.inotify.max_user_watches)"
    if exc.errno == errno.EMFILE:
        return (
            "inotify instance limit reached (fs.inotify.max_user_instances) or too many open files"
        )
    return exc.strerror or str(exc)
