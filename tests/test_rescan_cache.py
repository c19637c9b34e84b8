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
