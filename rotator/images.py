"""Decode, validate and fit one image file for the avatar endpoint (JPEG or PNG, ≤ 700 KB).

This is the only module that imports Pillow. Everything here blocks: the service calls
it through ``asyncio.to_thread``. A file is read once into memory (bounded by
``max_source_bytes``) and hashed and decoded from those bytes, so the hash and the
verdict always describe the same version of a file that may be changing on disk.
Decoding is serialised by a lock so at most one large image is in memory at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import threading
from pathlib import Path
from typing import Literal

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from rotator.errors import ImageError

# Our own per-settings ``max_pixels`` check (made from the header, before decoding)
# replaces Pillow's process-wide one: Pillow's limit cannot follow our settings and it
# reports through the warnings module, whose filters are global and not thread-safe.
Image.MAX_IMAGE_PIXELS = None
# A truncated file must fail to decode, never come out half grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

ENDPOINT_MAX_BYTES = 700 * 1024
SENDABLE_MIME = {"jpeg": "image/jpeg", "png": "image/png"}
FITTED_EXTENSIONS = {"jpeg": ".jpg", "png": ".png"}
_FIT_VERSION = "1"  # bump when fitting output changes, so cached fitted copies are remade
# Only plain raster formats: no EPS (Ghostscript), no exotic plugins, nothing that runs tools.
# JPEG covers multi-picture (MPO) files too; AVIF exists only where Pillow was built with it.
Image.init()
_OPEN_FORMATS = tuple(
    name for name in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF") if name in Image.OPEN
)
_JPEG_QUALITIES = (90, 85, 80, 75, 70, 60, 50, 40)
_SHRINK_STEP = 0.8
_MIN_SIDE = 16
_MAX_KEPT_ICC = 64 * 1024
_DECODE_LOCK = threading.Lock()
_TIMES = "\N{MULTIPLICATION SIGN}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitSettings:
    """Hold how images are checked and fitted for the endpoint."""

    fit: Literal["auto", "always", "off"] = "auto"
    size: int = 400
    crop: Literal["center", "none"] = "center"
    max_bytes: int = ENDPOINT_MAX_BYTES
    max_source_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_size: int = 1  # the config's default is 100; callers of the library choose
    max_decoded_bytes: int = 128 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.fit not in ("auto", "always", "off"):
            raise ValueError(f"fit must be auto, always or off, not {self.fit!r}")
        if self.crop not in ("center", "none"):
            raise ValueError(f"crop must be center or none, not {self.crop!r}")
        for name in (
            "size",
            "max_bytes",
            "max_source_bytes",
            "max_pixels",
            "min_size",
            "max_decoded_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    @property
    def verdict_key(self) -> str:
        """Return a short hash of the settings a verdict depends on (not size or crop)."""
        return _short_hash(
            f"fit={self.fit}|max_bytes={self.max_bytes}|"
            f"max_source_bytes={self.max_source_bytes}|max_pixels={self.max_pixels}|"
            f"min_size={self.min_size}|max_decoded_bytes={self.max_decoded_bytes}"
        )

    @property
    def fit_key(self) -> str:
        """Return a short hash of the settings a fitted copy depends on."""
        return _short_hash(
            f"v{_FIT_VERSION}|fit={self.fit}|size={self.size}|crop={self.crop}|"
            f"max_bytes={self.max_bytes}"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageVerdict:
    """Say whether one file can be sent, and what it is.

    ``mime`` is the type of the bytes that will be sent: the file's own type when it is
    sent as it is, the expected one (PNG for transparency, else JPEG) when it needs
    fitting; the fitted copy's ``mime`` is the final word. ``sha256`` is None when the
    bytes could not be read, so the verdict says nothing about the content and must not
    be cached. ``settings_key`` is the ``FitSettings.verdict_key`` it was made under.
    """

    usable: bool
    reason: str | None
    format: str | None
    mime: str | None
    size_bytes: int
    width: int | None
    height: int | None
    sha256: str | None
    needs_fit: bool
    settings_key: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class FittedImage:
    """Hold a converted copy of an image, ready to send, and where it came from."""

    data: bytes
    format: str
    mime: str
    width: int
    height: int
    source_sha256: str
    sha256: str
    source_format: str
    source_bytes: int
    source_width: int
    source_height: int


def rejected_verdict(reason: str, size_bytes: int = 0, settings_key: str = "") -> ImageVerdict:
    """Return an unusable verdict for a file that was not (or could not be) decoded."""
    return ImageVerdict(
        usable=False,
        reason=reason,
        format=None,
        mime=None,
        size_bytes=size_bytes,
        width=None,
        height=None,
        sha256=None,
        needs_fit=False,
        settings_key=settings_key,
    )


def read_image_file(path: Path, max_source_bytes: int) -> bytes:
    """Read a whole regular file (at most ``max_source_bytes``); raise ``ImageError``."""
    data, reason, _ = _read_bounded(path, max_source_bytes)
    if data is None:
        raise ImageError(reason or "unreadable")
    return data


def inspect_image(path: Path, settings: FitSettings) -> ImageVerdict:
    """Read and fully decode one file and judge it against ``settings``; never raise."""
    data, reason, size = _read_bounded(path, settings.max_source_bytes)
    if data is None:
        return rejected_verdict(reason or "unreadable", size, settings.verdict_key)
    return judge_image_bytes(data, settings)


def judge_image_bytes(data: bytes, settings: FitSettings) -> ImageVerdict:
    """Fully decode in-memory file bytes and judge them against ``settings``."""
    digest = hashlib.sha256(data).hexdigest()

    def rejected(
        reason: str, fmt: str | None = None, size: tuple[int, int] | None = None
    ) -> ImageVerdict:
        return ImageVerdict(
            usable=False,
            reason=reason,
            format=fmt,
            mime=None,
            size_bytes=len(data),
            width=size[0] if size else None,
            height=size[1] if size else None,
            sha256=digest,
            needs_fit=False,
            settings_key=settings.verdict_key,
        )

    if not data:
        return rejected("empty file")
    if len(data) > settings.max_source_bytes:
        return rejected(f"larger than max_source_bytes ({human_bytes(len(data))})")
    fmt: str | None = None
    size: tuple[int, int] | None = None
    try:
        with _DECODE_LOCK:
            with Image.open(io.BytesIO(data), formats=_OPEN_FORMATS) as probe:
                fmt = _format_name(probe.format)
                size = probe.size
                pixels = size[0] * size[1]
                if pixels > settings.max_pixels:
                    return rejected(
                        f"decompression bomb: {_megapixels(pixels)} megapixels over the "
                        f"{_megapixels(settings.max_pixels)} megapixel limit",
                        fmt,
                        size,
                    )
                # verify() walks every chunk and checksum (catches PNGs that load() accepts
                # while their tail is missing); it leaves the image unusable, so reopen.
                probe.verify()
            with Image.open(io.BytesIO(data), formats=_OPEN_FORMATS) as image:
                image.load()
                transparent = image.has_transparency_data
    except UnidentifiedImageError:
        kind = "text file" if _looks_like_text(data) else "unknown or unsupported format"
        return rejected(f"not an image ({kind})")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return rejected("decompression bomb", fmt, size)
    except MemoryError:
        return rejected("too large to decode", fmt, size)
    except Exception:  # Pillow raises many types on corrupt input
        return rejected(f"truncated or corrupt {fmt.upper() if fmt else 'image'}", fmt, size)

    # Both are set before the decode can succeed.
    assert fmt is not None
    assert size is not None
    sendable = fmt in SENDABLE_MIME and len(data) <= settings.max_bytes
    if settings.fit == "off" and not sendable:
        if fmt not in SENDABLE_MIME:
            reason = f"{fmt.upper()} is not JPEG or PNG and fitting is off"
        else:
            reason = (
                f"over {human_bytes(settings.max_bytes)} ({human_bytes(len(data))}) "
                "and fitting is off"
            )
        return rejected(reason, fmt, size)
    needs_fit = settings.fit == "always" or not sendable
    sent_format = ("png" if transparent else "jpeg") if needs_fit else fmt
    mime = SENDABLE_MIME[sent_format]
    return ImageVerdict(
        usable=True,
        reason=None,
        format=fmt,
        mime=mime,
        size_bytes=len(data),
        width=size[0],
        height=size[1],
        sha256=digest,
        needs_fit=needs_fit,
        settings_key=settings.verdict_key,
    )


def fit_image(source: Path, settings: FitSettings) -> FittedImage:
    """Convert one file into a JPEG or PNG within ``settings``; raise ``ImageError``."""
    return fit_image_bytes(read_image_file(source, settings.max_source_bytes), settings)


def fit_image_bytes(data: bytes, settings: FitSettings) -> FittedImage:
    """Convert in-memory file bytes into a JPEG or PNG within ``settings``."""
    verdict = judge_image_bytes(data, dataclasses.replace(settings, fit="always"))
    if not verdict.usable:
        raise ImageError(verdict.reason or "not usable")
    assert verdict.format
    assert verdict.width
    assert verdict.height
    assert verdict.sha256
    try:
        with _DECODE_LOCK:
            image, icc = _decode_for_fit(data, settings)
            encoded, fmt, width, height = _encode_within(image, icc, settings)
    except ImageError:
        raise
    except Exception as exc:  # any Pillow failure becomes one clear error
        raise ImageError(f"cannot fit {verdict.format.upper()} image: {exc}") from exc
    return FittedImage(
        data=encoded,
        format=fmt,
        mime=SENDABLE_MIME[fmt],
        width=width,
        height=height,
        source_sha256=verdict.sha256,
        sha256=hashlib.sha256(encoded).hexdigest(),
        source_format=verdict.format,
        source_bytes=verdict.size_bytes,
        source_width=verdict.width,
        source_height=verdict.height,
    )


def read_fitted(data: bytes, source: ImageVerdict, settings: FitSettings) -> FittedImage:
    """Check a stored fitted copy still fits ``settings`` and describe it; raise ``ImageError``."""
    if len(data) > settings.max_bytes:
        raise ImageError("fitted copy is over max_bytes")
    verdict = judge_image_bytes(data, dataclasses.replace(settings, fit="off"))
    if not verdict.usable or verdict.format not in SENDABLE_MIME:
        raise ImageError(f"fitted copy is unusable: {verdict.reason}")
    assert verdict.width
    assert verdict.height
    assert verdict.sha256
    if max(verdict.width, verdict.height) > settings.size:
        raise ImageError("fitted copy is larger than size")
    if not (source.sha256 and source.format and source.width and source.height):
        raise ImageError("source verdict has no content facts")
    return FittedImage(
        data=data,
        format=verdict.format,
        mime=SENDABLE_MIME[verdict.format],
        width=verdict.width,
        height=verdict.height,
        source_sha256=source.sha256,
        sha256=verdict.sha256,
        source_format=source.format,
        source_bytes=source.size_bytes,
        source_width=source.width,
        source_height=source.height,
    )


def fit_cache_name(source_sha256: str, settings: FitSettings, image_format: str) -> str:
    """Return the file name of a fitted copy: ``<source sha256>-<fit key>.jpg|.png``."""
    return f"{source_sha256}-{settings.fit_key}{FITTED_EXTENSIONS[image_format]}"


def describe(item: ImageVerdict | FittedImage) -> str:
    """Return one line for ``rotator check``: ``ok: …``, ``fitted: … → …``, ``rejected: …``."""
    if isinstance(item, FittedImage):
        return (
            f"fitted: {item.source_format} {human_bytes(item.source_bytes)} "
            f"{item.source_width}{_TIMES}{item.source_height} → {item.format} "
            f"{human_bytes(len(item.data))} {item.width}{_TIMES}{item.height}"
        )
    if not item.usable:
        return f"rejected: {item.reason}"
    facts = f"{item.format} {human_bytes(item.size_bytes)} {item.width}{_TIMES}{item.height}"
    return f"needs fitting: {facts}" if item.needs_fit else f"ok: {facts}"


def human_bytes(n: int) -> str:
    """Format a byte count the way people read it: ``512 bytes``, ``92 KB``, ``1.8 MB``."""
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{round(n / 1024)} KB"
    if n < 1024**3:
        return f"{n / 1024**2:.1f} MB"
    return f"{n / 1024**3:.1f} GB"


def _read_bounded(path: Path, limit: int) -> tuple[bytes | None, str | None, int]:
    """Read a regular file of at most ``limit`` bytes: (data, None, size) or (None, why, size)."""
    try:
        # O_NONBLOCK: opening a FIFO someone dropped in the folder must not hang us.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        return None, "vanished while reading", 0
    except PermissionError:
        return None, "unreadable: permission denied", 0
    except OSError as exc:
        return None, f"unreadable: {(exc.strerror or str(exc)).lower()}", 0
    try:
        return read_open_file(fd, limit)
    finally:
        os.close(fd)


def read_open_file(fd: int, limit: int) -> tuple[bytes | None, str | None, int]:
    """Read an open regular file of at most ``limit`` bytes from its start (fd stays open).

    Return (data, None, size) or (None, why, size). Only this descriptor is read, so the
    bytes judged are the bytes of the file that was opened, whatever the path says now.
    """
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            kind = " (a folder)" if stat.S_ISDIR(status.st_mode) else ""
            return None, f"not a regular file{kind}", 0
        if status.st_size > limit:
            return None, _too_large(status.st_size, limit), status.st_size
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.pread(fd, min(1 << 20, limit + 1 - total), total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except FileNotFoundError:
        return None, "vanished while reading", 0
    except PermissionError:
        return None, "unreadable: permission denied", 0
    except OSError as exc:
        return None, f"unreadable: {(exc.strerror or str(exc)).lower()}", 0
    data = b"".join(chunks)
    if len(data) > limit:
        return None, _too_large(len(data), limit), len(data)
    return data, None, len(data)


def _too_large(size: int, limit: int) -> str:
    return f"larger than max_source_bytes ({human_bytes(size)} over {human_bytes(limit)})"


def _decode_for_fit(data: bytes, settings: FitSettings) -> tuple[Image.Image, bytes | None]:
    """Decode the first frame upright, cropped and resized; return it (RGB/RGBA) and its ICC."""
    with Image.open(io.BytesIO(data), formats=_OPEN_FORMATS) as opened:
        opened.seek(0)
        width, height = opened.size
        short, long = min(width, height), max(width, height)
        scale = settings.size / (short if settings.crop == "center" else long)
        if scale < 1:
            # JPEG decodes at 1/2, 1/4 or 1/8 scale for free; draft never goes below this.
            opened.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))
        opened.load()
        icc = opened.info.get("icc_profile") if opened.mode in ("RGB", "RGBA", "P") else None
        try:
            upright = ImageOps.exif_transpose(opened)
        except Exception:  # a broken EXIF block should not lose the picture
            upright = opened.copy()
    image = _to_rgb_or_rgba(upright)
    if settings.crop == "center":
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    image = _shrink_to(image, settings.size)
    kept_icc = icc if isinstance(icc, bytes) and len(icc) <= _MAX_KEPT_ICC else None
    return image, kept_icc


def _to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, or RGBA when the image really has transparency."""
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = image.convert("I")
        _, high = wide.getextrema()
        assert isinstance(high, int | float)
        if image.mode.startswith("I;16") or high > 255:
            top = 65535 if image.mode.startswith("I;16") else max(float(high), 1.0)
            wide = wide.point(lambda value: value * (255 / top))
        image = wide.convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        alpha_low, _ = rgba.getchannel("A").getextrema()
        if isinstance(alpha_low, int | float) and alpha_low < 255:
            return rgba
        return rgba.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _shrink_to(image: Image.Image, longest: int) -> Image.Image:
    """Resize so the longest side is at most ``longest``; never upscale."""
    if max(image.size) <= longest:
        return image
    ratio = longest / max(image.size)
    size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _encode_within(
    image: Image.Image, icc: bytes | None, settings: FitSettings
) -> tuple[bytes, str, int, int]:
    """Encode as PNG (transparent and small enough) or JPEG of falling quality, then size."""
    extra = {"icc_profile": icc} if icc else {}
    if image.mode == "RGBA":
        png = _save(image, "PNG", optimize=True, **extra)
        if len(png) <= settings.max_bytes:
            return png, "png", image.width, image.height
        flat = Image.new("RGB", image.size, "white")
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    current = image
    while True:
        for quality in _JPEG_QUALITIES:
            jpeg = _save(current, "JPEG", quality=quality, optimize=True, **extra)
            if len(jpeg) <= settings.max_bytes:
                return jpeg, "jpeg", current.width, current.height
        longest = int(max(current.size) * _SHRINK_STEP)
        if longest < _MIN_SIDE:
            raise ImageError(f"cannot be made smaller than {human_bytes(settings.max_bytes)}")
        current = _shrink_to(image, longest)


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _format_name(pillow_format: str | None) -> str:
    name = (pillow_format or "unknown").lower()
    # A multi-picture JPEG (many phone cameras) is a JPEG file with extra images after it.
    return "jpeg" if name == "mpo" else name


def _looks_like_text(data: bytes) -> bool:
    head = data[:2048]
    return b"\x00" not in head and all(byte >= 0x20 or byte in b"\t\n\r\f" for byte in head)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:.1f}".removesuffix(".0")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
