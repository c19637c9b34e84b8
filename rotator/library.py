"""The daemon's image library: one catalog per folder in use, kept true to the folders.

``Library`` owns the catalogs (one per configured folder, made again when the fit
settings change), a lock per catalog, the folder watcher and what its events do: a
settled file is inspected, a gone path removed, a new folder rescanned. It rescans on
request (the daemon's periodic repair) and prunes fitted copies no catalog may use.
Each catalog's lock is held from a scan to applying it, so a file event handled meanwhile
cannot be undone by an older scan. ``on_change`` tells the daemon which folder's images
changed (``None``: maybe all), for its metrics.

``StateValidationCache`` is the catalogs' validation cache kept in the state database.
Call everything from the event loop's thread; scans run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from rotator.catalog import CacheEntry, Catalog, ScanResult
from rotator.config import WatchSection
from rotator.errors import RotatorError
from rotator.fitted import prune_fitted
from rotator.images import FitSettings, ImageVerdict
from rotator.logs import emit
from rotator.names import escape_name
from rotator.state import StateStore
from rotator.watcher import FolderWatcher

SCAN_BATCH = 100  # folders scanned per worker-thread call (one call per folder costs more)
# Batches scanned at once. One: the next batch is watched on the loop while one scans in
# a worker thread. A second scan thread only fights the first for the GIL: measured at
# 1,000 x 10 (warm), READY came at 0.75 s with one and 1.12 s with two (CPU 0.73 against
# 1.20 s); at 10,000 x 1, 1.40 against 1.79 s; cold, 2.5-3.4 against 4.7-4.8 s.
SCANS_AT_ONCE = 1


class StateValidationCache:
    """The catalog's validation cache, kept in the state database."""

    __slots__ = ("_state", "catalog", "preload", "snapshot")  # one per folder: no ``__dict__``

    def __init__(self, state: StateStore, *, preload: bool = False) -> None:
        self._state = state
        self.catalog: Catalog | None = None  # its images answer first: no query for them
        # ``preload``: a first scan among many (a start): the folder's verdicts are read in
        # one query when the scan first asks, not one per file, and are kept only until
        # ``done_preloading`` (a whole-cache read held the start's memory peak 5 MiB up).
        self.preload = preload
        self.snapshot: dict[str, tuple[int, int, str]] | None = None

    def get(self, path: str, size: int, mtime_ns: int) -> ImageVerdict | None:
        """Return the cached verdict of a file, if it has not changed since."""
        known = self._known(path, size, mtime_ns)
        if known is not None:
            return known
        if self.preload and self.snapshot is None and self.catalog is not None:
            self.snapshot = self._state.cache_rows_under(escape_name(str(self.catalog.folder)))
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

    def done_preloading(self) -> None:
        """Forget the preloaded verdicts (the first scan is applied); ask file by file now."""
        self.preload = False
        self.snapshot = None

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


class Library:
    """The catalogs of the folders in use, their locks, their watcher and its events."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        state: StateStore,
        fitted_dir: Path,
        watch: WatchSection,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        on_change: Callable[[Path | None], None],
    ) -> None:
        self._state = state
        self._fitted_dir = fitted_dir
        self._spawn = spawn
        self._on_change = on_change
        self._fit: FitSettings | None = None
        self._catalogs: dict[Path, Catalog] = {}
        # A catalog's lock and how many tasks use it: made on first use, dropped when
        # unused (an asyncio.Lock per idle folder is memory for nothing).
        self._locks: dict[Path, tuple[asyncio.Lock, int]] = {}
        self._roots: dict[Path, list[Path]] | None = None  # resolved folder -> keys
        self._quiet_adds: int | None = None  # counting start-up's image.added, not logging them
        self._preloading: dict[Path, StateValidationCache] = {}  # until their first scan
        self.watcher = FolderWatcher(
            loop,
            watch,
            log=emit,
            on_file_ready=self._on_file_ready,
            on_path_gone=self._on_path_gone,
            on_dir_appeared=self._on_dir_appeared,
        )

    def __len__(self) -> int:
        return len(self._catalogs)

    def catalog(self, folder: Path) -> Catalog:
        """Return the catalog of a folder in use."""
        return self._catalogs[folder]

    async def start(self, folders: Sequence[Path], fit: FitSettings) -> None:
        """Watch and scan the first folders; log one line for what was found, not one per image.

        (10,000 lines of image.added took a third of a warm start at 1,000 entries x 10 images.)
        """
        self.watcher.start()
        self._quiet_adds = 0
        await self.use(folders, fit)
        emit(
            "catalog.scanned",
            folders=len(self._catalogs),
            usable=self._quiet_adds,
            rejected=sum(len(catalog.rejected()) for catalog in self._catalogs.values()),
            # What watch.mode = "auto" chose: "native", "polling", or "native+polling".
            watch_mode=self.watcher.mode_in_use,
        )
        self._quiet_adds = None

    async def use(self, folders: Sequence[Path], fit: FitSettings) -> None:
        """Make the catalogs be those of ``folders``: new ones watched and scanned, unused dropped.

        Catalogs are kept unless their fit settings changed; then all are made again.
        """
        if fit != self._fit:
            self._drop(list(self._catalogs))
            self._fit = fit
        wanted = dict.fromkeys(folders)  # once each, in order
        new_folders = [folder for folder in wanted if folder not in self._catalogs]
        if new_folders:
            self._roots = None  # made again on first use, with the new folders
        new, preloading = _new_catalogs(self._state, new_folders, fit, self._log)
        self._catalogs.update(new)
        self._preloading.update(preloading)
        # Watch first, then scan: a file that lands in between is seen by one of them.
        # Each batch is watched just before its scan starts, while earlier ones still run.
        await self.rescan(new_folders, before_scan=self._watch)
        self._drop([folder for folder in self._catalogs if folder not in wanted])

    async def rescan(
        self,
        folders: Sequence[Path] | None = None,
        *,
        before_scan: Callable[[Sequence[Path]], None] | None = None,
    ) -> None:
        """Scan folders (all when None), many to a worker-thread call; then prune fitted copies.

        Batches of ``SCAN_BATCH`` folders, ``SCANS_AT_ONCE`` of them at a time;
        ``before_scan`` is called with each batch on the loop just before its scan starts.
        Each catalog's lock is held from its scan to applying it.
        """
        if folders is None:
            folders = list(self._catalogs)
        pending = [folder for folder in folders if folder in self._catalogs]
        changed = pending[0] if len(pending) == 1 else None
        slots = asyncio.Semaphore(SCANS_AT_ONCE)
        async with asyncio.TaskGroup() as scans:
            for start in range(0, len(pending), SCAN_BATCH):
                batch = pending[start : start + SCAN_BATCH]
                if before_scan is not None:
                    before_scan(batch)
                await slots.acquire()
                scans.create_task(self._scan_batch(batch, slots, changed))
        if pending:
            await self.prune_fitted()

    async def _scan_batch(
        self, folders: Sequence[Path], slots: asyncio.Semaphore, changed: Path | None
    ) -> None:
        """Scan a batch of folders in a worker thread and apply the results; free a slot."""
        try:
            batch = [
                (folder, self._catalogs[folder]) for folder in folders if folder in self._catalogs
            ]
            async with self._locked(*(folder for folder, _ in batch)):
                results = await asyncio.to_thread(_scan_all, [catalog for _, catalog in batch])
                for (folder, catalog), result in zip(batch, results, strict=True):
                    if self._catalogs.get(folder) is catalog:  # not dropped meanwhile
                        catalog.apply_scan(result)
                        self._on_change(changed)
        finally:
            for folder in folders:
                if (cache := self._preloading.pop(folder, None)) is not None:
                    cache.done_preloading()
            slots.release()

    async def prune_fitted(self) -> None:
        """Delete fitted copies whose source is gone from every catalog."""
        keep: set[str] = set()
        for catalog in self._catalogs.values():
            keep |= catalog.fitted_names()
        await asyncio.to_thread(prune_fitted, self._fitted_dir, keep)

    def close(self) -> None:
        """Stop watching (on the loop: the watcher's reader and timers belong to it)."""
        self.watcher.stop()

    # -- folder events -------------------------------------------------------------------

    def _on_file_ready(self, path: Path) -> None:
        for folder in self._folders_holding(path):
            self._spawn(self._inspect(folder, path))

    def _on_path_gone(self, path: Path) -> None:
        for folder in self._folders_holding(path):
            # Under the catalog's lock: a rescan in flight must not bring the file back.
            self._spawn(self._remove(folder, path))

    def _on_dir_appeared(self, path: Path) -> None:
        for folder in self._folders_holding(path):
            self._spawn(self.rescan([folder]))

    async def _inspect(self, folder: Path, path: Path) -> None:
        catalog = self._catalogs.get(folder)
        if catalog is None:
            return
        async with self._locked(folder):
            result = await asyncio.to_thread(catalog.inspect_path, path)
            if result is None:
                catalog.remove_path(path)
            else:
                catalog.apply_file(result)
        self._on_change(folder)

    async def _remove(self, folder: Path, path: Path) -> None:
        catalog = self._catalogs.get(folder)
        if catalog is None:
            return
        async with self._locked(folder):
            catalog.remove_path(path)
        self._on_change(folder)
        await self.prune_fitted()

    # -- internals -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self, *folders: Path) -> AsyncIterator[None]:
        """Hold the catalogs' locks, taken in the order given (one context, not one each:
        a start takes 10,000); a lock exists only while some task holds or awaits it."""
        for folder in folders:
            lock, users = self._locks.get(folder, (None, 0))
            self._locks[folder] = (lock or asyncio.Lock(), users + 1)
        taken: list[asyncio.Lock] = []
        try:
            for folder in folders:
                lock = self._locks[folder][0]
                await lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in taken:
                lock.release()
            for folder in folders:
                lock, users = self._locks[folder]
                if users == 1:
                    del self._locks[folder]
                else:
                    self._locks[folder] = (lock, users - 1)

    def _watch(self, folders: Sequence[Path]) -> None:
        """Watch the resolved folders of these catalogs (before their first scan)."""
        for folder in folders:
            try:
                self.watcher.watch(self._catalogs[folder].folder, resolved=True)
            except (RotatorError, OSError) as exc:
                # A folder that does not exist yet is watched (and scanned) once it does.
                emit("watch.failed", folder=str(folder), reason=str(exc))

    def _folders_holding(self, path: Path) -> list[Path]:
        """Return the folders whose catalog holds ``path`` (watcher paths are resolved).

        One look-up per ancestor of ``path``: the cost follows its depth, not the folder count.
        """
        if self._roots is None:  # made again after the catalogs changed
            self._roots = {}
            for folder, catalog in self._catalogs.items():
                self._roots.setdefault(catalog.folder, []).append(folder)
        roots = self._roots
        return [folder for root in (path, *path.parents) for folder in roots.get(root, ())]

    def _drop(self, folders: Sequence[Path]) -> None:
        for folder in folders:
            self._roots = None
            self.watcher.unwatch(self._catalogs.pop(folder).folder)

    def _log(self, event: str, **fields: object) -> None:
        """Log for the catalogs; the first scan's additions become one summary line."""
        if event == "image.added" and self._quiet_adds is not None:
            self._quiet_adds += 1
            return
        emit(event, **fields)


async def scan_once(
    state: StateStore, folders: Sequence[Path], fit: FitSettings
) -> dict[Path, Catalog]:
    """Scan folders once, unwatched, for a one-shot command (``rotator rotate``).

    As the daemon's start does: the validation cache read once when the folders are many,
    SCAN_BATCH folders to a worker-thread call, and one ``catalog.scanned`` line rather
    than an ``image.added`` per image. (Folder by folder, the scans were a seventh of
    ``rotate``'s CPU per entry.)
    """
    added = 0

    def log(event: str, **fields: object) -> None:
        nonlocal added
        if event == "image.added":
            added += 1
        else:
            emit(event, **fields)

    catalogs, preloading = _new_catalogs(state, list(dict.fromkeys(folders)), fit, log)
    order = list(catalogs)
    for start in range(0, len(order), SCAN_BATCH):
        batch = order[start : start + SCAN_BATCH]
        results = await asyncio.to_thread(_scan_all, [catalogs[folder] for folder in batch])
        for folder, result in zip(batch, results, strict=True):
            catalogs[folder].apply_scan(result)
            if (cache := preloading.pop(folder, None)) is not None:
                cache.done_preloading()
    emit(
        "catalog.scanned",
        folders=len(catalogs),
        usable=added,
        rejected=sum(len(catalog.rejected()) for catalog in catalogs.values()),
    )
    return catalogs


def _new_catalogs(
    state: StateStore, folders: Sequence[Path], fit: FitSettings, log: Callable[..., None]
) -> tuple[dict[Path, Catalog], dict[Path, StateValidationCache]]:
    """Make the catalogs of new folders, not scanned yet; return them and the caches that
    preload their verdicts for the first scan (when the new folders are many: a start)."""
    preload = len(folders) >= SCAN_BATCH
    real_parents: dict[str, str] = {}  # one realpath per distinct parent folder
    catalogs: dict[Path, Catalog] = {}
    preloading: dict[Path, StateValidationCache] = {}
    for folder in folders:
        cache = StateValidationCache(state, preload=preload)
        catalogs[folder] = cache.catalog = Catalog(
            folder, fit, cache, log, real_parents=real_parents
        )
        if preload:
            preloading[folder] = cache
    return catalogs, preloading


def _scan_all(catalogs: Sequence[Catalog]) -> list[ScanResult]:
    """Scan catalogs one after the other (in a worker thread)."""
    return [catalog.scan() for catalog in catalogs]
