"""Show where the daemon's memory is when it says READY: tracemalloc, grouped by line.

Runs ``rotator run`` in this process with tracemalloc on; at READY=1 it prints the
largest allocating lines (the traced total first) and exits.

    XQUIK_API_KEY=... python bench/profile_ready.py --config rotator.toml [--top 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    """Run the daemon until READY, then print the top allocating lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--group", default="lineno", choices=["lineno", "filename"])
    args = parser.parse_args()
    tracemalloc.start()

    from rotator import cli, systemd  # noqa: PLC0415 (imported traced: their code counts)

    def report(*_args: object, **_kwargs: object) -> bool:
        stats = tracemalloc.take_snapshot().statistics(args.group)
        total = sum(stat.size for stat in stats)
        peak = tracemalloc.get_traced_memory()[1]
        print(f"traced at READY: {total / 2**20:.1f} MiB (peak {peak / 2**20:.1f} MiB)")
        for stat in stats[: args.top]:
            where = stat.traceback[0]
            name = (
                os.path.relpath(where.filename, REPO)
                if str(REPO) in where.filename
                else (where.filename.rsplit("site-packages/", 1)[-1])
            )
            print(f"{stat.size / 2**20:7.2f} MiB {stat.count:8d}  {name}:{where.lineno}")
        os._exit(0)

    systemd.SystemdNotifier.ready = report  # type: ignore[method-assign]
    return cli.main(["run", "--config", args.config])


if __name__ == "__main__":
    raise SystemExit(main())
