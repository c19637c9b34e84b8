"""Measure how much memory judging and fitting one large image takes (issue 9).

Each source is drawn once into a temp folder: a few large images just inside the default
``images.max_decoded_bytes`` budget (128 MB) and some just over it. Each is then judged
and fitted in a fresh subprocess, which reports how much its peak resident size grew
(``VmHWM``) and how long it took. Target: under 256 MB of growth for anything accepted.

    python bench/bench_memory.py            # ~30 s
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image, ImageDraw  # noqa: E402

TARGET_MB = 256
SOURCES = [
    ("jpeg-39mp", "RGB", (7000, 5600), "JPEG", {"quality": 50}),
    ("png-30mp", "RGB", (6000, 5000), "PNG", {}),
    ("tiff-float-30mp", "F", (6000, 5000), "TIFF", {"compression": "tiff_deflate"}),
    ("tiff-cmyk-30mp", "CMYK", (6000, 5000), "TIFF", {"compression": "tiff_deflate"}),
    ("gif-14mp", "P", (3800, 3700), "GIF", {}),
    ("gif-26mp", "P", (5200, 5000), "GIF", {}),
    ("webp-rgba-10mp", "RGBA", (3300, 3000), "WEBP", {"quality": 10}),
    ("webp-39.7mp", "RGB", (7300, 5440), "WEBP", {"quality": 10, "method": 0}),
    ("gif-35mp", "P", (7000, 5000), "GIF", {}),
]
CHILD = r"""
import re, sys, time
from rotator.images import FitSettings, fit_image_bytes, judge_image_bytes
data = open(sys.argv[1], "rb").read()
def peak_kb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read())[1])
before = peak_kb()
start = time.monotonic()
verdict = judge_image_bytes(data, FitSettings())
result = verdict.reason or "accepted"
if verdict.usable:
    fitted = fit_image_bytes(data, FitSettings())
    result = f"fitted to {fitted.width}x{fitted.height}"
grew = (peak_kb() - before) / 1024
print(f"{grew:.0f}|{time.monotonic() - start:.2f}|{result}")
"""


def draw(mode: str, size: tuple[int, int]) -> Image.Image:
    """Return a flat picture with stripes (compresses well: a small file of many pixels)."""
    colour = {"RGB": (200, 30, 30), "RGBA": (0, 50, 100, 128), "CMYK": (0, 50, 100, 0)}
    image = Image.new(mode, size, colour.get(mode, 3))
    stripe = {"RGB": (0, 0, 0), "RGBA": (0, 0, 0, 0), "CMYK": (0, 0, 0, 0)}.get(mode, 0)
    pen = ImageDraw.Draw(image)
    for x in range(0, size[0], 500):
        pen.line((x, 0, x, size[1]), fill=stripe, width=5)
    return image


def main() -> int:
    """Draw the sources, measure each in a subprocess, print a table; 1 if over target."""
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    over = False
    with tempfile.TemporaryDirectory() as folder:
        print(f"{'source':18} {'file':>8} {'grew':>7} {'time':>6}  verdict")
        for name, mode, size, fmt, options in SOURCES:
            path = Path(folder) / name
            draw(mode, size).save(path, fmt, **options)
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(path)],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
            )
            grew, seconds, result = done.stdout.strip().split("|", 2)
            kb = path.stat().st_size // 1024
            print(f"{name:18} {kb:>6} KB {grew:>4} MB {seconds:>5}s  {result}")
            over |= not result.startswith("needs") and float(grew) >= TARGET_MB
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average: {load}")
    print("FAIL" if over else "PASS")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
