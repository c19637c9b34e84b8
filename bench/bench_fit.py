"""Time fitting a 12-megapixel photo into an avatar: JPEG, PNG and WebP sources (issue 4).

Each source is a 4000x3000 photo-like picture (smooth gradients plus grain, so it
compresses like a camera photo, several MB), written once to a temp folder (not
timed). Reading the file and ``rotator.images.fit_image_bytes(data, FitSettings())`` run
``--repeat`` times per source (reading, hashing, checking and decoding the file, then
shrinking and encoding it); the median is reported. Target for the JPEG: <= 1 s.

    python bench/bench_fit.py                       # JPEG, PNG and WebP, 5 runs each, ~1 min
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image, ImageFilter  # noqa: E402

from rotator.images import FitSettings, fit_image_bytes, human_bytes  # noqa: E402

TARGET_SECONDS = {"jpeg": 1.0}
SAVE_OPTIONS = {
    "jpeg": ("JPEG", {"quality": 92}),
    "png": ("PNG", {"compress_level": 6}),
    "webp": ("WEBP", {"quality": 90}),
}


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--formats", nargs="+", choices=list(SAVE_OPTIONS), default=list(SAVE_OPTIONS)
    )
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5, help="runs per source (5)")
    return parser.parse_args()


def photo_like(width: int, height: int) -> Image.Image:
    """Return an RGB picture with colour gradients, blotchy detail and sensor grain."""
    red = Image.linear_gradient("L").resize((width, height))
    green = Image.radial_gradient("L").resize((width, height))
    blue = Image.linear_gradient("L").rotate(90).resize((width, height))
    image = Image.merge("RGB", (red, green, blue))
    # Coarse noise blown up gives the mid-scale detail of a scene; fine noise the grain.
    # Together a JPEG at quality 92 comes out at ~4 MB, like a 12 MP camera photo.
    detail = [
        Image.effect_noise((width // 8, height // 8), 80).resize((width, height), Image.BICUBIC)
        for _ in range(3)
    ]
    image = Image.blend(image, Image.merge("RGB", detail), 0.4)
    grain = [
        Image.effect_noise((width, height), 40).filter(ImageFilter.GaussianBlur(0.5))
        for _ in range(3)
    ]
    return Image.blend(image, Image.merge("RGB", grain), 0.3)


def main() -> int:
    """Write the sources, fit each ``--repeat`` times, print the table."""
    args = parse_args()
    picture = photo_like(args.width, args.height)
    settings = FitSettings()
    ok = True
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores: above 2 means shared)")
    print(
        f"{'source':<6} {'pixels':>11} {'source size':>11} {'median s':>8} {'min s':>6} "
        f"{'max s':>6} {'target':>6}  output"
    )
    with tempfile.TemporaryDirectory(prefix="bench-fit-") as tmp:
        for name in args.formats:
            fmt, options = SAVE_OPTIONS[name]
            path = Path(tmp) / f"photo.{name}"
            picture.save(path, fmt, **options)
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                fitted = fit_image_bytes(path.read_bytes(), settings)
                times.append(time.perf_counter() - started)
            median = statistics.median(times)
            target = TARGET_SECONDS.get(name)
            ok = ok and (target is None or median <= target)
            print(
                f"{name:<6} {args.width}x{args.height:<6} {human_bytes(path.stat().st_size):>11} "
                f"{median:>8.3f} {min(times):>6.3f} {max(times):>6.3f} "
                f"{'-' if target is None else f'{target:.1f}':>6}  "
                f"{fitted.format} {fitted.width}x{fitted.height} {human_bytes(len(fitted.data))}"
            )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
