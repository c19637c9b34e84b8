"""Hostile images: honest verdicts (Pillow's corpus as oracle), a memory budget, warnings."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from rotator.catalog import Catalog, MemoryValidationCache
from rotator.images import FitSettings, fit_image_bytes, judge_image_bytes, set_library_sink

CORPUS = Path(__file__).parent / "pillow_corpus"
ANY_SIZE = FitSettings(min_size=1)  # the corpus images are small: judge them on content


@pytest.mark.parametrize("path", sorted((CORPUS / "bmp_bad").glob("*.bmp")), ids=lambda p: p.name)
def test_every_bad_bmp_of_the_bmp_suite_is_refused(path: Path) -> None:
    """The BMP Suite's "bad" files are refused, never fitted (badrle aside: see below)."""
    verdict = judge_image_bytes(path.read_bytes(), ANY_SIZE)
    if path.name == "badrle.bmp":
        pytest.skip("Pillow decodes this RLE stream without complaint; no header shows it")
    assert not verdict.usable, path.name
    assert verdict.reason is not None
    assert "BMP" in verdict.reason or "decompression bomb" in verdict.reason


@pytest.mark.parametrize(
    "path", sorted((CORPUS / "bmp_unsupported").glob("*.bmp")), ids=lambda p: p.name
)
def test_bmp_variants_pillow_cannot_read_are_named_unsupported(path: Path) -> None:
    """A BMP variant Pillow does not support says so, not "truncated or corrupt"."""
    verdict = judge_image_bytes(path.read_bytes(), ANY_SIZE)
    assert not verdict.usable
    assert verdict.reason is not None
    assert verdict.reason.startswith("unsupported BMP variant"), verdict.reason


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("broken.png", "not an image"),
        ("png_decompression_dos.png", "PNG text chunk too large"),
        ("tRNS_null_1x1.png", None),  # usable when any size is allowed
        ("crash-0c7e0e8e11ce787078f00b5b0ca409a167f070e0.tif", "truncated or corrupt TIFF"),
    ],
)
def test_corpus_samples_get_their_real_cause(name: str, reason: str | None) -> None:
    """Pillow's crash and DoS samples are refused naming what is really wrong."""
    verdict = judge_image_bytes((CORPUS / name).read_bytes(), ANY_SIZE)
    if reason is None:
        assert verdict.usable, verdict.reason
    else:
        assert not verdict.usable
        assert verdict.reason is not None
        assert verdict.reason.startswith(reason), verdict.reason


def test_webp_compressed_tiff_is_usable_or_names_the_missing_codec() -> None:
    """A WebP-compressed TIFF decodes, or says its compression is not in this build."""
    verdict = judge_image_bytes((CORPUS / "hopper_webp.tif").read_bytes(), ANY_SIZE)
    assert verdict.usable or "compression 'webp' is not available" in str(verdict.reason)


def test_images_under_min_size_are_too_small() -> None:
    """A 1x1 image is rejected as too small under the default 100 px minimum, naming it."""
    verdict = judge_image_bytes(
        (CORPUS / "tRNS_null_1x1.png").read_bytes(), FitSettings(min_size=100)
    )
    assert (
        verdict.reason
        == "too small: 1\N{MULTIPLICATION SIGN}1, under the images.min_size of 100 pixels"
    )
    gif = judge_image_bytes((CORPUS / "hopper.gif").read_bytes(), FitSettings(min_size=100))
    assert gif.usable  # 128x128
    buffer = io.BytesIO()
    Image.new("P", (1, 1)).save(buffer, "GIF")
    tiny = judge_image_bytes(buffer.getvalue(), FitSettings(min_size=100))
    assert str(tiny.reason).startswith("too small: 1")


def test_library_warnings_are_captured_not_written_to_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """libtiff and Pillow warnings of a corrupt TIFF reach the sink, not file descriptor 2."""
    heard: list[tuple[str, str]] = []
    set_library_sink(lambda library, message: heard.append((library, message)))
    try:
        name = "crash-0c7e0e8e11ce787078f00b5b0ca409a167f070e0.tif"
        judge_image_bytes((CORPUS / name).read_bytes(), ANY_SIZE)
    finally:
        set_library_sink(None)
    out, err = capfd.readouterr()
    assert err == ""
    assert out == ""
    assert {library for library, _ in heard} == {"Pillow", "libtiff"}
    assert any("_tiffReadProc" in message for _, message in heard)


def test_misleading_extensions_change_no_verdict(tmp_path: Path) -> None:
    """Every corpus file under a wrong extension gets the verdict it gets under its own."""
    folder = tmp_path / "img"
    folder.mkdir()
    originals = [
        p for p in CORPUS.rglob("*") if p.suffix in (".bmp", ".png", ".tif", ".gif", ".jpg")
    ]
    wrong = {".bmp": ".jpg", ".png": ".gif", ".tif": ".png", ".gif": ".webp", ".jpg": ".png"}
    expected = {}
    for number, path in enumerate(originals):
        disguised = f"{number:02}-{path.stem}{wrong[path.suffix]}"
        shutil.copyfile(path, folder / disguised)
        expected[disguised] = judge_image_bytes(path.read_bytes(), ANY_SIZE).reason
    catalog = Catalog(folder, ANY_SIZE, MemoryValidationCache(), _ignore)
    found = {result.relative: result.verdict.reason for result in catalog.scan().files}
    assert found == expected


def _pattern_bytes(mode: str, size: tuple[int, int], fmt: str, **params: object) -> bytes:
    image = Image.new(mode, size, (200, 30, 30) if mode == "RGB" else 3)
    draw = ImageDraw.Draw(image)
    for x in range(0, size[0], 500):
        draw.line((x, 0, x, size[1]), fill=(0, 0, 0) if mode == "RGB" else 0, width=5)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_a_small_file_of_40_megapixels_is_refused_before_decoding() -> None:
    """A ~100 KB WebP of 39.7 megapixels is refused from its header, naming the budget."""
    data = _pattern_bytes("RGB", (7300, 5440), "WEBP", quality=10, method=0)
    assert len(data) < 1024 * 1024
    verdict = judge_image_bytes(data, FitSettings())
    assert not verdict.usable
    assert "images.max_decoded_bytes budget of 128.0 MB" in str(verdict.reason)


_PEAK = r"""
import re, sys
from rotator.images import FitSettings, fit_image_bytes
data = open(sys.argv[1], "rb").read()
def peak_kb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read())[1])
before = peak_kb()
fitted = fit_image_bytes(data, FitSettings())
after = peak_kb()
print((after - before) // 1024, fitted.width, fitted.height)
"""


@pytest.mark.parametrize(
    ("mode", "size", "fmt"),
    [("RGB", (6000, 5000), "PNG"), ("P", (3800, 3700), "GIF"), ("RGB", (7000, 5600), "JPEG")],
)
def test_fitting_an_image_just_inside_the_budget_peaks_under_256_mb(
    tmp_path: Path, mode: str, size: tuple[int, int], fmt: str
) -> None:
    """The largest accepted images fit with the process growing by less than 256 MB."""
    path = tmp_path / f"big.{fmt.lower()}"
    path.write_bytes(_pattern_bytes(mode, size, fmt))
    assert judge_image_bytes(path.read_bytes(), FitSettings()).usable
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    grew_mb, width, height = map(int, done.stdout.split())
    assert (width, height) == (400, 400)
    assert grew_mb < 256, f"fitting grew the process by {grew_mb} MB"


def test_fit_refuses_what_judging_refuses() -> None:
    """fit_image_bytes never decodes an image the budget rules out."""
    data = _pattern_bytes("P", (7000, 5000), "GIF")
    with pytest.raises(Exception, match="max_decoded_bytes"):
        fit_image_bytes(data, FitSettings())


def _ignore(event: str, **fields: object) -> None:
    """Drop catalog events."""
    del event, fields
