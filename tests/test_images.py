"""Tests for rotator.images: decoding, validation and fitting of real image files."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from rotator.errors import ImageError
from rotator.images import (
    FitSettings,
    FittedImage,
    ImageVerdict,
    check_line,
    fit_cache_name,
    fit_image_bytes,
    human_bytes,
    judge_image_bytes,
    read_fitted,
    read_open_file,
)

DEFAULT = FitSettings()


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """Return ``image`` saved in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def picture(
    size: tuple[int, int], mode: str = "RGB", seed: int = 1, noise: bool = False
) -> Image.Image:
    """Return a deterministic test picture: coloured blocks, or full noise."""
    rng = random.Random(seed)
    bands = len(Image.new(mode, (1, 1)).getbands())
    if noise:
        return Image.frombytes(mode, size, rng.randbytes(size[0] * size[1] * bands))
    tile = Image.frombytes(mode, (8, 8), rng.randbytes(64 * bands))
    return tile.resize(size, Image.Resampling.NEAREST)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``tmp_path / name`` and return the path."""
    path = tmp_path / name
    path.write_bytes(data)
    return path


def decoded(data: bytes) -> Image.Image:
    """Decode sent bytes the strict way: JPEG or PNG only, fully loaded."""
    image = Image.open(io.BytesIO(data), formats=["JPEG", "PNG"])
    image.load()
    return image


def png_with_header(width: int, height: int) -> bytes:
    """Return a tiny PNG whose header claims ``width`` by ``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


SMALL_PNG = encode(picture((64, 48)), "PNG")
SMALL_JPEG = encode(picture((64, 48)), "JPEG", quality=90)


def test_valid_png_is_usable_as_is() -> None:
    """A small valid PNG is usable, needs no fitting, and its facts are right."""
    verdict = judge_image_bytes(SMALL_PNG, DEFAULT)
    assert verdict.usable
    assert verdict.reason is None
    assert verdict.needs_fit is False
    assert (verdict.format, verdict.mime) == ("png", "image/png")
    assert (verdict.width, verdict.height) == (64, 48)
    assert verdict.size_bytes == len(SMALL_PNG)
    assert verdict.sha256 == hashlib.sha256(SMALL_PNG).hexdigest()
    assert verdict.settings_key == DEFAULT.verdict_key


def test_valid_jpeg_is_usable_as_is() -> None:
    """A small valid JPEG is usable and needs no fitting."""
    verdict = judge_image_bytes(SMALL_JPEG, DEFAULT)
    assert verdict.usable
    assert not verdict.needs_fit
    assert (verdict.format, verdict.mime) == ("jpeg", "image/jpeg")


@pytest.mark.parametrize("cut", [2, 10, len(SMALL_JPEG) // 2])
def test_truncated_jpeg_is_rejected(cut: int) -> None:
    """A JPEG missing its last bytes (even only the end marker) is rejected as truncated."""
    verdict = judge_image_bytes(SMALL_JPEG[:-cut], DEFAULT)
    assert not verdict.usable
    assert verdict.reason == "truncated or corrupt JPEG"


@pytest.mark.parametrize("cut", [12, 13, 20, len(SMALL_PNG) // 2])
def test_truncated_png_is_rejected(cut: int) -> None:
    """A PNG cut short is rejected, including cuts Pillow's load() alone accepts."""
    verdict = judge_image_bytes(SMALL_PNG[:-cut], DEFAULT)
    assert not verdict.usable
    assert verdict.reason == "truncated or corrupt PNG"


def test_text_file_named_png_is_rejected() -> None:
    """The extension does not make a text file an image."""
    verdict = judge_image_bytes(b"just some notes\n" * 20, DEFAULT)
    assert not verdict.usable
    assert verdict.reason == "not an image (text file)"


def test_binary_garbage_is_rejected_as_unknown_format() -> None:
    """Bytes that are neither text nor a known image are named as such."""
    verdict = judge_image_bytes(bytes(range(256)) * 4, DEFAULT)
    assert verdict.reason == "not an image (unknown or unsupported format)"


def test_png_named_jpg_is_usable() -> None:
    """Content decides the format, not the extension."""
    verdict = judge_image_bytes(SMALL_PNG, DEFAULT)
    assert verdict.usable
    assert not verdict.needs_fit
    assert (verdict.format, verdict.mime) == ("png", "image/png")


def test_empty_file_is_rejected() -> None:
    """A zero-byte file is rejected as empty."""
    verdict = judge_image_bytes(b"", DEFAULT)
    assert (verdict.usable, verdict.reason) == (False, "empty file")


def test_oversize_jpeg_needs_fit_in_auto_and_is_rejected_when_fitting_is_off() -> None:
    """A valid JPEG over 700 KB is fitted under fit=auto and refused under fit=off."""
    data = encode(picture((1100, 1100), noise=True), "JPEG", quality=95)
    assert len(data) > 716_800

    auto = judge_image_bytes(data, DEFAULT)
    assert auto.usable
    assert auto.needs_fit
    assert auto.mime == "image/jpeg"

    off = judge_image_bytes(data, FitSettings(fit="off"))
    assert not off.usable
    assert off.reason == f"over 700 KB ({human_bytes(len(data))}) and fitting is off"


def test_webp_is_rejected_when_fitting_is_off_and_fitted_otherwise() -> None:
    """Only JPEG and PNG are sendable as they are."""
    data = encode(picture((64, 48)), "WEBP")
    off = judge_image_bytes(data, FitSettings(fit="off"))
    assert off.reason == "WEBP is not JPEG or PNG and fitting is off"
    auto = judge_image_bytes(data, DEFAULT)
    assert (auto.usable, auto.needs_fit, auto.format) == (True, True, "webp")


def test_fit_always_marks_even_sendable_files() -> None:
    """With fit=always a valid small JPEG still needs fitting."""
    verdict = judge_image_bytes(SMALL_JPEG, FitSettings(fit="always"))
    assert verdict.usable
    assert verdict.needs_fit


def test_multi_picture_jpeg_counts_as_jpeg() -> None:
    """A phone's multi-picture JPEG (Pillow calls it MPO) is sent as the JPEG it is."""
    first, second = picture((64, 48), seed=1), picture((64, 48), seed=2)
    data = encode(first, "MPO", save_all=True, append_images=[second])
    verdict = judge_image_bytes(data, DEFAULT)
    assert (verdict.usable, verdict.needs_fit, verdict.format) == (True, False, "jpeg")


def animated_gif() -> bytes:
    """Return a three-frame animated GIF, 300 by 200."""
    frames = [picture((300, 200), seed=seed).convert("P") for seed in (1, 2, 3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a.webp", encode(picture((900, 500)), "WEBP")),
        ("a.gif", animated_gif()),
        ("a.bmp", encode(picture((500, 900)), "BMP")),
        ("a.tiff", encode(picture((700, 700)), "TIFF")),
        ("big.jpg", encode(picture((1100, 1100), noise=True), "JPEG", quality=95)),
        ("a.avif", encode(picture((600, 400)), "AVIF")),
    ],
)
def test_other_formats_are_fitted_square_within_limits(name: str, data: bytes) -> None:
    """WebP, animated GIF, BMP, TIFF, AVIF and oversize JPEG: a square JPEG/PNG within limits."""
    verdict = judge_image_bytes(data, DEFAULT)
    assert verdict.usable
    assert verdict.needs_fit
    fitted = fit_image_bytes(data, DEFAULT)
    assert fitted.format in ("jpeg", "png")
    assert len(fitted.data) <= DEFAULT.max_bytes
    assert fitted.width == fitted.height <= DEFAULT.size
    assert decoded(fitted.data).size == (fitted.width, fitted.height)
    assert fitted.source_sha256 == verdict.sha256
    assert fitted.sha256 == hashlib.sha256(fitted.data).hexdigest()
    assert (fitted.source_width, fitted.source_height) == (verdict.width, verdict.height)


def test_small_images_are_never_upscaled() -> None:
    """An image smaller than size keeps its size (cropped square, not enlarged)."""
    fitted = fit_image_bytes(encode(picture((120, 90)), "WEBP"), DEFAULT)
    assert (fitted.width, fitted.height) == (90, 90)


def test_crop_none_keeps_the_aspect_ratio() -> None:
    """With crop=none the longest side is fitted and the shape kept."""
    fitted = fit_image_bytes(
        encode(picture((1000, 500)), "PNG"), FitSettings(fit="always", crop="none")
    )
    assert (fitted.width, fitted.height) == (400, 200)


def test_exif_orientation_is_applied() -> None:
    """A 200x100 JPEG tagged orientation 6 (rotate 90 degrees) comes out 100x200."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(picture((200, 100)), "JPEG", exif=exif.tobytes())
    fitted = fit_image_bytes(data, FitSettings(fit="always", crop="none"))
    assert (fitted.width, fitted.height) == (100, 200)
    assert decoded(fitted.data).getexif().get(0x0112) in (None, 1)


def test_transparency_gives_png() -> None:
    """An image with real transparency is sent as a PNG that keeps its alpha."""
    image = picture((300, 300), mode="RGBA")
    image.putalpha(Image.linear_gradient("L").resize((300, 300)))
    fitted = fit_image_bytes(encode(image, "WEBP", lossless=True), DEFAULT)
    assert (fitted.format, fitted.mime) == ("png", "image/png")
    out = decoded(fitted.data)
    assert out.mode == "RGBA"
    alpha_low, _ = out.getchannel("A").getextrema()
    assert isinstance(alpha_low, int)
    assert alpha_low < 255


def test_opaque_alpha_channel_gives_jpeg() -> None:
    """An RGBA image whose alpha is fully opaque is sent as the smaller JPEG."""
    fitted = fit_image_bytes(
        encode(picture((300, 300), mode="RGB").convert("RGBA"), "PNG"), FitSettings(fit="always")
    )
    assert fitted.format == "jpeg"


def test_transparent_png_too_big_is_flattened_to_jpeg() -> None:
    """A transparent image whose PNG cannot fit is flattened onto white as a JPEG."""
    image = picture((400, 400), mode="RGBA", noise=True)
    fitted = fit_image_bytes(encode(image, "PNG"), FitSettings(max_bytes=60_000))
    assert fitted.format == "jpeg"
    assert len(fitted.data) <= 60_000
    assert decoded(fitted.data).mode == "RGB"


@pytest.mark.parametrize("mode", ["CMYK", "P", "L", "1", "LA", "I;16"])
def test_unusual_modes_are_converted(mode: str) -> None:
    """CMYK, palette, grey, bilevel, grey+alpha and 16-bit images fit to an 8-bit JPEG/PNG."""
    source = picture((300, 200), mode="RGB").convert(mode) if mode != "I;16" else None
    if source is None:
        source = Image.new("I;16", (300, 200), 40000)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    fitted = fit_image_bytes(encode(source, fmt), FitSettings(fit="always"))
    out = decoded(fitted.data)
    assert out.mode in ("RGB", "RGBA")
    assert out.size == (200, 200)
    if mode == "I;16":
        # 40000 of 65535 is about 156 of 255: 16-bit values are scaled, not clipped to white.
        red, _, _ = out.convert("RGB").getpixel((100, 100))  # type: ignore[misc]
        assert 145 <= red <= 165


def test_decompression_bomb_is_rejected_from_the_header() -> None:
    """A tiny PNG claiming 30000x30000 pixels is rejected before decoding, as a bomb."""
    data = png_with_header(30_000, 30_000)
    assert len(data) < 200
    verdict = judge_image_bytes(data, DEFAULT)
    assert not verdict.usable
    assert verdict.reason == "decompression bomb: 900 megapixels over the 40 megapixel limit"
    assert (verdict.width, verdict.height) == (30_000, 30_000)
    with pytest.raises(ImageError, match="decompression bomb"):
        fit_image_bytes(data, DEFAULT)


def test_max_pixels_is_a_setting() -> None:
    """The pixel limit follows the settings, not Pillow's global default."""
    verdict = judge_image_bytes(SMALL_PNG, FitSettings(max_pixels=1_000))
    assert verdict.reason == "decompression bomb: 0 megapixels over the 0 megapixel limit"


def read_with_limit(path: Path, limit: int) -> tuple[bytes | None, str | None, int]:
    """Open ``path`` the way the catalog does (read-only, non-blocking) and read it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return read_open_file(fd, limit)
    finally:
        os.close(fd)


def test_over_max_source_bytes_is_rejected_without_reading(tmp_path: Path) -> None:
    """A file larger than max_source_bytes is refused by its size, its bytes unread."""
    path = write(tmp_path, "a.png", SMALL_PNG)
    data, reason, size = read_with_limit(path, 100)
    assert data is None
    assert reason == f"larger than max_source_bytes ({human_bytes(len(SMALL_PNG))} over 100 bytes)"
    assert size == len(SMALL_PNG)


def test_file_at_the_limit_is_read_whole(tmp_path: Path) -> None:
    """A file of exactly max_source_bytes is read in full from its start."""
    path = write(tmp_path, "a.png", SMALL_PNG)
    assert read_with_limit(path, len(SMALL_PNG)) == (SMALL_PNG, None, len(SMALL_PNG))


def test_folder_descriptor_is_rejected_not_read(tmp_path: Path) -> None:
    """A descriptor of a folder is refused as not a regular file, not read."""
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert read_with_limit(folder, DEFAULT.max_source_bytes) == (
        None,
        "not a regular file (a folder)",
        0,
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_rejected_without_blocking(tmp_path: Path) -> None:
    """A FIFO with no writer is refused at once instead of hanging the reader."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert read_with_limit(fifo, DEFAULT.max_source_bytes) == (None, "not a regular file", 0)


def test_fit_raises_only_image_error() -> None:
    """Every failure of fit_image_bytes is an ImageError with the reason in it."""
    with pytest.raises(ImageError, match=r"not an image \(text file\)"):
        fit_image_bytes(b"hello\n", DEFAULT)
    with pytest.raises(ImageError, match="empty file"):
        fit_image_bytes(b"", DEFAULT)
    with pytest.raises(ImageError, match="truncated"):
        fit_image_bytes(SMALL_JPEG[:-5], DEFAULT)


def test_fit_shrinks_dimensions_when_quality_is_not_enough() -> None:
    """A tight byte limit is met by lowering quality and then the dimensions."""
    data = encode(picture((800, 800), noise=True), "PNG")
    fitted = fit_image_bytes(data, FitSettings(max_bytes=8_000))
    assert len(fitted.data) <= 8_000
    assert fitted.width == fitted.height < 400


def test_fit_cache_name_follows_source_and_settings() -> None:
    """The fitted copy's name changes with the source hash and every fit setting."""
    sha = "ab" * 32
    name = fit_cache_name(sha, DEFAULT, "jpeg")
    assert name.startswith(sha + "-")
    assert name.endswith(".jpg")
    assert fit_cache_name(sha, DEFAULT, "png").endswith(".png")
    assert fit_cache_name(sha, FitSettings(), "jpeg") == name
    for changed in (
        FitSettings(size=200),
        FitSettings(crop="none"),
        FitSettings(max_bytes=100_000),
        FitSettings(fit="always"),
    ):
        assert fit_cache_name(sha, changed, "jpeg") != name
    assert fit_cache_name("cd" * 32, DEFAULT, "jpeg") != name


def test_read_fitted_accepts_a_good_copy_and_refuses_a_bad_one() -> None:
    """A stored fitted copy is re-checked before reuse."""
    source = encode(picture((600, 600)), "WEBP")
    verdict = judge_image_bytes(source, DEFAULT)
    fitted = fit_image_bytes(source, DEFAULT)
    assert read_fitted(fitted.data, verdict, DEFAULT) == fitted
    with pytest.raises(ImageError):
        read_fitted(fitted.data[:-20], verdict, DEFAULT)
    with pytest.raises(ImageError, match="larger than size"):
        read_fitted(fitted.data, verdict, FitSettings(size=100))


def test_human_bytes() -> None:
    """Byte counts read the way the check command prints them."""
    assert human_bytes(512) == "512 bytes"
    assert human_bytes(94_000) == "92 KB"
    assert human_bytes(716_800) == "700 KB"
    assert human_bytes(1_887_437) == "1.8 MB"


def test_check_lines() -> None:
    """Describe gives the one-line summaries of the check command."""
    ok = judge_image_bytes(SMALL_PNG, DEFAULT)
    assert check_line(ok) == f"ok: png {human_bytes(len(SMALL_PNG))} 64\u00d748"
    assert check_line(judge_image_bytes(b"", DEFAULT)) == "rejected: empty file"
    source = encode(picture((2000, 1500)), "WEBP")
    fitted = fit_image_bytes(source, DEFAULT)
    assert check_line(fitted) == (
        f"fitted: webp {human_bytes(len(source))} 2000\u00d71500 \u2192 "
        f"jpeg {human_bytes(len(fitted.data))} 400\u00d7400"
    )
    assert check_line(judge_image_bytes(source, DEFAULT)).startswith("needs fitting: webp")


def test_settings_are_validated() -> None:
    """Nonsense settings fail at construction."""
    with pytest.raises(ValueError, match="size"):
        FitSettings(size=0)
    with pytest.raises(ValueError, match="fit"):
        FitSettings(fit="sometimes")  # type: ignore[arg-type]


def test_verdict_and_fitted_are_frozen() -> None:
    """Verdicts and fitted images are immutable data."""
    verdict = judge_image_bytes(SMALL_PNG, DEFAULT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.usable = False  # type: ignore[misc]
    assert isinstance(verdict, ImageVerdict)
    assert not isinstance(verdict, FittedImage)


# -- properties -------------------------------------------------------------------------------

MODES = ["RGB", "RGBA", "P", "L", "CMYK"]
FORMATS = ["JPEG", "PNG", "WEBP", "BMP", "GIF"]


def saved_any_mode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """Save ``image`` in ``fmt``, converting to a mode the format takes if needed."""
    try:
        return encode(image, fmt, **params)
    except (OSError, ValueError, KeyError):
        fallback = "RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB"
        if fmt == "JPEG":
            fallback = "RGB"
        return encode(image.convert(fallback), fmt, **params)


@st.composite
def source_images(draw: st.DrawFn) -> bytes:
    """Draw an encoded image of random size, mode, format and EXIF orientation."""
    width = draw(st.integers(1, 1500))
    height = draw(st.integers(1, 1500))
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS))
    image = picture((width, height), mode=mode, seed=draw(st.integers(0, 1000)))
    if mode == "P" and draw(st.booleans()):
        image.info["transparency"] = 0
    params: dict[str, object] = {}
    if fmt == "JPEG":
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(1, 8))
        params["exif"] = exif.tobytes()
    return saved_any_mode(image, fmt, **params)


@settings(max_examples=40, deadline=None)
@given(
    data=source_images(),
    size=st.integers(16, 800),
    crop=st.sampled_from(["center", "none"]),
    max_bytes=st.sampled_from([6_000, 40_000, 716_800]),
)
def test_property_fitted_output_is_always_sendable(
    data: bytes, size: int, crop: str, max_bytes: int
) -> None:
    """Any decodable image fits to a JPEG/PNG within max_bytes and size (square if cropped)."""
    fit_settings = FitSettings(size=size, crop=crop, max_bytes=max_bytes)  # type: ignore[arg-type]
    fitted = fit_image_bytes(data, fit_settings)
    out = decoded(fitted.data)
    assert out.format is not None
    assert out.format.lower() == fitted.format
    assert len(fitted.data) <= max_bytes
    assert max(out.size) <= size
    assert out.size == (fitted.width, fitted.height)
    if crop == "center":
        assert fitted.width == fitted.height
    assert judge_image_bytes(fitted.data, dataclasses.replace(fit_settings, fit="off")).usable


def damaged(original: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    """Return ``original`` cut to ``cut`` bytes with some bytes XOR-ed."""
    data = bytearray(original[:cut])
    for index, mask in flips:
        if data:
            data[index % len(data)] ^= mask
    return bytes(data)


@settings(max_examples=60, deadline=None)
@given(
    which=st.sampled_from(["jpeg", "png"]),
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
)
def test_property_damaged_files_never_raise(
    which: str, cut: int, flips: list[tuple[int, int]]
) -> None:
    """Cut or bit-flipped JPEG/PNG files give a verdict (fit an ImageError), never a crash."""
    original = encode(picture((96, 80)), "JPEG" if which == "jpeg" else "PNG")
    data = damaged(original, cut % (len(original) + 1), flips)
    verdict = judge_image_bytes(data, DEFAULT)
    assert verdict.usable or verdict.reason
    assert verdict.sha256 == hashlib.sha256(data).hexdigest()
    with contextlib.suppress(ImageError):
        fit_image_bytes(data, DEFAULT)


def test_only_the_plugins_of_the_formats_we_open_are_ever_loaded(tmp_path: Path) -> None:
    """Judging and fitting every format we take loads those plugins only (no EPS, PDF, ...);
    AVIF's, with its codec library, only once a file may be one."""
    samples = {
        "png": SMALL_PNG,
        "jpg": encode(picture((900, 900), noise=True), "JPEG", quality=95),
        "mpo": encode(picture((64, 48)), "MPO", save_all=True, append_images=[picture((64, 48))]),
        "webp": encode(picture((90, 50)), "WEBP"),
        "gif": animated_gif(),
        "bmp": encode(picture((50, 90)), "BMP"),
        "tiff": encode(picture((70, 70)), "TIFF"),
        "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        "avif": encode(picture((60, 40)), "AVIF"),
    }
    for name, data in samples.items():
        write(tmp_path, name, data)
    script = f"""
import sys
from pathlib import Path
from rotator.images import FitSettings, fit_image_bytes, judge_image_bytes
def plugins():
    return sorted(m[4:] for m in sys.modules if m.startswith("PIL.") and m.endswith("Plugin"))
for name in {list(samples)!r}:
    if name == "avif":
        print(plugins())
    verdict = judge_image_bytes(Path({str(tmp_path)!r}, name).read_bytes(), FitSettings())
    if verdict.usable:
        fit_image_bytes(Path({str(tmp_path)!r}, name).read_bytes(), FitSettings(fit="always"))
    print(name, verdict.usable)
print(plugins())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    lines = done.stdout.splitlines()
    assert [line for line in lines if not line.startswith("[")] == [
        f"{name} {name != 'eps'}" for name in samples
    ]
    ours = ["BmpImagePlugin", "GifImagePlugin", "JpegImagePlugin", "MpoImagePlugin"]
    ours += ["PngImagePlugin", "TiffImagePlugin", "WebPImagePlugin"]
    ours += ["PpmImagePlugin"]  # Pillow's own first load (preinit) takes it with BMP to PNG
    before_avif, after = (line for line in lines if line.startswith("["))
    assert before_avif == str(sorted(ours))
    assert after == str(sorted([*ours, "AvifImagePlugin"]))
