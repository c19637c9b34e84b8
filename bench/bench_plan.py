"""Measure ``rotator plan`` for many cron entries across DST zones (issue 10).

Writes a config of ``--entries`` entries (100) sharing one folder of two small PNGs,
cycling through cron expressions that are slow for an enumerating planner (yearly,
leap-day, every minute, both day fields) and zones with DST (New York, London,
Lord Howe, Chatham), then runs the real CLI ``rotator plan --from ... --count N
--json`` in a subprocess ``--repeat`` times. Also times the schedule part alone
(instants and calls per day for every entry, in process). Target: the whole command
under 1 s for 100 entries, and no entry without instants.

    python bench/bench_plan.py
    python bench/bench_plan.py --entries 1000 --count 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "e2e")]

from harness import cli_env, make_image, write_config  # noqa: E402

from rotator.cron import calls_per_day, fire_times, parse_cron  # noqa: E402

TARGET_SECONDS = 1.0
EXPRESSIONS = (
    "59 23 31 12 *",
    "0 0 29 2 *",
    "* * * * *",
    "*/15 * * * *",
    "30 2 * * *",
    "0 9 1 * mon",
    "0 0 */2 * 1",
    "@hourly",
    "5 4 * * sun",
    "0 0 1 1 *",
)
ZONES = ("America/New_York", "Europe/London", "Australia/Lord_Howe", "Pacific/Chatham")
FROM = "2026-10-31T12:00:00Z"


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100, help="cron entries (100)")
    parser.add_argument("--count", type=int, default=5, help="instants per entry (5)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of the command (5)")
    return parser.parse_args()


def main() -> int:
    """Run the benchmark; return 0 on PASS, 1 on FAIL."""
    args = parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_image(root / "pics" / "a.png", seed=1)
        make_image(root / "pics" / "b.png", seed=2)
        entries = [
            {
                "account": f"user{n}",
                "folder": "pics",
                "schedule": EXPRESSIONS[n % len(EXPRESSIONS)],
                "timezone": ZONES[n % len(ZONES)],
            }
            for n in range(args.entries)
        ]
        config = write_config(root / "rotator.toml", base_url="http://127.0.0.1:9", entries=entries)

        start = dt.datetime.fromisoformat(FROM)
        began = time.perf_counter()
        for entry in entries:
            expression = parse_cron(str(entry["schedule"]))
            zone = ZoneInfo(str(entry["timezone"]))
            fire_times(expression, zone, start, args.count)
            calls_per_day(expression, start.date())
        in_process = time.perf_counter() - began

        command = [sys.executable, "-m", "rotator", "plan", "--config", str(config)]
        command += ["--from", FROM, "--count", str(args.count), "--json"]
        durations = []
        report: dict[str, object] = {}
        for _ in range(args.repeat):
            began = time.perf_counter()
            result = subprocess.run(
                command, capture_output=True, text=True, env=cli_env(None), check=False
            )
            durations.append(time.perf_counter() - began)
            if result.returncode != 0:
                print(result.stderr)
                return 1
            report = json.loads(result.stdout)
    planned = report.get("entries", [])
    assert isinstance(planned, list)
    empty = [item["account"] for item in planned if len(item["instants"]) != args.count]
    median = statistics.median(durations)
    print(f"entries: {args.entries}, instants each: {args.count}")
    print(f"schedules alone (in process): {in_process * 1000:.1f} ms")
    print(f"rotator plan --json: median {median:.3f} s, max {max(durations):.3f} s")
    print(f"entries short of instants: {len(empty)}")
    ok = median < TARGET_SECONDS and not empty
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
