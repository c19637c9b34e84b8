"""Images as a user drops them in: fitting, URL mode, the folder left untouched."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

from conftest import DaemonFactory
from fake_xquik import FakeXquik
from harness import make_image, write_config
from PIL import Image

from rotator.state import StateStore


def _big_webp(path: Path) -> bytes:
    """Write a 2000x1500 WebP (not sendable as is) and return its bytes."""
    picture = Image.effect_noise((2000, 1500), 50).convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, "WEBP", quality=95)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _folder_snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_webp_is_fitted_once_sent_as_jpeg_and_the_folder_is_untouched(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """A WebP goes out as a ≤700 KB 400x400 JPEG; the copy is reused, the folder unchanged."""
    folder = tmp_path / "pics"
    source = _big_webp(folder / "photo.webp")
    before = _folder_snapshot(folder)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "pics", "schedule": "every 1s"}],
    )
    daemon = start_daemon(config)
    daemon.wait_for("avatar.uploaded", count=2, timeout=20)
    assert daemon.stop() == 0

    first, second = fake_xquik.writes("alice")[:2]
    for write in (first, second):
        assert write.file is not None
        assert write.file.content_type == "image/jpeg"
        assert len(write.file.data) <= 716800
        with Image.open(io.BytesIO(write.file.data)) as sent:
            assert sent.format == "JPEG"
            assert sent.size == (400, 400)
    assert first.file is not None
    assert second.file is not None
    assert first.file.data == second.file.data
    fitted = daemon.named("image.fitted")
    assert len(fitted) == 1, "the fitted copy is made once and reused"
    assert fitted[0]["source_format"] == "webp"
    assert fitted[0]["source_bytes"] == len(source)
    assert (fitted[0]["format"], fitted[0]["width"], fitted[0]["height"]) == ("jpeg", 400, 400)
    assert _folder_snapshot(folder) == before, "the user's folder is never written to"
    copies = list((tmp_path / "state" / "fitted").iterdir())
    assert [copy.read_bytes() for copy in copies] == [first.file.data]

    # The audit trail keeps both hashes: the source's and the bytes sent.
    with StateStore.open(tmp_path / "state", lock=False, readonly=True) as state:
        row = state.history(limit=1)[0]
    assert row.source_sha256 == hashlib.sha256(source).hexdigest()
    assert row.sha256 == hashlib.sha256(first.file.data).hexdigest()


def test_fitted_copy_is_removed_when_its_source_goes(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """Deleting the source deletes its fitted copy from the state dir."""
    folder = tmp_path / "pics"
    _big_webp(folder / "photo.webp")
    make_image(folder / "plain.png", seed=1)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "pics", "schedule": "every 1s"}],
    )
    daemon = start_daemon(config)
    daemon.wait_for("image.fitted", timeout=20)
    fitted_dir = tmp_path / "state" / "fitted"
    assert list(fitted_dir.iterdir())
    (folder / "photo.webp").unlink()
    daemon.wait_for("image.removed", lambda e: e["path"] == "photo.webp", timeout=10)
    deadline = time.monotonic() + 10
    while list(fitted_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(fitted_dir.iterdir()) == []
    assert daemon.stop() == 0


def test_url_mode_sends_quoted_urls_and_fitted_images_as_files(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """url mode: JSON {account, url} under the entry's public_base_url; a fitted image as a file."""
    folder = tmp_path / "pics"
    make_image(folder / "a dir" / "01 sunny é.png", seed=1)
    _big_webp(folder / "b" / "02.webp")
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[
            {
                "account": "alice",
                "folder": "pics",
                "schedule": "every 1s",
                "public_base_url": "https://cdn.example.com/avatars/alice/",
            }
        ],
        sections={"api": {"upload": "url"}},
    )
    daemon = start_daemon(config)
    daemon.wait_for("avatar.uploaded", count=2, timeout=20)
    assert daemon.stop() == 0
    by_url, by_file = fake_xquik.writes("alice")[:2]
    assert by_url.json == {
        "account": "alice",
        "url": "https://cdn.example.com/avatars/alice/a%20dir/01%20sunny%20%C3%A9.png",
    }
    assert by_url.file is None
    assert by_file.url is None
    assert by_file.file is not None
    assert by_file.file.content_type == "image/jpeg"
