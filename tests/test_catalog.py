"""Tests for rotator.catalog: real folders, files, symlinks and a real validation cache."""

from __future__ import annotations

import hashlib
import io
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rotator.catalog import (
    CacheEntry,
    Catalog,
    MemoryValidationCache,
    ScanResult,
    natural_key,
)
from rotator.errors import ImageError
from rotator.fitted import prune_fitted
from rotator.images import FitSettings, ImageVerdict, fit_cache_name

DEFAULT = FitSettings()


def encode(image: Image.Image, fmt: str) -> bytes:
    """Return ``image`` saved in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png(seed: int = 1, size: tuple[int, int] = (32, 24)) -> bytes:
    """Return a small valid PNG whose pixels depend on ``seed``."""
    rng = random.Random(seed)
    tile = Image.frombytes("RGB", (4, 4), rng.randbytes(48))
    return encode(tile.resize(size, Image.Resampling.NEAREST), "PNG")


class LogRecorder:
    """Collect log calls as (event, fields) pairs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, **fields: Any) -> None:
        self.calls.append((event, fields))

    def events(self, event: str) -> list[dict[str, Any]]:
        """Return the fields of every call of ``event``."""
        return [fields for name, fields in self.calls if name == event]

    def paths(self, event: str) -> list[str]:
        """Return the ``path`` field of every call of ``event``."""
        return [fields["path"] for fields in self.events(event)]


class CountingCache:
    """A thread-safe in-memory validation cache that counts stores (one per decode)."""

    def __init__(self) -> None:
        self.inner = MemoryValidationCache()
        self.puts = 0

    def get(self, path: str, size: int, mtime_ns: int) -> ImageVerdict | None:
        """Return the stored verdict."""
        return self.inner.get(path, size, mtime_ns)

    def put(self, path: str, size: int, mtime_ns: int, verdict: ImageVerdict) -> None:
        """Store and count."""
        self.puts += 1
        self.inner.put(path, size, mtime_ns, verdict)

    def put_many(self, rows: Sequence[CacheEntry]) -> None:
        """Store and count each row."""
        self.puts += len(rows)
        self.inner.put_many(rows)

    def forget(self, path: str) -> None:
        """Drop."""
        self.inner.forget(path)


def put(folder: Path, relative: str, data: bytes) -> Path:
    """Write ``data`` at ``folder / relative``, creating folders."""
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def scanned(
    folder: Path,
    *,
    settings: FitSettings = DEFAULT,
    cache: Any = None,
    log: LogRecorder | None = None,
) -> tuple[Catalog, LogRecorder]:
    """Return a catalog of ``folder`` after one applied scan, and its log."""
    recorder = log or LogRecorder()
    catalog = Catalog(folder, settings, cache or MemoryValidationCache(), recorder)
    catalog.apply_scan(catalog.scan())
    return catalog, recorder


def relatives(catalog: Catalog) -> list[str]:
    """Return the relative paths of the usable images, in catalog order."""
    return [image.relative for image in catalog.usable()]


# -- natural order ----------------------------------------------------------------------------


def test_natural_key_orders_numbers_by_value_and_ignores_case() -> None:
    """img2 sorts before img10, case does not matter, paths compare per component."""
    names = ["img10.png", "IMG1.png", "img2.png", "b/x.png", "a/img10.png", "a/img9.png", "a b.png"]
    assert sorted(names, key=natural_key) == [
        "a/img9.png",
        "a/img10.png",
        "a b.png",
        "b/x.png",
        "IMG1.png",
        "img2.png",
        "img10.png",
    ]


def test_natural_key_breaks_ties_deterministically() -> None:
    """Names equal but for case or leading zeros sort the same whatever the input order."""
    names = ["img2.png", "a.png", "img02.png", "A.png"]
    assert len({natural_key(name) for name in names}) == 4
    assert sorted(names, key=natural_key) == ["A.png", "a.png", "img02.png", "img2.png"]


def test_catalog_lists_images_in_natural_order(tmp_path: Path) -> None:
    """The catalog walks nested folders and returns natural order."""
    for name in [
        "img10.png",
        "img2.png",
        "Img3.png",
        "img1.png",
        "sub/img1.png",
        "sub/deeper/a.png",
    ]:
        put(tmp_path, name, png())
    catalog, log = scanned(tmp_path)
    assert relatives(catalog) == [
        "img1.png",
        "img2.png",
        "Img3.png",
        "img10.png",
        "sub/deeper/a.png",
        "sub/img1.png",
    ]
    assert sorted(log.paths("image.added")) == sorted(relatives(catalog))
    added = log.events("image.added")[0]
    assert added["folder"] == str(tmp_path.resolve())
    assert added["format"] == "png"
    assert added["bytes"] == len(png())


def test_hidden_and_temporary_names_are_skipped(tmp_path: Path) -> None:
    """Hidden files and folders and partial-download names are neither images nor rejections."""
    put(tmp_path, "keep.png", png())
    for name in [
        ".hidden.png",
        ".git/objects/a.png",
        "x.png.part",
        "y.tmp",
        "z.crdownload",
        "w.swp",
        "v.png~",
        "u.PART",
    ]:
        put(tmp_path, name, png())
    catalog, log = scanned(tmp_path)
    assert relatives(catalog) == ["keep.png"]
    assert catalog.rejected() == []
    assert log.events("image.rejected") == []


def test_empty_folder_gives_an_empty_catalog(tmp_path: Path) -> None:
    """A folder without images works and has nothing usable."""
    catalog, log = scanned(tmp_path)
    assert catalog.usable() == []
    assert log.calls == []


def test_missing_folder_is_reported_not_raised(tmp_path: Path) -> None:
    """Scanning a folder that does not exist reports why and yields no images."""
    catalog = Catalog(tmp_path / "nope", DEFAULT, MemoryValidationCache(), LogRecorder())
    result = catalog.scan()
    assert result == ScanResult(files=(), folder_error="vanished")
    catalog.apply_scan(result)
    assert catalog.usable() == []


# -- symlinks and odd files -------------------------------------------------------------------


def test_symlink_inside_the_folder_is_followed(tmp_path: Path) -> None:
    """A link to an image inside the folder is an image under the link's name."""
    folder = tmp_path / "images"
    put(folder, "real/a.png", png())
    (folder / "link.png").symlink_to(folder / "real" / "a.png")
    catalog, _ = scanned(folder)
    assert relatives(catalog) == ["link.png", "real/a.png"]


def test_symlink_leaving_the_folder_is_ignored_and_logged_once(tmp_path: Path) -> None:
    """A link to a file outside the folder is rejected once, not followed."""
    folder = tmp_path / "images"
    folder.mkdir()
    outside = put(tmp_path, "outside/secret.png", png())
    (folder / "escape.png").symlink_to(outside)
    (folder / "escape_dir").symlink_to(outside.parent, target_is_directory=True)
    catalog, log = scanned(folder)
    catalog.apply_scan(catalog.scan())
    assert catalog.usable() == []
    assert catalog.rejected() == [
        ("escape.png", "symlink leaves the folder"),
        ("escape_dir", "symlink leaves the folder"),
    ]
    assert log.paths("image.rejected") == ["escape.png", "escape_dir"]


def test_symlink_loops_are_handled(tmp_path: Path) -> None:
    """Link cycles and links to an ancestor folder end the walk with a rejection."""
    put(tmp_path, "sub/a.png", png())
    (tmp_path / "one").symlink_to(tmp_path / "two")
    (tmp_path / "two").symlink_to(tmp_path / "one")
    (tmp_path / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "broken.png").symlink_to(tmp_path / "missing.png")
    catalog, _ = scanned(tmp_path)
    assert relatives(catalog) == ["sub/a.png"]
    assert dict(catalog.rejected()) == {
        "broken.png": "broken symlink",
        "one": "symlink loop",
        "two": "symlink loop",
        "sub/up": "symlink loop",
    }


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_in_the_folder_is_rejected(tmp_path: Path) -> None:
    """A FIFO in the folder is rejected without being opened."""
    os.mkfifo(tmp_path / "pipe.png")
    catalog, _ = scanned(tmp_path)
    assert catalog.rejected() == [("pipe.png", "not a regular file")]


def test_unreadable_subfolder_and_file_are_rejected(tmp_path: Path) -> None:
    """A subfolder that cannot be listed and a file that cannot be read become rejections."""
    put(tmp_path, "ok.png", png())
    locked = tmp_path / "locked"
    put(locked, "a.png", png())
    secret = put(tmp_path, "secret.png", png())
    locked.chmod(0)
    secret.chmod(0)
    try:
        try:
            os.listdir(locked)
        except PermissionError:
            pass
        else:
            pytest.skip("this process reads folders regardless of permissions (root)")
        catalog, _ = scanned(tmp_path)
    finally:
        locked.chmod(0o755)
    assert relatives(catalog) == ["ok.png"]
    assert catalog.rejected() == [
        ("locked", "unreadable folder: permission denied"),
        ("secret.png", "permission denied"),
    ]
    secret.chmod(0o644)
    result = catalog.inspect_path(secret)
    assert result is not None
    catalog.apply_file(result)
    assert relatives(catalog) == ["ok.png", "secret.png"]


# -- the validation cache ---------------------------------------------------------------------


def test_cache_avoids_decoding_again(tmp_path: Path) -> None:
    """A second catalog on the same cache decodes nothing; a changed file is decoded again."""
    for index in range(5):
        put(tmp_path, f"img{index}.png", png(index))
    put(tmp_path, "bad.png", b"not an image")
    cache = CountingCache()
    first, _ = scanned(tmp_path, cache=cache)
    assert cache.puts == 6  # five images and the rejected file, each decoded once

    second, _ = scanned(tmp_path, cache=cache)
    assert cache.puts == 6
    assert relatives(second) == relatives(first)
    assert second.rejected() == [("bad.png", "not an image (text file)")]

    put(tmp_path, "img0.png", png(99, size=(40, 30)))
    scanned(tmp_path, cache=cache)
    assert cache.puts == 7


def test_cached_verdict_is_trusted_and_payload_catches_the_change(tmp_path: Path) -> None:
    """Same size and mtime means the cached verdict stands; sending then notices the change."""
    path = put(tmp_path, "a.png", png(1))
    cache = MemoryValidationCache()
    scanned(tmp_path, cache=cache)
    status = path.stat()
    corrupt = b"\x00" * status.st_size
    path.write_bytes(corrupt)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))

    catalog, _ = scanned(tmp_path, cache=cache)
    image = catalog.get("a.png")
    assert image is not None
    assert image.verdict.usable
    with pytest.raises(ImageError, match="changed since it was checked"):
        catalog.load_payload(image, tmp_path / "fitted")


def test_changed_settings_ignore_cached_verdicts(tmp_path: Path) -> None:
    """A verdict made under other fit settings is not reused."""
    put(tmp_path, "a.webp", encode(Image.new("RGB", (40, 40), "red"), "WEBP"))
    cache = CountingCache()
    auto, _ = scanned(tmp_path, cache=cache)
    assert relatives(auto) == ["a.webp"]
    off, _ = scanned(tmp_path, settings=FitSettings(fit="off"), cache=cache)
    assert cache.puts == 2
    assert off.usable() == []
    assert off.rejected() == [("a.webp", "WEBP is not JPEG or PNG and fitting is off")]


def test_memory_cache_matches_on_size_and_mtime() -> None:
    """The in-memory cache returns a verdict only for the exact size and mtime."""
    cache = MemoryValidationCache()
    verdict = ImageVerdict(
        usable=True,
        reason=None,
        format="png",
        mime="image/png",
        size_bytes=3,
        width=1,
        height=1,
        sha256="0" * 64,
        needs_fit=False,
    )
    cache.put("/x.png", 3, 10, verdict)
    assert cache.get("/x.png", 3, 10) == verdict
    assert cache.get("/x.png", 3, 11) is None
    assert cache.get("/x.png", 4, 10) is None
    cache.forget("/x.png")
    assert cache.get("/x.png", 3, 10) is None


# -- changes and logging ----------------------------------------------------------------------


def test_rejection_is_logged_once_and_again_after_a_change(tmp_path: Path) -> None:
    """A broken file is logged once per version, and joins when repaired."""
    put(tmp_path, "broken.png", png()[:-20])
    catalog, log = scanned(tmp_path)
    catalog.apply_scan(catalog.scan())
    catalog.apply_scan(catalog.scan())
    assert log.paths("image.rejected") == ["broken.png"]
    assert log.events("image.rejected")[0]["reason"] == "truncated or corrupt PNG"

    put(tmp_path, "broken.png", png()[:-30])
    catalog.apply_scan(catalog.scan())
    assert log.paths("image.rejected") == ["broken.png", "broken.png"]

    put(tmp_path, "broken.png", png())
    catalog.apply_scan(catalog.scan())
    assert log.paths("image.added") == ["broken.png"]
    assert catalog.rejected() == []


def test_usable_file_turning_bad_logs_removed_and_rejected(tmp_path: Path) -> None:
    """An image overwritten with junk leaves the catalog with removed + rejected."""
    path = put(tmp_path, "a.png", png())
    catalog, log = scanned(tmp_path)
    path.write_text("oops")
    result = catalog.inspect_path(path)
    assert result is not None
    catalog.apply_file(result)
    assert catalog.usable() == []
    assert [name for name, _ in log.calls] == ["image.added", "image.removed", "image.rejected"]


def test_changed_content_is_logged_as_changed(tmp_path: Path) -> None:
    """A usable image replaced by another usable image is logged as changed, not added."""
    path = put(tmp_path, "a.png", png(1))
    catalog, log = scanned(tmp_path)
    put(tmp_path, "a.png", png(2, size=(30, 30)))
    result = catalog.inspect_path(path)
    assert result is not None
    catalog.apply_file(result)
    assert [name for name, _ in log.calls] == ["image.added", "image.changed"]
    image = catalog.get("a.png")
    assert image is not None
    assert image.verdict.sha256 == hashlib.sha256(png(2, size=(30, 30))).hexdigest()


def test_scan_removes_vanished_files(tmp_path: Path) -> None:
    """A file deleted between scans is removed with a log line."""
    put(tmp_path, "a.png", png())
    gone = put(tmp_path, "b.png", png())
    catalog, log = scanned(tmp_path)
    gone.unlink()
    catalog.apply_scan(catalog.scan())
    assert relatives(catalog) == ["a.png"]
    assert log.paths("image.removed") == ["b.png"]


def test_remove_path_removes_a_file_or_a_whole_folder(tmp_path: Path) -> None:
    """remove_path drops one file, everything under a folder, or everything for the root."""
    for name in ["a.png", "sub/b.png", "sub/c.png", "subway.png", "other/d.png"]:
        put(tmp_path, name, png())
    catalog, log = scanned(tmp_path)
    catalog.remove_path(tmp_path / "a.png")
    assert relatives(catalog) == ["other/d.png", "sub/b.png", "sub/c.png", "subway.png"]
    catalog.remove_path(tmp_path / "sub")
    assert relatives(catalog) == ["other/d.png", "subway.png"]
    catalog.remove_path(tmp_path / "elsewhere" / "x.png")
    catalog.remove_path(tmp_path.parent / "unrelated")
    assert relatives(catalog) == ["other/d.png", "subway.png"]
    catalog.remove_path(tmp_path)
    assert catalog.usable() == []
    assert sorted(log.paths("image.removed")) == sorted(
        ["a.png", "sub/b.png", "sub/c.png", "subway.png", "other/d.png"]
    )


def test_inspect_path_judges_one_candidate(tmp_path: Path) -> None:
    """inspect_path returns a result for a candidate file and None for everything else."""
    good = put(tmp_path, "a.png", png())
    put(tmp_path, ".hidden.png", png())
    put(tmp_path, ".cache/x.png", png())
    put(tmp_path, "b.png.part", png())
    (tmp_path / "folder").mkdir()
    catalog = Catalog(tmp_path, DEFAULT, MemoryValidationCache(), LogRecorder())
    for path in [
        tmp_path / ".hidden.png",
        tmp_path / ".cache" / "x.png",
        tmp_path / "b.png.part",
        tmp_path / "missing.png",
        tmp_path / "folder",
        tmp_path,
        tmp_path.parent / "elsewhere.png",
    ]:
        assert catalog.inspect_path(path) is None, path
    result = catalog.inspect_path(good)
    assert result is not None
    assert result.relative == "a.png"
    assert result.verdict.usable
    catalog.apply_file(result)
    assert relatives(catalog) == ["a.png"]


def test_inspect_path_rejects_a_link_leaving_the_folder(tmp_path: Path) -> None:
    """A link that points outside the folder is rejected when reported by the watcher too."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "out.png").symlink_to(put(tmp_path, "outside.png", png()))
    catalog = Catalog(folder, DEFAULT, MemoryValidationCache(), LogRecorder())
    result = catalog.inspect_path(folder / "out.png")
    assert result is not None
    assert result.verdict.reason == "symlink leaves the folder"


# -- payloads ---------------------------------------------------------------------------------


def test_payload_is_the_file_byte_for_byte(tmp_path: Path) -> None:
    """A sendable file is sent exactly as it is on disk, named to match its format."""
    data = png()
    put(tmp_path, "photo.jpg", data)
    put(tmp_path, "b.PNG", data)
    catalog, _ = scanned(tmp_path)
    image = catalog.get("photo.jpg")
    assert image is not None
    payload = catalog.load_payload(image, tmp_path / "fitted")
    assert payload.data == data
    assert payload.mime == "image/png"
    assert payload.filename == "photo.png"
    assert payload.sha256 == payload.source_sha256 == hashlib.sha256(data).hexdigest()
    assert payload.fitted is None
    other = catalog.get("b.PNG")
    assert other is not None
    assert catalog.load_payload(other, tmp_path / "fitted").filename == "b.PNG"
    assert not (tmp_path / "fitted").exists()


def test_fitted_copy_is_made_once_and_reused(tmp_path: Path) -> None:
    """A file that needs fitting is fitted once, stored, and the stored file reused."""
    folder = tmp_path / "images"
    fitted_dir = tmp_path / "state" / "fitted"
    put(folder, "wide.webp", encode(Image.new("RGB", (900, 600), "navy"), "WEBP"))
    catalog, log = scanned(folder)
    image = catalog.get("wide.webp")
    assert image is not None
    assert image.verdict.needs_fit

    first = catalog.load_payload(image, fitted_dir)
    assert first.fitted is not None
    assert (first.mime, first.filename) == ("image/jpeg", "wide.jpg")
    assert (first.fitted.width, first.fitted.height) == (400, 400)
    stored = fitted_dir / fit_cache_name(image.verdict.sha256 or "", DEFAULT, "jpeg")
    assert stored.read_bytes() == first.data
    assert catalog.fitted_names() >= {stored.name}
    before = stored.stat()
    assert len(log.events("image.fitted")) == 1

    second = catalog.load_payload(image, fitted_dir)
    assert second == first
    after = stored.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(log.events("image.fitted")) == 1
    assert [path.name for path in fitted_dir.iterdir()] == [stored.name]


def test_damaged_fitted_copy_is_made_again(tmp_path: Path) -> None:
    """A stored fitted copy that no longer decodes is replaced, not sent."""
    put(tmp_path, "images/a.webp", encode(Image.new("RGB", (500, 500), "green"), "WEBP"))
    catalog, _ = scanned(tmp_path / "images")
    image = catalog.get("a.webp")
    assert image is not None
    fitted_dir = tmp_path / "fitted"
    good = catalog.load_payload(image, fitted_dir)
    stored = fitted_dir / fit_cache_name(good.source_sha256, DEFAULT, "jpeg")
    stored.write_bytes(good.data[:-50])
    again = catalog.load_payload(image, fitted_dir)
    assert again.data == good.data
    assert stored.read_bytes() == good.data


def test_payload_refuses_a_file_changed_since_it_was_checked(tmp_path: Path) -> None:
    """A file rewritten after validation is not sent with stale facts."""
    path = put(tmp_path, "a.png", png(1))
    catalog, _ = scanned(tmp_path)
    image = catalog.get("a.png")
    assert image is not None
    path.write_bytes(png(2))
    with pytest.raises(ImageError, match="changed since it was checked"):
        catalog.load_payload(image, tmp_path / "fitted")
    path.unlink()
    with pytest.raises(ImageError, match="vanished"):
        catalog.load_payload(image, tmp_path / "fitted")


def test_prune_fitted_keeps_named_copies_and_foreign_files(tmp_path: Path) -> None:
    """Pruning deletes only our unused fitted copies and stale temp files."""
    keep = fit_cache_name("a" * 64, DEFAULT, "jpeg")
    drop = fit_cache_name("b" * 64, DEFAULT, "png")
    for name in [keep, drop, "notes.txt", ".fitting-fresh", ".fitting-old"]:
        (tmp_path / name).write_bytes(b"x")
    old = time.time() - 7200
    os.utime(tmp_path / ".fitting-old", (old, old))
    assert prune_fitted(tmp_path, {keep}) == [".fitting-old", drop]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [keep, "notes.txt", ".fitting-fresh"]
    )
    assert prune_fitted(tmp_path / "missing", set()) == []


def test_catalogs_made_together_resolve_their_folders_as_realpath_does(tmp_path: Path) -> None:
    """Sharing resolved parents, each catalog's folder is still exactly os.path.realpath's."""
    real_parent = tmp_path / "real"
    (real_parent / "plain").mkdir(parents=True)
    (real_parent / "target").mkdir()
    (real_parent / "linked").symlink_to(real_parent / "target")
    (tmp_path / "via").symlink_to(real_parent)
    (real_parent / "dangling").symlink_to(tmp_path / "nowhere")
    folders = [
        base / name
        for base in (real_parent, tmp_path / "via", tmp_path / "missing-parent")
        for name in ("plain", "linked", "missing", "dangling")
    ]
    shared: dict[str, str] = {}
    for folder in folders:
        catalog = Catalog(
            folder, DEFAULT, MemoryValidationCache(), LogRecorder(), real_parents=shared
        )
        assert str(catalog.folder) == os.path.realpath(folder), folder
