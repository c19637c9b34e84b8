"""Swapping a file for a symlink to an outside image, in a tight loop, never gets it sent."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import DaemonFactory
from fake_xquik import FakeXquik
from harness import make_image, write_config

from rotator.catalog import Catalog, MemoryValidationCache
from rotator.errors import ImageError
from rotator.images import FitSettings

_SWAP_LOOP = """
import os, sys, time
target, outside, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
inside = open(target, "rb").read()
regular, link = target + ".swap-file~", target + ".swap-link~"
while True:
    with open(regular, "wb") as file:
        file.write(inside)
    os.replace(regular, target)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(outside, link)
    os.replace(link, target)
    if pause:
        time.sleep(pause)
"""


class _Swapper:
    """Another process that swaps ``target`` for a symlink outside and back, in a tight loop."""

    def __init__(self, target: Path, outside: Path, pause: float = 0.0) -> None:
        self.args = [sys.executable, "-c", _SWAP_LOOP, str(target), str(outside), str(pause)]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> _Swapper:
        self.proc = subprocess.Popen(self.args)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


def _setup(tmp_path: Path) -> tuple[Path, bytes, Path, bytes]:
    folder = tmp_path / "img"
    inside = make_image(folder / "a.png", seed=1)
    outside_path = tmp_path / "secret" / "outside.png"
    outside = make_image(outside_path, seed=2)
    return folder, inside, outside_path, outside


def test_catalog_never_reads_the_outside_image_during_a_swap_race(tmp_path: Path) -> None:
    """Judging and loading it 1,500+ times while it is swapped never yields outside bytes."""
    folder, inside, outside_path, outside = _setup(tmp_path)
    catalog = Catalog(folder, FitSettings(), MemoryValidationCache(), _ignore)
    sent = refused = 0
    with _Swapper(folder / "a.png", outside_path):
        rounds, deadline = 0, time.monotonic() + 30  # a starved swapper gets its time
        while rounds < 1500 or not (sent and refused):
            rounds += 1
            if time.monotonic() > deadline:
                break
            result = catalog.inspect_path(folder / "a.png")
            if result is None:
                continue
            catalog.apply_file(result)
            image = catalog.get("a.png")
            if image is None:
                refused += 1
                continue
            try:
                payload = catalog.load_payload(image, tmp_path / "fitted")
            except ImageError:
                refused += 1
                continue
            assert payload.data != outside, "an image outside the folder was loaded"
            assert payload.data == inside
            sent += 1
    assert sent > 0
    assert refused > 0, "the symlink was never seen: the race did not happen"


def test_daemon_never_uploads_the_outside_image_during_a_swap_race(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """While the daemon rotates every second and rescans, no write carries the outside image."""
    folder, _, outside_path, outside = _setup(tmp_path)
    make_image(folder / "b.png", seed=3)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "img", "schedule": "every 1s"}],
        sections={"watch": {"settle": "0s", "rescan": "1s"}},
    )
    daemon = start_daemon(config)
    daemon.wait_for("avatar.uploaded", timeout=20)
    # A short pause per swap: an unthrottled flood of file events can starve the daemon's
    # event loop of its signal wake-ups (a watcher matter, not what this test is about).
    with _Swapper(folder / "a.png", outside_path, pause=0.002):
        time.sleep(6)
    time.sleep(2)  # let the last events settle before asking it to stop
    assert daemon.stop() == 0
    writes = [write for write in fake_xquik.writes("alice") if write.file is not None]
    assert len(writes) >= 2
    for write in writes:
        assert write.file is not None
        assert write.file.data != outside, "an image outside the folder was uploaded"


def _ignore(event: str, **fields: object) -> None:
    """Drop catalog events."""
    del event, fields


def test_a_symlink_to_a_fifo_is_never_opened(tmp_path: Path) -> None:
    """A FIFO behind a symlink (or dropped in the folder) is refused without being opened."""
    folder = tmp_path / "img"
    make_image(folder / "a.png", seed=1)
    fifo = tmp_path / "outside.fifo"
    os.mkfifo(fifo)
    os.mkfifo(folder / "inside.png")
    (folder / "link.png").symlink_to(fifo)
    opened_by_someone = threading.Event()

    def writer() -> None:
        # Blocks until a reader opens the FIFO: that is what must not happen.
        with open(fifo, "wb"):
            opened_by_someone.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    catalog = Catalog(folder, FitSettings(), MemoryValidationCache(), _ignore)
    catalog.apply_scan(catalog.scan())
    result = catalog.inspect_path(folder / "link.png")
    assert not opened_by_someone.wait(0.5), "the FIFO outside the folder was opened"
    assert result is not None
    assert result.verdict.reason == "symlink leaves the folder"
    assert dict(catalog.rejected()) == {
        "inside.png": "not a regular file",
        "link.png": "symlink leaves the folder",
    }
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # release the writer
    thread.join(5)
