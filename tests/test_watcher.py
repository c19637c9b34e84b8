"""Tests for rotator.watcher: real observers, real files, a real asyncio loop."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rotator.config import WatchSection
from rotator.errors import RotatorError
from rotator.watcher import FolderWatcher, Inotify, WatchMode

SETTLE = 0.2
WAIT = 5.0


class Reports:
    """Collect the watcher's callbacks and let a test wait for them."""

    def __init__(self) -> None:
        self.ready: list[Path] = []
        self.ready_sizes: list[int] = []
        self.gone: list[Path] = []
        self.dirs: list[Path] = []
        self.log: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def on_file_ready(self, path: Path) -> None:
        """Record a settled file and its size at that moment."""
        self.ready.append(path)
        self.ready_sizes.append(path.stat().st_size)
        self._changed.set()

    def on_path_gone(self, path: Path) -> None:
        """Record a gone path."""
        self.gone.append(path)
        self._changed.set()

    def on_dir_appeared(self, path: Path) -> None:
        """Record a new folder."""
        self.dirs.append(path)
        self._changed.set()

    def __call__(self, event: str, **fields: Any) -> None:
        self.log.append((event, fields))

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait (up to WAIT seconds) until ``condition`` holds after some callback."""

        async def wait() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), WAIT)


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds, up to WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def run(
    scenario: Callable[[FolderWatcher, Reports], Awaitable[None]],
    folder: Path,
    *,
    mode: WatchMode = "native",
    settle: float = SETTLE,
    inotify_factory: Callable[[], Inotify] = Inotify,
    folders: tuple[Path, ...] = (),
) -> Reports:
    """Run ``scenario`` with a started watcher on ``folder``; stop it afterwards."""

    async def main() -> Reports:
        reports = Reports()
        watcher = FolderWatcher(
            asyncio.get_running_loop(),
            WatchSection(mode=mode, settle=settle, poll_interval=0.1),
            log=reports,
            on_file_ready=reports.on_file_ready,
            on_path_gone=reports.on_path_gone,
            on_dir_appeared=reports.on_dir_appeared,
            inotify_factory=inotify_factory,
        )
        for each in (folder, *folders):
            watcher.watch(each)
        watcher.start()
        try:
            await scenario(watcher, reports)
        finally:
            watcher.stop()
        return reports

    return asyncio.run(main())


async def settled_sentinel(folder: Path, reports: Reports, name: str = "sentinel.png") -> None:
    """Write one more file and wait until it is reported.

    Events are handled in order and settle equally long, so once the sentinel is
    reported any duplicate report for earlier files would have arrived already.
    """
    sentinel = folder / name
    sentinel.write_bytes(b"sentinel")
    await reports.until(lambda: sentinel in reports.ready)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Return a resolved, watched-to-be folder inside tmp_path."""
    path = (tmp_path / "images").resolve()
    path.mkdir()
    return path


@pytest.mark.parametrize("mode", ["native", "polling"])
def test_new_file_joins_once_after_settling(folder: Path, mode: WatchMode) -> None:
    """A new file is reported exactly once, after it settled."""

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        assert watcher.mode_in_use == mode
        target = folder / "a.png"
        target.write_bytes(b"x" * 1000)
        await reports.until(lambda: target in reports.ready)
        await settled_sentinel(folder, reports)
        assert reports.ready == [target, folder / "sentinel.png"]

    run(scenario, folder, mode=mode)


@pytest.mark.parametrize("mode", ["native", "polling"])
def test_slow_copy_joins_once_after_the_last_chunk(folder: Path, mode: WatchMode) -> None:
    """A file written in chunks over about a second is reported once, complete."""
    chunk, chunks = b"y" * 4096, 20

    def slow_copy(path: Path) -> None:
        with path.open("wb") as file:
            for _ in range(chunks):
                file.write(chunk)
                file.flush()
                time.sleep(0.05)

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        target = folder / "slow.png"
        writer = threading.Thread(target=slow_copy, args=(target,))
        writer.start()
        try:
            await reports.until(lambda: target in reports.ready)
        finally:
            await asyncio.to_thread(writer.join)
        assert reports.ready_sizes == [len(chunk) * chunks]
        await settled_sentinel(folder, reports)
        assert reports.ready.count(target) == 1

    # Longer quiet time than the gaps between chunks, with room for a busy machine.
    run(scenario, folder, mode=mode, settle=0.4)


def test_atomic_rename_joins_under_the_final_name(folder: Path) -> None:
    """Writing x.part then renaming it to x.png reports x.png ready and x.part gone."""

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        partial = folder / "x.png.part"
        final = folder / "x.png"
        partial.write_bytes(b"z" * 2000)
        os.rename(partial, final)
        await reports.until(lambda: final in reports.ready)
        assert partial in reports.gone
        await settled_sentinel(folder, reports)
        assert partial not in reports.ready
        assert reports.ready.count(final) == 1

    run(scenario, folder)


@pytest.mark.parametrize("mode", ["native", "polling"])
def test_deleted_file_is_gone(folder: Path, mode: WatchMode) -> None:
    """Deleting a file reports it gone."""

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        target = folder / "a.png"
        target.write_bytes(b"x")
        await reports.until(lambda: target in reports.ready)
        target.unlink()
        await reports.until(lambda: target in reports.gone)

    run(scenario, folder, mode=mode)


def test_delete_during_settling_cancels_the_report(folder: Path) -> None:
    """A file deleted before it settled is gone and never reported ready."""

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        target = folder / "brief.png"
        target.write_bytes(b"x")
        target.unlink()
        await reports.until(lambda: target in reports.gone)
        await settled_sentinel(folder, reports)
        assert target not in reports.ready

    run(scenario, folder)


def test_file_moved_out_is_gone(folder: Path, tmp_path: Path) -> None:
    """Moving a file to an unwatched place reports it gone."""
    outside = tmp_path / "outside"
    outside.mkdir()

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        target = folder / "a.png"
        target.write_bytes(b"x")
        await reports.until(lambda: target in reports.ready)
        os.rename(target, outside / "a.png")
        await reports.until(lambda: target in reports.gone)

    run(scenario, folder)


def test_file_moved_in_joins(folder: Path, tmp_path: Path) -> None:
    """A file moved in from an unwatched place is reported ready."""
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"from elsewhere")

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        os.rename(outside, folder / "in.png")
        await reports.until(lambda: folder / "in.png" in reports.ready)

    run(scenario, folder)


@pytest.mark.parametrize("mode", ["native", "polling"])
def test_new_subfolder_appears_and_its_files_join(folder: Path, mode: WatchMode) -> None:
    """A created subfolder is reported, and files written in it join."""

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        sub = folder / "sub"
        sub.mkdir()
        await reports.until(lambda: sub in reports.dirs)
        (sub / "a.png").write_bytes(b"x")
        await reports.until(lambda: sub / "a.png" in reports.ready)

    run(scenario, folder, mode=mode)


def test_folder_moved_in_appears(folder: Path, tmp_path: Path) -> None:
    """A folder moved in is reported so the service can rescan it."""
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "a.png").write_bytes(b"x")

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        os.rename(staged, folder / "album")
        await reports.until(lambda: folder / "album" in reports.dirs)

    run(scenario, folder)


def test_auto_mode_falls_back_to_polling_when_inotify_fails(folder: Path) -> None:
    """When the native observer cannot start, auto mode polls and logs why."""

    def exhausted() -> Inotify:
        raise OSError(errno.EMFILE, "Too many open files")

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        assert watcher.mode_in_use == "polling"
        assert reports.log[0][0] == "watch.fallback"
        assert reports.log[0][1]["folder"] == str(folder)
        assert "sysctl fs.inotify.max_user_instances=" in reports.log[0][1]["reason"]
        target = folder / "a.png"
        target.write_bytes(b"x")
        await reports.until(lambda: target in reports.ready)

    run(scenario, folder, mode="auto", inotify_factory=exhausted)


def test_native_mode_raises_when_inotify_fails(folder: Path) -> None:
    """native mode does not fall back: the failure is a RotatorError with the reason."""

    def exhausted() -> Inotify:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def main() -> None:
        watcher = FolderWatcher(
            asyncio.get_running_loop(),
            WatchSection(mode="native", settle=SETTLE, poll_interval=0.1),
            log=Reports(),
            on_file_ready=print,
            on_path_gone=print,
            on_dir_appeared=print,
            inotify_factory=exhausted,
        )
        watcher.watch(folder)
        try:
            with pytest.raises(RotatorError, match="inotify watch limit"):
                watcher.start()
        finally:
            watcher.stop()

    asyncio.run(main())


def test_watching_twice_is_a_no_op_and_non_folders_are_refused(folder: Path) -> None:
    """The same folder twice is watched once; a missing folder is a RotatorError."""

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        watcher.watch(folder)
        watcher.watch(folder / ".." / folder.name)
        with pytest.raises(RotatorError, match="not a folder"):
            watcher.watch(folder / "missing")
        await settled_sentinel(folder, reports)
        assert reports.ready == [folder / "sentinel.png"]

    run(scenario, folder)


def test_unwatch_stops_reports(folder: Path, tmp_path: Path) -> None:
    """After unwatch, changes in that folder are no longer reported."""
    other = (tmp_path / "other").resolve()
    other.mkdir()

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        watcher.watch(other)
        watcher.unwatch(folder)
        (folder / "ignored.png").write_bytes(b"x")
        await settled_sentinel(other, reports)
        assert reports.ready == [other / "sentinel.png"]

    run(scenario, folder)


def test_lost_events_make_check_alive_ask_for_a_rescan(folder: Path) -> None:
    """An inotify queue overflow (events dropped by the kernel) makes check_alive False once."""
    queue_limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if queue_limit > 100_000:
        pytest.skip("inotify queue too large to overflow quickly here")

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        assert watcher.check_alive()
        # The loop is not reading while this runs: each new file queues 2 or 3 events.
        for number in range(queue_limit // 2 + 200):
            (folder / f"{number}.bin").write_bytes(b"x")
        await eventually(lambda: not watcher.check_alive())
        assert watcher.check_alive()
        target = folder / "after.png"
        target.write_bytes(b"x")
        await reports.until(lambda: target in reports.ready)

    run(scenario, folder, settle=0.05)


class _WatchLimit(Inotify):
    """A real inotify instance that runs out of watches after ``watches`` (like the kernel)."""

    def __init__(self, watches: int) -> None:
        super().__init__()
        self.left = watches

    def add(self, path: Path) -> int:
        """Refuse with ENOSPC once the budget is spent."""
        if self.left <= 0:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        self.left -= 1
        return super().add(path)


def test_watch_limit_polls_only_the_folders_that_could_not_be_watched(tmp_path: Path) -> None:
    """Out of inotify watches: said once with the sysctl; the rest of the folders are polled."""
    folders = [(tmp_path / f"f{number}").resolve() for number in range(5)]
    for each in folders:
        each.mkdir()

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        assert watcher.counts["native"] == 3
        assert watcher.counts["polling"] == 2
        assert watcher.mode_in_use == "native+polling"
        fallbacks = [fields for event, fields in reports.log if event == "watch.fallback"]
        assert len(fallbacks) == 1
        assert "sysctl fs.inotify.max_user_watches=" in fallbacks[0]["reason"]
        for each in (folders[0], folders[4]):  # one watched natively, one polled
            (each / "a.png").write_bytes(b"x")
        await reports.until(
            lambda: {folders[0] / "a.png", folders[4] / "a.png"} <= set(reports.ready)
        )

    run(
        scenario,
        folders[0],
        folders=tuple(folders[1:]),
        mode="auto",
        inotify_factory=lambda: _WatchLimit(3),
    )


def test_nested_folders_share_watches(folder: Path) -> None:
    """A folder inside another is watched once; unwatching the outer one keeps the inner."""
    inner = folder / "inner"
    inner.mkdir()

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        assert watcher.counts["inotify_watches"] == 2
        watcher.unwatch(folder)
        assert watcher.counts["inotify_watches"] == 1
        (folder / "outer.png").write_bytes(b"x")
        await settled_sentinel(inner, reports)
        assert reports.ready == [inner / "sentinel.png"]

    run(scenario, folder, folders=(inner,))


@pytest.mark.parametrize("mode", ["native", "polling"])
def test_three_hundred_folders_add_no_thread_per_folder(tmp_path: Path, mode: WatchMode) -> None:
    """300 folders: natively no thread at all, polled at most one worker; files still join."""
    folders = [(tmp_path / f"f{number:03}").resolve() for number in range(300)]
    for each in folders:
        each.mkdir()
    before = threading.active_count()

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        assert watcher.counts[mode] == 300
        target = folders[-1] / "last.png"
        target.write_bytes(b"x")
        await reports.until(lambda: target in reports.ready)
        assert threading.active_count() - before <= (0 if mode == "native" else 1)

    run(scenario, folders[0], folders=tuple(folders[1:]), mode=mode)


@pytest.mark.parametrize("mode", ["native", "polling"])
def test_deleted_folder_is_watched_again_when_it_returns(folder: Path, mode: WatchMode) -> None:
    """A watched folder deleted and made again is re-attached by check_alive."""

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        folder.rmdir()
        await reports.until(lambda: folder in reports.gone)
        await eventually(lambda: not watcher.check_alive())
        assert watcher.check_alive()  # still missing: nothing to restart
        folder.mkdir()
        assert not watcher.check_alive()
        target = folder / "back.png"
        target.write_bytes(b"x")
        await reports.until(lambda: target in reports.ready)

    run(scenario, folder, mode=mode)


def test_stop_leaves_nothing_running(folder: Path) -> None:
    """After stop() no thread, reader or timer of the watcher is left."""
    before = set(threading.enumerate())

    async def scenario(watcher: FolderWatcher, reports: Reports) -> None:
        (folder / "a.png").write_bytes(b"x")
        await reports.until(lambda: folder / "a.png" in reports.ready)

    run(scenario, folder, mode="polling")
    assert set(threading.enumerate()) - before == set()
