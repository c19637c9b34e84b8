"""Decode, validate and fit one image file for the avatar endpoint (JPEG or PNG, ≤ 700 KB).

This is the only module that imports Pillow. Everything here blocks: the catalogs call
it from worker threads. A file is read once into memory (bounded by
``max_source_bytes``) and hashed and decoded from those bytes, so the hash and the
verdict always describe the same version of a file that may be changing on disk.
Decoding is serialised by a lock so at most one large image is in memory at a time.

Memory: before anything is decoded, the header's size and mode say how much the pixels
take (``width x height x bytes per pixel``). Over ``max_decoded_bytes`` a JPEG is decoded
at 1/2, 1/4 or 1/8 scale (draft mode) and anything else is rejected; fitting reduces the
decoded image at once (``Image.reduce``), so a fit peaks near twice the budget.

Warnings of Pillow (the ``warnings`` module) and of libtiff (written straight to file
descriptor 2) during a decode are captured and handed to the sink set with
``set_library_sink``, which logs them as ``library.log`` events.

Why one module of this size: reading, judging and fitting are one job done on the same
bytes under the same decode lock and memory budget, and this is the only module that may
import Pillow; the header checks, the draft-mode sizing and the fitting all need Pillow's
image objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import io
import math
import os
import stat
import struct
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Literal

from PIL import Image, ImageFile, UnidentifiedImageError

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
# JPEG covers multi-picture (MPO) files too. Only these plugins are loaded, not all of
# Pillow's (``Image.init``: 2.5 MiB more of every daemon's memory); AVIF's (1.2 MiB, with
# its codec library) on the first file that may be one. AVIF exists only where Pillow was
# built with it.
_OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_OPEN_FORMATS_AVIF = (*_OPEN_FORMATS, "AVIF")
for _plugin in ("Jpeg", "Png", "WebP", "Gif", "Bmp", "Tiff"):
    importlib.import_module(f"PIL.{_plugin}ImagePlugin")
_JPEG_QUALITIES = (90, 85, 80, 75, 70, 60, 50, 40)
_SHRINK_STEP = 0.8
_MIN_SIDE = 16
_MAX_KEPT_ICC = 64 * 1024
_DECODE_LOCK = threading.Lock()
_DRAFT_FACTORS = (2, 4, 8)  # the scales a JPEG decodes at for free
# Image.reduce works on 8-bit bands and 32-bit I/F; not on "1", "P" or 16-bit modes.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBa", "La", "CMYK", "I", "F", "YCbCr"})
_MAX_LIBRARY_LINES = 20
_MAX_BMP_PPM = 1_000_000  # pixels per metre (25,400 dpi): more is a broken header
_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
LibrarySink = Callable[[str, str], None]  # (library, message)
_library_sink: LibrarySink | None = None


def set_library_sink(sink: LibrarySink | None) -> None:
    """Send warnings Pillow and libtiff give while decoding to ``sink(library, message)``."""
    global _library_sink  # noqa: PLW0603 (one process-wide sink, set once at start)
    _library_sink = sink


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


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ImageVerdict:
    """Say whether one file can be sent, and what it is.

    ``mime`` is the type of the bytes that will be sent: the file's own type when it is
    sent as it is, the expected one (PNG for transparency, else JPEG) when it needs
    fitting; the fitted copy's ``mime`` is the final word. ``sha256`` is None when the
    bytes could not be read, so the verdict says nothing about the content and must not
    be cached. ``settings_key`` is the ``FitSettings.verdict_key`` it was made under.
    """

    usable: bool
    reason: str | None  # why it is not usable; None when it is
    size_bytes: int
    format: str | None = None
    mime: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    needs_fit: bool = False
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
        usable=False, reason=reason, size_bytes=size_bytes, settings_key=settings_key
    )


def judge_image_bytes(data: bytes, settings: FitSettings) -> ImageVerdict:
    """Fully decode in-memory file bytes and judge them against ``settings``."""
    digest = hashlib.sha256(data).hexdigest()

    def verdict(
        reason: str | None,
        fmt: str | None = None,
        size: tuple[int, int] | None = None,
        mime: str | None = None,
        needs_fit: bool = False,
    ) -> ImageVerdict:
        """Return the verdict on these bytes: usable when no reason speaks against them."""
        return ImageVerdict(
            usable=reason is None,
            reason=reason,
            format=fmt,
            mime=mime,
            size_bytes=len(data),
            width=size[0] if size else None,
            height=size[1] if size else None,
            sha256=digest,
            needs_fit=needs_fit,
            settings_key=settings.verdict_key,
        )

    if not data:
        return verdict("empty file")
    if len(data) > settings.max_source_bytes:
        return verdict(f"larger than max_source_bytes ({human_bytes(len(data))})")
    fmt: str | None = None
    size: tuple[int, int] | None = None
    compression: object = None
    try:
        with _DECODE_LOCK, _library_output(_library_name(data)):
            with Image.open(io.BytesIO(data), formats=_formats_for(data)) as probe:
                fmt = _format_name(probe.format)
                size = probe.size
                compression = probe.info.get("compression")
                problem = _header_problem(probe, fmt, data, settings)
                if problem is not None:
                    return verdict(problem, fmt, size)
                # verify() walks every chunk and checksum (catches PNGs that load() accepts
                # while their tail is missing); it leaves the image unusable, so reopen.
                probe.verify()
            with Image.open(io.BytesIO(data), formats=_formats_for(data)) as image:
                factor = _draft_factor(image, settings)
                if factor > 1:
                    image.draft(image.mode, (-(-size[0] // factor), -(-size[1] // factor)))
                image.load()
                transparent = image.has_transparency_data
                problem = _decoded_problem(image, fmt)
                if problem is not None:
                    return verdict(problem, fmt, size)
    except UnidentifiedImageError:
        kind = "text file" if _looks_like_text(data) else "unknown or unsupported format"
        return verdict(f"not an image ({kind})")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return verdict("decompression bomb", fmt, size)
    except MemoryError:
        return verdict("too large to decode", fmt, size)
    except Exception as exc:  # Pillow raises many types on corrupt input
        named = fmt or _sniff_format(data)
        return verdict(_failure_reason(exc, named, compression), fmt, size)

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
        return verdict(reason, fmt, size)
    needs_fit = settings.fit == "always" or not sendable
    sent_format = ("png" if transparent else "jpeg") if needs_fit else fmt
    return verdict(None, fmt, size, SENDABLE_MIME[sent_format], needs_fit)


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


def check_line(item: ImageVerdict | FittedImage) -> str:
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


def os_error_reason(exc: OSError) -> str:
    """Say in a few words why a file or folder could not be opened or read."""
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "vanished"
    return (exc.strerror or str(exc)).lower()


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
    except OSError as exc:
        return None, f"unreadable: {os_error_reason(exc)}", 0
    data = b"".join(chunks)
    if len(data) > limit:
        return None, _too_large(len(data), limit), len(data)
    return data, None, len(data)


def _too_large(size: int, limit: int) -> str:
    return f"larger than max_source_bytes ({human_bytes(size)} over {human_bytes(limit)})"


def _decode_for_fit(data: bytes, settings: FitSettings) -> tuple[Image.Image, bytes | None]:
    """Decode the first frame upright, cropped and resized; return it (RGB/RGBA) and its ICC.

    The decoded frame is reduced by a whole factor straight away (JPEG: while decoding),
    so no full-size copy is ever made by the steps after it.
    """
    with (
        _library_output(_library_name(data)),
        Image.open(io.BytesIO(data), formats=_formats_for(data)) as opened,
    ):
        opened.seek(0)
        width, height = opened.size
        short, long = min(width, height), max(width, height)
        scale = settings.size / (short if settings.crop == "center" else long)
        factor = _draft_factor(opened, settings)
        if scale < 1 or factor > 1:
            # JPEG decodes at 1/2, 1/4 or 1/8 scale for free; draft never goes below this.
            target = min(scale, 1 / factor)
            opened.draft(
                None, (max(1, math.ceil(width * target)), max(1, math.ceil(height * target)))
            )
        opened.load()
        icc = opened.info.get("icc_profile") if opened.mode in ("RGB", "RGBA", "P") else None
        orientation = _orientation(opened)
        # Draft mode may have decoded it smaller already: reduce what is left to do.
        decoded_short, decoded_long = min(opened.size), max(opened.size)
        left = settings.size / (decoded_short if settings.crop == "center" else decoded_long)
        whole = int(1 / left) if left < 1 else 1
        image: Image.Image = opened.reduce(whole) if whole > 1 and _reducible(opened) else opened
        if image is opened:
            image = opened.copy()
    transpose = _TRANSPOSE.get(orientation)
    if transpose is not None:
        image = image.transpose(transpose)
    image = _to_rgb_or_rgba(image)
    if settings.crop == "center":
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    image = _shrink_to(image, settings.size)
    kept_icc = icc if isinstance(icc, bytes) and len(icc) <= _MAX_KEPT_ICC else None
    return image, kept_icc


def _orientation(image: Image.Image) -> int:
    """Return the EXIF orientation (1 when absent or unreadable: a broken EXIF block is no loss)."""
    try:
        value = image.getexif().get(_ORIENTATION, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) else 1


def _reducible(image: Image.Image) -> bool:
    return image.mode in _REDUCIBLE_MODES


def decode_cost(mode: str, fmt: str | None, width: int, height: int) -> int:
    """Return the bytes decoding and fitting an image takes at its peak, from its header.

    Pillow keeps ``bytes_per_pixel(mode)`` per pixel; a mode ``Image.reduce`` cannot work
    on is converted to RGB at full size and then cropped (8 more); WebP and AVIF decoders
    hold the frame twice more while handing it over (measured: bench/bench_memory.py).
    """
    per_pixel = bytes_per_pixel(mode)
    if mode not in _REDUCIBLE_MODES:
        per_pixel += 8
    copies = 3 if fmt in ("webp", "avif") else 1
    return width * height * per_pixel * copies


def bytes_per_pixel(mode: str) -> int:
    """Return how many bytes Pillow keeps per pixel of ``mode`` (multi-band images use 4)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _draft_factor(image: Image.Image, settings: FitSettings) -> int:
    """Return the JPEG scale-down (1, 2, 4 or 8) that keeps decoding within the budget."""
    fmt = _format_name(image.format)
    need = decode_cost(image.mode, fmt, *image.size)
    if need <= settings.max_decoded_bytes or fmt != "jpeg":
        return 1
    for factor in _DRAFT_FACTORS:
        if need // (factor * factor) <= settings.max_decoded_bytes:
            return factor
    return _DRAFT_FACTORS[-1]


def _header_problem(probe: Image.Image, fmt: str, data: bytes, settings: FitSettings) -> str | None:
    """Return why the header alone rules the image out (size, memory, a broken BMP), or None."""
    width, height = probe.size
    if fmt == "bmp":
        broken = _bmp_header_problem(data)
        if broken is not None:
            return f"malformed BMP: {broken}"
    pixels = width * height
    if pixels > settings.max_pixels:
        return (
            f"decompression bomb: {_megapixels(pixels)} megapixels over the "
            f"{_megapixels(settings.max_pixels)} megapixel limit"
        )
    if min(width, height) < settings.min_size:
        return (
            f"too small: {width}{_TIMES}{height}, under the images.min_size of "
            f"{settings.min_size} pixels"
        )
    need = decode_cost(probe.mode, fmt, width, height)
    if need > settings.max_decoded_bytes:
        smallest = need // (_DRAFT_FACTORS[-1] ** 2) if fmt == "jpeg" else need
        if smallest > settings.max_decoded_bytes:
            return (
                f"needs about {human_bytes(need)} of memory to decode and fit "
                f"({fmt.upper()} {probe.mode}), over the images.max_decoded_bytes budget of "
                f"{human_bytes(settings.max_decoded_bytes)}"
            )
    return None


def _decoded_problem(image: Image.Image, fmt: str) -> str | None:
    """Return what the decoded pixels show wrong (a BMP palette index past its end), or None."""
    if fmt == "bmp" and image.mode == "P" and image.palette is not None:
        colours = len(image.palette.colors) or len(image.palette.tobytes()) // 3
        _, highest = image.getextrema()
        if isinstance(highest, int) and colours and highest >= colours:
            return f"malformed BMP: palette index {highest} past its {colours} colours"
    return None


def _bmp_header_problem(data: bytes) -> str | None:
    """Return what is wrong in a BMP's headers that Pillow lets through, or None.

    The checks follow the bmpsuite "bad" files of Pillow's own test corpus.
    """
    if len(data) < 54 or struct.unpack_from("<I", data, 14)[0] < 40:
        return None  # an OS/2 header: too little to check
    file_size = struct.unpack_from("<I", data, 2)[0]
    width, height, planes, _bits, compression, image_size, x_ppm, y_ppm = struct.unpack_from(
        "<iiHHIIii", data, 18
    )
    if file_size > len(data):
        return f"header says {file_size} bytes, the file has {len(data)}"
    if planes != 1:
        return f"{planes} colour planes (must be 1)"
    if width <= 0:
        return f"width {width}"
    if compression in (1, 2) and height < 0:
        return "a top-down RLE bitmap (RLE must be bottom-up)"
    if image_size > len(data):
        return f"header says {image_size} bytes of pixels, the file has {len(data)}"
    if not (0 <= x_ppm <= _MAX_BMP_PPM and 0 <= y_ppm <= _MAX_BMP_PPM):
        return f"resolution {x_ppm}{_TIMES}{y_ppm} pixels per metre"
    return None


def _failure_reason(exc: Exception, fmt: str | None, compression: object = None) -> str:
    """Name the real cause of a decode failure, in words a user can act on."""
    name = fmt.upper() if fmt else "image"
    text = str(exc)
    lowered = text.lower()
    if fmt == "tiff" and isinstance(compression, str) and compression not in _TIFF_BUILT_IN:
        # libtiff fails with a bare "decoder error" when a codec was left out of its build.
        return f"TIFF compression {compression!r} is not available in this build ({text})"
    if "not available" in lowered and ("decoder" in lowered or "encoder" in lowered):
        return f"{name} compression not available in this Pillow build ({text})"
    if "text chunk" in lowered or "max_text_chunk" in lowered:
        return f"{name} text chunk too large"
    if "unsupported" in lowered or "not supported" in lowered:
        return f"unsupported {name} variant ({text[:80]})"
    return f"truncated or corrupt {name}"


_TIFF_BUILT_IN = frozenset(
    {
        "raw",
        "tiff_ccitt",
        "group3",
        "group4",
        "tiff_lzw",
        "tiff_jpeg",
        "jpeg",
        "tiff_adobe_deflate",
        "tiff_raw_16",
        "packbits",
        "tiff_thunderscan",
        "tiff_deflate",
        "tiff_sgilog",
        "tiff_sgilog24",
    }
)
_MAGIC = (
    (b"BM", "bmp"),
    (b"\x89PNG", "png"),
    (b"\xff\xd8", "jpeg"),
    (b"GIF8", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


def _sniff_format(data: bytes) -> str | None:
    """Name the format from the first bytes, for errors Pillow raises before it does."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def _formats_for(data: bytes) -> tuple[str, ...]:
    """Return the formats to try on ``data``: AVIF too when it is an ISO media file."""
    if data[4:8] != b"ftyp":
        return _OPEN_FORMATS
    try:
        importlib.import_module("PIL.AvifImagePlugin")  # once: then Python's import cache
    except ImportError:  # a Pillow without it: such a file is not an image we can open
        return _OPEN_FORMATS
    return _OPEN_FORMATS_AVIF


def _library_name(data: bytes) -> str:
    return "libtiff" if data[:4] in (b"II*\x00", b"MM\x00*") else "Pillow"


@contextlib.contextmanager
def _library_output(library: str) -> Iterator[None]:
    """Capture Pillow's warnings and what C libraries write to fd 2; hand them to the sink."""
    lines: list[str] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as recorded, _stderr_captured(lines):
            warnings.simplefilter("always")
            try:
                yield
            finally:
                caught = list(recorded)
    finally:
        _hand_over(caught, lines, library)


def _hand_over(caught: list[warnings.WarningMessage], lines: list[str], library: str) -> None:
    """Give the captured warnings and output lines to the sink, each once, a few at most."""
    messages = [("Pillow", f"{type(w.message).__name__}: {w.message}") for w in caught]
    messages += [(library, line) for line in lines if line.strip()]
    sink = _library_sink
    if sink is None:
        return
    seen: set[str] = set()
    for source, message in messages:
        short = " ".join(message.split())[:300]
        if short not in seen and len(seen) < _MAX_LIBRARY_LINES:
            seen.add(short)
            sink(source, short)


@contextlib.contextmanager
def _stderr_captured(lines: list[str]) -> Iterator[None]:
    """Point fd 2 at a temporary file for the block, then collect its lines into ``lines``."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        capture = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the with below)
    except OSError:  # no writable temp dir (a read-only container): no capture
        os.close(saved)
        yield
        return
    with capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read(64 * 1024).decode("utf-8", "replace")
            lines.extend(text.splitlines())


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
