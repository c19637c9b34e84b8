"""Run every benchmark, one after the other: ``python bench/run_all.py [--quick]``.

Each script prints its own table against its goals; this only runs them in turn with
the same interpreter and says which ones passed. ``--quick`` picks the short forms
(``bench_pacing --window 6s``, ``bench_scale --quick``); without it the full sizes run
(several hours, mostly the 10,000-entry pacing run at 30 writes per 60 s).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    """Run the benches and print a one-line summary of each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short forms of each bench")
    args = parser.parse_args()
    quick = ["--quick"] if args.quick else []
    benches = [
        ["bench_pacing.py", *(["--window", "6s"] if args.quick else [])],
        ["bench_catalog.py"],
        ["bench_fit.py"],
        ["bench_scale.py", *quick],
    ]
    results = []
    for bench in benches:
        print(f"\n== {' '.join(bench)}", flush=True)
        started = time.monotonic()
        code = subprocess.run([sys.executable, str(HERE / bench[0]), *bench[1:]], check=False)
        results.append((bench[0], code.returncode, time.monotonic() - started))
    print()
    for name, code, seconds in results:
        print(f"{name:20} exit {code}  ({seconds:.0f} s)")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
