"""Filesystem events of image folders, delivered on the event loop once files settle.

This is the only module that imports watchdog. Its cost must not grow with the number
of folders, so no folder gets a thread of its own (watchdog's observers run one emitter
thread per scheduled watch):

- **native**: one inotify instance (watchdog's ``inotify_c`` bindings) holds a watch for
  every directory of every folder. Its descriptor is read by the event loop itself
  (``loop.add_reader``): no thread, and no wake-up while nothing happens. Events are
  routed to folders by path.
- **polling**: one timer for all polled folders; each round takes watchdog
  ``DirectorySnapshot``s of them in one worker-thread call and diffs them.

A folder falls back to polling (``watch.mode = "auto"``) when the kernel's inotify limits
are hit (``fs.inotify.max_user_instances`` for the instance, ``max_user_watches`` for the
watches): that is logged once per limit with the sysctl to raise, and only the folders
that could not be watched are polled.

Everything runs on the loop: a created or modified file is reported by ``on_file_ready``
only after its size and mtime stayed the same for ``settle`` seconds; deletions and moves
out are reported by ``on_path_gone`` at once; new folders by ``on_dir_appeared`` (the
library rescans them, because files moved in with a folder produce no events of their
own, and files written before the new folder's watch existed are not seen either).

Why one module at this size: its one job is turning filesystem changes into settled
reports. Both ways of watching feed the same settling and the same folder table, and the
fallback moves a folder from one to the other; this is also the only module that may
import watchdog.

Call every method from the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import os
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from watchdog.observers.inotify_c import (
    InotifyConstants,
    WatchDescriptor,
    inotify_add_watch,
    inotify_init,
    inotify_rm_watch,
)
from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

from rotator.config import WatchSection
from rotator.errors import RotatorError

WatchMode = Literal["auto", "native", "polling"]
FolderKind = Literal["native", "polling"]

_C = InotifyConstants
# Opened / closed-without-write / accessed are left out: our own reads would echo back.
_NATIVE_MASK = (
    _C.IN_CREATE
    | _C.IN_MODIFY
    | _C.IN_ATTRIB
    | _C.IN_CLOSE_WRITE
    | _C.IN_MOVED_FROM
    | _C.IN_MOVED_TO
    | _C.IN_DELETE
    | _C.IN_DELETE_SELF
    | _C.IN_MOVE_SELF
    | _C.IN_DONT_FOLLOW
    | _C.IN_ONLYDIR
)
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)
_READ_SIZE = 64 * 1024
_MAX_CHECK_INTERVAL = 0.5
_MIN_CHECK_INTERVAL = 0.01
_FOLDER_MISSING = (errno.ENOENT, errno.ENOTDIR)
_LIMITS = {
    errno.EMFILE: (
        "inotify instance limit reached (fs.inotify.max_user_instances) or too many open "
        "files; raise it with: sysctl fs.inotify.max_user_instances=1024"
    ),
    errno.ENOSPC: (
        "inotify watch limit reached (fs.inotify.max_user_watches); raise it with: "
        "sysctl fs.inotify.max_user_watches=524288"
    ),
}

Signature = tuple[int, int, int]  # size, mtime_ns, ctime_ns
RawEvent = tuple[int, int, bytes]  # wd, mask, name


class Inotify:
    """One inotify instance, read without blocking (watchdog's ctypes bindings)."""

    def __init__(self) -> None:
        fd = inotify_init()
        if fd == -1:
            raise _os_error()
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        self._fd = fd

    def fileno(self) -> int:
        """Return the descriptor to wait on."""
        return self._fd

    def add(self, path: Path) -> int:
        """Watch one directory (not following symlinks); return its watch descriptor."""
        wd = inotify_add_watch(self._fd, os.fsencode(path), _NATIVE_MASK)
        if wd == -1:
            raise _os_error(path)
        return int(wd)

    def remove(self, wd: int) -> None:
        """Stop watching one descriptor (gone already is fine)."""
        inotify_rm_watch(self._fd, WatchDescriptor(wd))

    def read(self) -> list[RawEvent]:
        """Return the events queued so far (none when nothing is waiting)."""
        events: list[RawEvent] = []
        while True:
            try:
                buffer = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return events
            except InterruptedError:
                continue
            if not buffer:
                return events
            offset = 0
            while offset + _EVENT_HEADER.size <= len(buffer):
                wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(buffer, offset)
                start = offset + _EVENT_HEADER.size
                events.append((wd, mask, buffer[start : start + length].rstrip(b"\0")))
                offset = start + length

    def close(self) -> None:
        """Close the instance; the kernel drops its watches."""
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _os_error(path: Path | None = None) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), None if path is None else str(path))


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
        watch: WatchSection,
        *,
        log: Callable[..., None],
        on_file_ready: Callable[[Path], None],
        on_path_gone: Callable[[Path], None],
        on_dir_appeared: Callable[[Path], None],
        inotify_factory: Callable[[], Inotify] = Inotify,
    ) -> None:
        mode: WatchMode = watch.mode
        if mode not in ("auto", "native", "polling"):
            raise ValueError(f"watch mode must be auto, native or polling, not {mode!r}")
        self._loop = loop
        self._mode = mode
        self._settle = max(0.0, watch.settle)
        self._check_interval = min(max(self._settle / 2, _MIN_CHECK_INTERVAL), _MAX_CHECK_INTERVAL)
        self._poll_interval = watch.poll_interval
        self._log = log
        self._on_file_ready = on_file_ready
        self._on_path_gone = on_path_gone
        self._on_dir_appeared = on_dir_appeared
        self._inotify_factory = inotify_factory
        # Every folder asked for, and how it is watched now (None: not yet / not any more).
        self._folders: dict[Path, FolderKind | None] = {}
        self._inotify: Inotify | None = None
        self._dir_of_wd: dict[int, Path] = {}
        self._wd_of_dir: dict[Path, int] = {}
        self._snapshots: dict[Path, DirectorySnapshot] = {}  # the polled folders
        self._poll_timer: asyncio.TimerHandle | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._limits_logged: set[int] = set()
        self._lost = False  # events may have been missed since the last check_alive
        self._settling: dict[Path, _Settling] = {}
        self._reported: dict[Path, Signature] = {}
        self._running = False

    @property
    def mode_in_use(self) -> str:
        """Return "native", "polling", or "native+polling" when some folders fell back."""
        kinds = sorted({kind for kind in self._folders.values() if kind is not None})
        if not kinds:
            return "polling" if self._mode == "polling" else "native"
        return "+".join(kinds)

    @property
    def counts(self) -> dict[str, int]:
        """Return how many folders are watched natively, polled, or waiting to exist."""
        counts = {"native": 0, "polling": 0, "waiting": 0}
        for kind in self._folders.values():
            counts[kind or "waiting"] += 1
        counts["inotify_watches"] = len(self._wd_of_dir)
        return counts

    def watch(self, folder: Path, *, resolved: bool = False) -> None:
        """Start watching ``folder`` and everything under it; a folder already watched is kept.

        ``resolved`` says ``folder`` is already a real path (saves resolving it again).
        """
        key = folder if resolved else Path(os.path.realpath(folder))
        if key in self._folders:
            return
        # Kept even when missing: check_alive attaches it once the folder appears.
        self._folders[key] = None
        if not key.is_dir():
            raise RotatorError(f"cannot watch {key} yet: it is not a folder (watched once it is)")
        if self._running:
            self._attach(key)

    def unwatch(self, folder: Path) -> None:
        """Stop watching ``folder``; forget its pending files."""
        key = Path(os.path.realpath(folder))
        if key not in self._folders:
            return
        self._detach(key)
        del self._folders[key]
        self._forget_under(key)

    def start(self) -> None:
        """Watch every folder given so far."""
        if self._running:
            return
        self._running = True
        for folder in list(self._folders):
            if folder.is_dir():  # a missing one is attached by check_alive when it appears
                self._attach(folder)

    def stop(self) -> None:
        """Stop watching and polling, and drop pending files."""
        self._running = False
        for folder in self._folders:
            self._folders[folder] = None
        self._close_inotify()
        self._snapshots.clear()
        self._stop_polling()
        for settling in self._settling.values():
            if settling.timer is not None:
                settling.timer.cancel()
        self._settling.clear()

    def check_alive(self) -> bool:
        """Attach folders that (re)appeared; False if events may have been missed meanwhile.

        After False the folders should be rescanned. A watched folder that was deleted is
        watched again once it exists again.
        """
        if not self._running:
            return True
        healthy = not self._lost
        self._lost = False
        for folder, kind in list(self._folders.items()):
            if kind is not None or not folder.is_dir():
                continue  # watched, or still missing: try again at the next check
            try:
                attached = self._attach(folder)
            except RotatorError as exc:
                self._log("watch.failed", folder=str(folder), reason=str(exc))
                continue
            healthy = False
            self._log("watch.restarted", folder=str(folder), mode=attached)
        return healthy

    # -- attaching ---------------------------------------------------------------------

    def _attach(self, folder: Path) -> FolderKind:
        """Watch one folder natively if allowed and possible, else poll it."""
        if self._mode != "polling":
            try:
                self._watch_tree(folder)
            except OSError as exc:
                self._drop_tree(folder)
                reason = _LIMITS.get(exc.errno or 0) or exc.strerror or str(exc)
                if self._mode == "native" or exc.errno in _FOLDER_MISSING:
                    raise RotatorError(f"cannot watch {folder} natively: {reason}") from exc
                self._log_fallback(folder, exc.errno, reason)
            else:
                self._folders[folder] = "native"
                return "native"
        self._attach_polling(folder)
        return "polling"

    def _attach_polling(self, folder: Path) -> None:
        try:
            self._snapshots[folder] = _snapshot(folder)
        except OSError as exc:
            raise RotatorError(f"cannot watch {folder}: {exc.strerror or exc}") from exc
        self._folders[folder] = "polling"
        self._schedule_poll()

    def _log_fallback(self, folder: Path, code: int | None, reason: str) -> None:
        """Say once per kernel limit (every time for other causes) that folders are polled."""
        if code in _LIMITS:
            if code in self._limits_logged:
                return
            self._limits_logged.add(code)
            reason += "; the folders that cannot be watched are polled meanwhile"
        self._log("watch.fallback", folder=str(folder), reason=reason)

    def _detach(self, folder: Path) -> None:
        kind = self._folders.get(folder)
        self._folders[folder] = None
        if kind == "native":
            self._drop_tree(folder)
        elif kind == "polling":
            self._snapshots.pop(folder, None)

    # -- native: one inotify instance, read by the loop -----------------------------------------

    def _instance(self) -> Inotify:
        if self._inotify is None:
            inotify = self._inotify_factory()
            self._loop.add_reader(inotify.fileno(), self._on_readable)
            self._inotify = inotify
        return self._inotify

    def _close_inotify(self) -> None:
        if self._inotify is not None:
            self._loop.remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
        self._dir_of_wd.clear()
        self._wd_of_dir.clear()

    def _watch_tree(self, top: Path) -> None:
        """Add a watch for ``top`` and every directory under it (symlinks not followed)."""
        inotify = self._instance()
        for directory in _directories(top):
            if directory in self._wd_of_dir:
                continue  # shared with a folder that contains this one
            try:
                wd = inotify.add(directory)
            except OSError as exc:
                if directory == top or exc.errno in _LIMITS:
                    raise
                continue  # a subfolder that vanished meanwhile
            self._forget_wd(wd)  # the same directory seen under an older name
            self._dir_of_wd[wd] = directory
            self._wd_of_dir[directory] = wd

    def _drop_tree(self, top: Path) -> None:
        """Remove the watches at and under ``top`` that no other native folder needs."""
        if self._inotify is None:
            return
        for directory in [d for d in self._wd_of_dir if d == top or top in d.parents]:
            owner = self._root_of(directory, exclude=top)
            if owner is not None and self._folders.get(owner) == "native":
                continue
            wd = self._wd_of_dir.pop(directory)
            self._dir_of_wd.pop(wd, None)
            self._inotify.remove(wd)

    def _forget_wd(self, wd: int) -> None:
        directory = self._dir_of_wd.pop(wd, None)
        if directory is not None and self._wd_of_dir.get(directory) == wd:
            del self._wd_of_dir[directory]

    def _on_readable(self) -> None:
        """Read and handle whatever inotify has queued (called by the loop)."""
        inotify = self._inotify
        if inotify is None:
            return
        try:
            events = inotify.read()
        except OSError as exc:  # the instance is unusable: start over at the next check
            self._log("watch.restarted", mode="native", reason=exc.strerror or str(exc))
            for folder, kind in self._folders.items():
                if kind == "native":
                    self._folders[folder] = None
            self._close_inotify()
            self._lost = True
            return
        for wd, mask, name in events:
            try:
                self._on_native_event(wd, mask, name)
            except Exception as exc:  # one odd event must not stop the others
                self._log("watch.event_failed", error=f"{type(exc).__name__}: {exc}")

    def _on_native_event(self, wd: int, mask: int, name: bytes) -> None:
        if mask & _C.IN_Q_OVERFLOW:
            self._lost = True  # the kernel dropped events: the next check rescans
            return
        directory = self._dir_of_wd.get(wd)
        if directory is None or not self._running:
            return
        if mask & _C.IN_IGNORED:
            self._forget_wd(wd)
            return
        path = directory / os.fsdecode(name) if name else directory
        if not name:
            # The directory itself was deleted or moved away; its parent reports
            # subfolders, but a watched folder's own disappearance is ours to see.
            if mask & (_C.IN_DELETE_SELF | _C.IN_MOVE_SELF) and self._folders.get(path):
                self._folder_lost(path)
            return
        is_dir = bool(mask & _C.IN_ISDIR)
        if mask & (_C.IN_DELETE | _C.IN_MOVED_FROM):
            if is_dir and mask & _C.IN_MOVED_FROM:
                self._drop_tree(path)  # its watches would keep reporting under this name
            self._gone(path)
        elif is_dir:
            if mask & (_C.IN_CREATE | _C.IN_MOVED_TO):
                self._watch_new_subfolder(path)
        else:
            self._start_settling(path)

    def _watch_new_subfolder(self, path: Path) -> None:
        """Watch a folder created or moved in under a watched one, then report it."""
        root = self._root_of(path)
        if root is None:
            return
        try:
            self._watch_tree(path)
        except OSError as exc:
            if exc.errno not in _LIMITS:
                raise
            reason = _LIMITS[exc.errno or 0]
            if self._mode == "native":
                self._log("watch.failed", folder=str(root), reason=reason)
            else:  # out of watches: poll the folder this subfolder belongs to instead
                self._detach(root)
                self._log_fallback(root, exc.errno, reason)
                try:
                    self._attach_polling(root)
                except RotatorError as failed:
                    self._log("watch.failed", folder=str(root), reason=str(failed))
        self._on_dir_appeared(path)

    def _folder_lost(self, folder: Path) -> None:
        """A watched folder went away: report it, and watch it again when it is back."""
        self._detach(folder)
        self._lost = True
        self._gone(folder)

    # -- polling: one timer and one worker-thread call per round for all polled folders -----

    def _schedule_poll(self) -> None:
        if self._running and self._poll_timer is None and self._poll_task is None:
            self._poll_timer = self._loop.call_later(self._poll_interval, self._start_poll)

    def _stop_polling(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll_timer = None
        if self._poll_task is not None:
            self._poll_task.cancel()
            self._poll_task = None

    def _start_poll(self) -> None:
        self._poll_timer = None
        if not self._snapshots or not self._running:
            return  # nothing polled any more: no timer until a folder is polled again
        self._poll_task = self._loop.create_task(self._poll())

    async def _poll(self) -> None:
        before = dict(self._snapshots)
        try:
            after = await asyncio.to_thread(_snapshots_of, before)
        finally:
            self._poll_task = None
        for folder, old in before.items():
            if self._snapshots.get(folder) is not old:
                continue  # unwatched or re-attached meanwhile
            new = after[folder]
            if isinstance(new, DirectorySnapshot):
                self._snapshots[folder] = new
                self._report_diff(DirectorySnapshotDiff(old, new))
            elif new in _FOLDER_MISSING:
                self._folder_lost(folder)
            # Any other error (a network share briefly away): keep the old snapshot.
        self._schedule_poll()

    def _report_diff(self, diff: DirectorySnapshotDiff) -> None:
        for raw in (*diff.files_deleted, *diff.dirs_deleted):
            self._gone(_as_path(raw))
        for raw_source, _destination in (*diff.files_moved, *diff.dirs_moved):
            self._gone(_as_path(raw_source))
        for raw in (*diff.files_created, *diff.files_modified, *diff.files_attrib):
            self._start_settling_if_watched(_as_path(raw))
        for _source, raw_destination in diff.files_moved:
            self._start_settling_if_watched(_as_path(raw_destination))
        for raw in diff.dirs_created:
            self._dir_appeared_if_watched(_as_path(raw))
        for _source, raw_destination in diff.dirs_moved:
            self._dir_appeared_if_watched(_as_path(raw_destination))

    # -- events, on the loop ------------------------------------------------------------------

    def _start_settling_if_watched(self, path: Path) -> None:
        if self._root_of(path) is not None:
            self._start_settling(path)

    def _dir_appeared_if_watched(self, path: Path) -> None:
        if self._root_of(path) is not None:
            self._on_dir_appeared(path)

    def _gone(self, path: Path) -> None:
        self._forget_under(path)
        if self._root_of(path) is not None:
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

    def _root_of(self, path: Path, *, exclude: Path | None = None) -> Path | None:
        """Return the watched folder holding ``path`` (itself included), or None.

        A look-up per ancestor: the cost follows the path's depth, not the folder count.
        """
        for candidate in (path, *path.parents):
            if candidate in self._folders and candidate != exclude:
                return candidate
        return None


def _directories(top: Path) -> Iterator[Path]:
    """Yield ``top`` and every directory under it, not following symlinks.

    One ``scandir`` per directory, its entry types deciding (no ``stat`` per entry):
    watching 10,000 folders of one image each is 10,000 listings, nothing more.
    """
    yield top
    pending = [str(top)]
    while pending:
        try:
            with os.scandir(pending.pop()) as listing:
                found = [entry.path for entry in listing if entry.is_dir(follow_symlinks=False)]
        except OSError:  # vanished or unreadable meanwhile, as os.walk skips it
            continue
        for path in sorted(found, reverse=True):
            pending.append(path)
        for path in sorted(found):
            yield Path(path)


def _snapshot(folder: Path) -> DirectorySnapshot:
    return DirectorySnapshot(str(folder), recursive=True)


def _snapshots_of(
    folders: dict[Path, DirectorySnapshot],
) -> dict[Path, DirectorySnapshot | int | None]:
    """Take a new snapshot of every folder (in a worker thread); an errno where it failed."""
    result: dict[Path, DirectorySnapshot | int | None] = {}
    for folder in folders:
        try:
            result[folder] = _snapshot(folder)
        except OSError as exc:
            result[folder] = exc.errno
    return result


def _as_path(raw: bytes | str) -> Path:
    return Path(os.fsdecode(raw))


def _signature(path: Path) -> Signature | None:
    """Return (size, mtime_ns, ctime_ns) of a regular file, or None."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns
