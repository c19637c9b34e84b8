"""A rescan takes an unchanged file's verdict from the catalog, not from the database."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from rotator.catalog import Catalog
from rotator.images import FitSettings
from rotator.library import StateValidationCache
from rotator.state import StateStore


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, "PNG", compress_level=0)  # fixed length
    return buffer.getvalue()


def _catalog(folder: Path, state: StateStore) -> Catalog:
    cache = StateValidationCache(state)
    catalog = cache.catalog = Catalog(folder, FitSettings(), cache, lambda *_, **__: None)
    return catalog


def test_an_unchanged_file_keeps_the_catalogs_verdict_without_the_database(
    tmp_path: Path,
) -> None:
    """Same size and mtime: the catalog's verdict stands even with the stored one gone."""
    folder = tmp_path / "images"
    folder.mkdir()
    image = folder / "a.png"
    image.write_bytes(_png((255, 0, 0)))
    with StateStore.open(tmp_path / "state", lock=False) as state:
        catalog = _catalog(folder, state)
        catalog.apply_scan(catalog.scan())
        first = catalog.get("a.png")
        assert first is not None
        state.cache_forget(str(catalog.folder / "a.png"))
        # Other bytes of the same length under the same mtime: only a decode would notice.
        status = image.stat()
        other = _png((0, 0, 255))
        assert len(other) == status.st_size
        image.write_bytes(other)
        os.utime(image, ns=(status.st_atime_ns, status.st_mtime_ns))
        catalog.apply_scan(catalog.scan())
        kept = catalog.get("a.png")
        assert kept is not None
        assert kept.verdict.sha256 == first.verdict.sha256
        # A new catalog (a restart) has nothing in memory: it decodes the file again.
        fresh = _catalog(folder, state)
        fresh.apply_scan(fresh.scan())
        again = fresh.get("a.png")
        assert again is not None
        assert again.verdict.sha256 != first.verdict.sha256


def test_a_first_scan_among_many_reads_its_folders_verdicts_in_one_go(tmp_path: Path) -> None:
    """A preloading cache answers like the database: the stored verdict when the file is
    unchanged, a decode when not; it holds its own folder's rows (subfolders too, no
    neighbour's), and drops them once the scan is done."""
    folder = tmp_path / "images"
    for name in ("images/sub", "images2", "images-x"):
        (tmp_path / name).mkdir(parents=True)
    (folder / "a.png").write_bytes(_png((255, 0, 0)))
    (folder / "b.png").write_bytes(_png((0, 255, 0)))
    (folder / "sub" / "c.png").write_bytes(_png((9, 9, 9)))
    for neighbour in ("images2", "images-x"):  # names that sort next to "images/"
        (tmp_path / neighbour / "n.png").write_bytes(_png((1, 2, 3)))
    with StateStore.open(tmp_path / "state", lock=False) as state:
        first = _catalog(folder, state)
        first.apply_scan(first.scan())
        for neighbour in ("images2", "images-x"):
            other = _catalog(tmp_path / neighbour, state)
            other.apply_scan(other.scan())
        (folder / "b.png").write_bytes(_png((0, 0, 255)))  # changed since its verdict
        cache = StateValidationCache(state, preload=True)
        restarted = cache.catalog = Catalog(folder, FitSettings(), cache, lambda *_, **__: None)
        restarted.apply_scan(restarted.scan())
        assert cache.snapshot is not None
        assert set(cache.snapshot) == {
            str(first.folder / name) for name in ("a.png", "b.png", "sub/c.png")
        }
        cache.done_preloading()
        assert cache.snapshot is None
        a, b = restarted.get("a.png"), restarted.get("b.png")
        first_a, first_b = first.get("a.png"), first.get("b.png")
        assert a is not None
        assert b is not None
        assert first_a is not None
        assert first_b is not None
        assert a.verdict == first_a.verdict
        assert b.verdict.sha256 != first_b.verdict.sha256  # decoded again, not the old verdict
        # The changed file's new verdict went to the database, as a scan without one does.
        assert state.cache_get(str(first.folder / "b.png"), b.size_bytes, b.mtime_ns) is not None
