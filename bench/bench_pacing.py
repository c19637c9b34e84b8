"""Measure how closely the daemon's pacer fills a fixed-window write limit (issue 3).

N entries come due at once under ``writes`` per ``window``. The real daemon
(``python -m rotator run``) talks to the fake Xquik server over 127.0.0.1; the fake
enforces the limit as a fixed window that starts at the first arrival and answers
429 ``rate_limit_exceeded`` past it. Reported: time from the first write's arrival to
the last one's, divided by the ideal ``(ceil(N / writes) - 1) * window``, and the
number of 429s. Target: ratio <= 1.10 and zero 429s.

    python bench/bench_pacing.py --window 6s        # quick: 100 entries, 30/6s, ~20 s
    python bench/bench_pacing.py                    # default: 100 entries, 30/60s, ~3 min
    python bench/bench_pacing.py --window 6s --latency 300ms   # a slow server's answers
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "e2e")]

from fake_xquik import FakeXquik, RecordedRequest, Reply  # noqa: E402
from harness import DaemonProcess, cli_env, make_image, write_config  # noqa: E402

from rotator.durations import parse_duration  # noqa: E402

TARGET_RATIO = 1.10
IMAGES_PER_FOLDER = 2


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100, help="entries due at once (100)")
    parser.add_argument("--writes", type=int, default=30, help="writes per window (30)")
    parser.add_argument(
        "--window", type=parse_duration, default=60.0, help="window, e.g. 6s or 60s (60s)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="writes in flight at once (4, the default)"
    )
    parser.add_argument(
        "--latency",
        type=parse_duration,
        default=0.0,
        help="time the fake takes to answer each write, e.g. 300ms (0: loopback speed)",
    )
    parser.add_argument(
        "--timeout",
        type=parse_duration,
        default=None,
        help="give up after this long (default: 2 x ideal + 180s)",
    )
    return parser.parse_args()


def prepare(root: Path, accounts: list[str], base_url: str, args: argparse.Namespace) -> Path:
    """Write one folder of small images per account and a config due at once for all."""
    entries = []
    for number, account in enumerate(accounts):
        for image in range(IMAGES_PER_FOLDER):
            make_image(root / account / f"{image}.png", seed=number * IMAGES_PER_FOLDER + image)
        entries.append({"account": account, "folder": account, "schedule": "every 1h"})
    return write_config(
        root / "rotator.toml",
        base_url=base_url,
        entries=entries,
        sections={
            "rate_limit": {
                "writes": args.writes,
                "window": f"{args.window}s",
                "concurrency": args.concurrency,
            },
            # The daemon's own defaults: a 429 costs what it would cost in production.
            "retry": {"initial": "5s", "max": "300s", "attempts": 4},
        },
    )


def main() -> int:
    """Run the daemon once against the rate-limited fake and print the table."""
    args = parse_args()
    windows = math.ceil(args.entries / args.writes) - 1
    ideal = windows * args.window
    timeout = args.timeout if args.timeout is not None else 2 * ideal + 180
    accounts = [f"acct{n:03d}" for n in range(args.entries)]
    with (
        tempfile.TemporaryDirectory(prefix="bench-pacing-") as tmp,
        FakeXquik(accounts=accounts, rate_limit=(args.writes, args.window)) as server,
    ):
        config = prepare(Path(tmp), accounts, server.base_url, args)
        if args.latency:
            # One delayed default answer per write; a 429 does not use one up.
            server.script(*[Reply(delay=args.latency)] * args.entries)
        daemon = DaemonProcess(config, cli_env(server.api_key))
        started = time.monotonic()

        def all_rotated(requests: list[RecordedRequest]) -> bool:
            return len({r.account for r in requests if r.status == 200}) >= args.entries

        try:
            server.wait_for(all_rotated, timeout, f"{args.entries} successful writes")
        finally:
            code = daemon.stop()
        wall = time.monotonic() - started
        writes = server.writes()
    arrivals = sorted(w.arrived_monotonic for w in writes)
    succeeded = sorted(w.arrived_monotonic for w in writes if w.status == 200)
    rejected = [w for w in writes if w.status == 429]
    spread = arrivals[-1] - arrivals[0]
    ratio = spread / ideal if ideal else float("nan")
    # Arrival of the first write of each server window, from the first arrival.
    starts = [succeeded[i] - arrivals[0] for i in range(0, len(succeeded), args.writes)]

    rows = [
        ("load average (2 cores)", f"{os.getloadavg()[0]:.2f}"),
        ("entries / writes / window", f"{args.entries} / {args.writes} / {args.window:g}s"),
        ("concurrency / answer latency", f"{args.concurrency} / {args.latency:g}s"),
        ("writes sent (200 / 429)", f"{len(writes)} ({len(succeeded)} / {len(rejected)})"),
        ("ideal (windows x window)", f"{windows} x {args.window:g}s = {ideal:.2f}s"),
        ("first -> last arrival", f"{spread:.3f}s"),
        ("window starts", " ".join(f"{s:.3f}" for s in starts)),
        ("ratio (target <= 1.10)", f"{ratio:.4f}"),
        ("429s (target 0)", str(len(rejected))),
        ("daemon start -> done", f"{wall:.1f}s (exit code {code})"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    ok = ratio <= TARGET_RATIO and not rejected and code == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
