"""The library: the catalogs of the folders in use, kept true by real folder events."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from structlog.testing import capture_logs

from rotator.config import WatchSection
from rotator.images import FitSettings
from rotator.library import SCAN_BATCH, Library, scan_once
from rotator.state import StateStore


def _png(path: Path, shade: int, size: int = 64) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (shade, 40, 40)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue())


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``check`` holds (real events take real time), or fail."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "the folder event never came"
        await asyncio.sleep(0.02)


def test_folder_events_reach_the_catalog_and_fitted_copies_of_gone_images_are_pruned(
    tmp_path: Path,
) -> None:
    """A new file joins its catalog, a deleted one leaves it and its fitted copy is pruned."""
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    _png(pictures / "1.png", 10)
    _png(pictures / "big.png", 20, size=600)  # fit = "always": it gets a fitted copy
    fitted_dir = tmp_path / "state" / "fitted"
    changed: list[Path | None] = []
    background: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    async def go() -> tuple[list[str], list[str], list[str]]:
        with StateStore.open(tmp_path / "state", lock=True) as state:
            library = Library(
                asyncio.get_running_loop(),
                state=state,
                fitted_dir=fitted_dir,
                watch=WatchSection(mode="native", settle=0.05, poll_interval=0.1),
                spawn=spawn,
                on_change=changed.append,
            )
            fit = FitSettings(min_size=16, fit="always")
            await library.start([pictures, pictures], fit)
            catalog = library.catalog(pictures)
            first = [image.relative for image in catalog.usable()]
            big = catalog.get("big.png")
            assert big is not None
            catalog.load_payload(big, fitted_dir)  # stores the fitted copy
            assert len(list(fitted_dir.iterdir())) == 1
            _png(pictures / "2.png", 30)
            await _until(lambda: catalog.get("2.png") is not None)
            after_add = [image.relative for image in catalog.usable()]
            os.unlink(pictures / "big.png")
            await _until(lambda: catalog.get("big.png") is None)
            await _until(lambda: not any(fitted_dir.iterdir()))
            await asyncio.gather(*background)
            library.close()
            return first, after_add, [image.relative for image in catalog.usable()]

    first, after_add, last = asyncio.run(go())
    assert first == ["1.png", "big.png"], "the same folder twice is one catalog"
    assert after_add == ["1.png", "2.png", "big.png"]
    assert last == ["1.png", "2.png"]
    assert pictures in changed, "the entries hear which folder changed"


@pytest.mark.parametrize("mode", ["native", "polling"])
def test_start_up_scan_names_the_watching_in_use(tmp_path: Path, mode: str) -> None:
    """The catalog.scanned line tells how the folders are watched."""
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    _png(pictures / "1.png", 10)

    async def go() -> None:
        with StateStore.open(tmp_path / "state", lock=True) as state:
            library = Library(
                asyncio.get_running_loop(),
                state=state,
                fitted_dir=tmp_path / "state" / "fitted",
                watch=WatchSection(mode=mode, settle=0.05, poll_interval=0.1),
                spawn=lambda coro: coro.close(),
                on_change=lambda _folder: None,
            )
            await library.start([pictures], FitSettings(min_size=16))
            library.close()

    with capture_logs() as logs:
        asyncio.run(go())
    scanned = [event for event in logs if event["event"] == "catalog.scanned"]
    assert [(event["folders"], event["usable"], event["watch_mode"]) for event in scanned] == [
        (1, 1, mode)
    ]


@pytest.mark.parametrize("folders", [3, SCAN_BATCH + 5])
def test_a_one_shot_scan_finds_every_image_and_logs_one_line(tmp_path: Path, folders: int) -> None:
    """scan_once (``rotator rotate``): every folder's catalog, one summary line, no per image.

    With SCAN_BATCH folders or more it reads the validation cache once; the verdicts it
    finds there are the ones a scan of each file gives.
    """
    roots = [tmp_path / f"f{number:03}" for number in range(folders)]
    for number, root in enumerate(roots):
        root.mkdir()
        _png(root / "a.png", number % 200)
        _png(root / "b.png", 255 - number % 200)
    (roots[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")

    async def scan() -> dict[Path, list[str]]:
        with StateStore.open(tmp_path / "state", lock=True) as state:
            catalogs = await scan_once(state, [*roots, roots[0]], FitSettings(min_size=16))
            return {
                folder: [image.relative for image in catalog.usable()]
                for folder, catalog in catalogs.items()
            }

    for _ in range(2):  # cold, then warm (from the validation cache)
        with capture_logs() as logs:
            found = asyncio.run(scan())
        assert found == {root: ["a.png", "b.png"] for root in roots}
        assert [event["event"] for event in logs] == ["image.rejected", "catalog.scanned"]
        assert (logs[-1]["folders"], logs[-1]["usable"], logs[-1]["rejected"]) == (
            folders,
            2 * folders,
            1,
        )
