"""Measure what many entries cost while the daemon waits, and what one write costs (issue 11).

Every figure is printed beside its goal and its anchor, measured in the same run:

- **floor**: a bare interpreter that imports exactly the runtime dependencies and idles;
  RSS goal: the daemon's RSS <= 1.5 x the floor's.
- **curl**: one ``curl -X PATCH ... -F file=@...`` process per write against the same
  fake server; goal: the daemon's marginal CPU per write <= 0.5 x one curl process.

Rows (each the median of ``--runs`` with min and max):

- ``daemon``: 1,000 entries x 10 images and 10,000 x 1, cron far in the future,
  ``metrics.listen`` off and on: time to READY=1 (cold: empty state; warm: a restart),
  idle CPU per minute, RSS and threads after the idle window.
- ``write``: ``rotator rotate`` over 200, 600 and 2,000 entries (warm validation cache):
  CPU of the process; marginal CPU per write between sizes, against curl.
- ``pacing``: N entries due together at 30 writes per window (``--pacing-window``; 60 s is
  the real limit, shorter windows run the same path scaled down in time): RSS sampled
  through the run (flat after the first 1,000 writes), every account written exactly
  once, arrivals in due order.
- ``soak``: N rotations of a few entries on ``every 1s``: RSS and open descriptors of
  the first and the last tenth.

    python bench/bench_scale.py                   # everything, full sizes (long)
    python bench/bench_scale.py --quick           # scaled down: a few minutes
    python bench/bench_scale.py --only daemon write
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import itertools
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "e2e")]

from fake_xquik import FakeXquik  # noqa: E402
from harness import cli_env, make_image, write_config  # noqa: E402

RUNTIME_IMPORTS = (
    "import apscheduler.schedulers.asyncio, httpx, pydantic, pydantic_settings, structlog, "
    "watchdog.observers, PIL.Image, prometheus_client, time\n"
    "print('ready', flush=True)\n"
    "time.sleep(10**6)\n"
)
FAR_CRON = "0 0 1 1 *"
TICKS = os.sysconf("SC_CLK_TCK")
Row = dict[str, Any]


# -- process figures -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status(pid: int) -> dict[str, str]:
    """Return /proc/PID/status as a dict."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def rss_mib(pid: int) -> float:
    """Return the resident set size in MiB."""
    return int(status(pid)["VmRSS"].split()[0]) / 1024


def open_fds(pid: int) -> int:
    """Return how many descriptors the process holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def children_cpu() -> float:
    """Return user + system CPU of the finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def spread(values: Sequence[float], digits: int = 2) -> str:
    """Return ``median (min-max)``."""
    if not values:
        return "-"
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def notify_socket(folder: Path) -> Iterator[tuple[socket.socket, str]]:
    """Bind a datagram socket standing in for systemd's NOTIFY_SOCKET."""
    path = folder / "notify.sock"
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock, str(path)
    finally:
        sock.close()


def wait_ready(sock: socket.socket, process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for READY=1; False if it did not come in time."""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.5)
    while time.monotonic() < deadline and process.poll() is None:
        try:
            message = sock.recv(1 << 20).decode()
        except TimeoutError:
            continue
        if "READY=1" in message.splitlines():
            return True
    return False


# -- anchors -----------------------------------------------------------------------------------


def measure_floor(idle: float) -> Row:
    """Start the floor interpreter, idle, and return its RSS and idle CPU."""
    process = subprocess.Popen(
        [sys.executable, "-c", RUNTIME_IMPORTS], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        before = cpu_seconds(process.pid)
        time.sleep(idle)
        cpu = cpu_seconds(process.pid) - before
        return {"rss_mib": rss_mib(process.pid), "idle_ms_per_min": cpu * 1000 * 60 / idle}
    finally:
        process.kill()
        process.wait()


def measure_curl(server: FakeXquik, image: Path, writes: int) -> float:
    """Return the CPU seconds of one ``curl -X PATCH -F file=@`` process per write (median)."""
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit("curl is needed for the anchor: install it (apt-get install curl)")
    costs = []
    for number in range(writes):
        before = children_cpu()
        subprocess.run(
            [
                curl,
                "-s",
                "-o",
                os.devnull,
                "-X",
                "PATCH",
                "-H",
                f"x-api-key: {server.api_key}",
                "-H",
                f"Idempotency-Key: bench-curl-{number}-{time.time_ns()}",
                "-F",
                "account=acct00000",
                "-F",
                f"file=@{image};type=image/png",
                f"{server.base_url}/api/v1/x/profile/avatar",
            ],
            check=True,
        )
        costs.append(children_cpu() - before)
    return statistics.median(costs)


# -- the daemon while it waits -----------------------------------------------------------------


def make_folders(root: Path, entries: int, images: int, base_url: str, **sections: Any) -> Path:
    """Write ``entries`` folders of ``images`` small PNGs and a config (cron far away)."""
    if not (root / "done").exists():
        for number in range(entries):
            for image in range(images):
                make_image(
                    root / "folders" / f"e{number:05}" / f"{image}.png",
                    seed=number * images + image,
                )
        (root / "done").touch()
    rows = [
        {"account": f"acct{number:05}", "folder": f"folders/e{number:05}", "schedule": FAR_CRON}
        for number in range(entries)
    ]
    return write_config(root / "rotator.toml", base_url=base_url, entries=rows, sections=sections)


def run_daemon_once(config: Path, env: dict[str, str], idle: float, timeout: float) -> Row:
    """Start the daemon, time READY=1, idle, and return its figures."""
    with notify_socket(config.parent) as (sock, path):
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "rotator", "run", "--config", str(config)],
            env={**env, "NOTIFY_SOCKET": path},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not wait_ready(sock, process, timeout):
                return {"ready_s": None}
            ready = time.monotonic() - started
            # CPU to READY too: on a shared machine it moves less than the wall time does.
            ready_cpu = cpu_seconds(process.pid)
            time.sleep(2)  # the first heartbeat and metrics refresh are start-up work
            before = cpu_seconds(process.pid)
            time.sleep(idle)
            cpu = cpu_seconds(process.pid) - before
            return {
                "ready_s": ready,
                "ready_cpu_s": ready_cpu,
                "idle_ms_per_min": cpu * 1000 * 60 / idle,
                "rss_mib": rss_mib(process.pid),
                "threads": int(status(process.pid)["Threads"]),
            }
        finally:
            process.terminate()
            process.wait(60)


def bench_daemon(args: argparse.Namespace, work: Path, server: FakeXquik) -> list[Row]:
    """Measure ready, idle CPU, RSS and threads for each size, metrics off and on."""
    rows = []
    env = cli_env(server.api_key)
    for entries, images in args.sizes:
        for metrics in (False, True):
            root = work / f"daemon-{entries}x{images}"
            sections: dict[str, Any] = {"watch": {"rescan": "10m"}}
            if metrics:
                sections["metrics"] = {"listen": f"127.0.0.1:{free_port()}"}
            config = make_folders(root, entries, images, server.base_url, **sections)
            shutil.rmtree(root / "state", ignore_errors=True)
            cold = run_daemon_once(config, env, args.idle, args.ready_timeout)
            runs = [
                run_daemon_once(config, env, args.idle, args.ready_timeout)
                for _ in range(args.runs)
            ]
            rows.append(
                {
                    "size": f"{entries} x {images}",
                    "metrics": metrics,
                    "cold_ready_s": cold.get("ready_s"),
                    "warm": runs,
                    "load": os.getloadavg()[0],
                }
            )
            print_daemon_row(rows[-1], args.floor)
    return rows


def print_daemon_row(row: Row, floor: Row) -> None:
    """Print one daemon row against its goals."""
    warm = [run for run in row["warm"] if run.get("ready_s") is not None]
    ready = [run["ready_s"] for run in warm]
    idle = [run["idle_ms_per_min"] for run in warm]
    rss = [run["rss_mib"] for run in warm]
    ratio = [value / floor["rss_mib"] for value in rss]
    threads = [run["threads"] for run in warm]
    ready_cpu = [run["ready_cpu_s"] for run in warm]
    cold = row["cold_ready_s"]
    print(
        f"| {row['size']} | metrics {'on' if row['metrics'] else 'off'} "
        f"| ready warm {spread(ready)} s (<= 2), CPU {spread(ready_cpu)} s | cold "
        f"{'none in time' if cold is None else f'{cold:.2f} s'} (<= 15) "
        f"| idle {spread(idle, 0)} ms/min (<= 60) | RSS {spread(rss, 1)} MiB = "
        f"{spread(ratio)} x floor (<= 1.5) | threads {spread(threads, 0)} (<= 16) "
        f"| load {row['load']:.1f} |",
        flush=True,
    )


# -- the cost of a write -----------------------------------------------------------------------


def bench_write(args: argparse.Namespace, work: Path, server: FakeXquik) -> Row:
    """Measure ``rotator rotate`` CPU over several entry counts and one curl per write."""
    env = cli_env(server.api_key)
    sizes = args.write_sizes
    results: dict[int, list[float]] = {size: [] for size in sizes}
    for size in sizes:
        root = work / f"write-{size}"
        config = make_folders(
            root,
            size,
            2,
            server.base_url,
            rate_limit={"writes": 100000, "window": "1s", "concurrency": 4},
        )
        for run in range(args.runs + 1):  # the first run fills the validation cache
            before = children_cpu()
            subprocess.run(
                [sys.executable, "-m", "rotator", "rotate", "--config", str(config)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )
            if run:
                results[size].append(children_cpu() - before)
    image = work / f"write-{sizes[0]}" / "folders" / "e00000" / "0.png"
    curl = [measure_curl(server, image, 20) for _ in range(args.runs)]
    row: Row = {"cpu_s": results, "curl_s": curl, "load": os.getloadavg()[0]}
    medians = {size: statistics.median(values) for size, values in results.items()}
    curl_median = statistics.median(curl)
    marginals = []
    for low, high in itertools.pairwise(sizes):
        per_write = (medians[high] - medians[low]) / (high - low)
        marginals.append((low, high, per_write))
        print(
            f"| write {low} -> {high} entries | marginal CPU {per_write * 1000:.2f} ms per write "
            f"| curl {curl_median * 1000:.2f} ms | ratio {per_write / curl_median:.2f} (<= 0.5) "
            f"| load {row['load']:.1f} |",
            flush=True,
        )
    row["marginal_s"] = marginals
    return row


# -- pacing a large batch, and a soak ----------------------------------------------------------


def sample_while(
    process: subprocess.Popen[bytes], done: Callable[[], int], target: int, timeout: float
) -> list[tuple[int, float, int]]:
    """Sample (writes done, RSS MiB, open fds) until ``done()`` reaches ``target``."""
    samples = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        count = done()
        samples.append((count, rss_mib(process.pid), open_fds(process.pid)))
        if count >= target:
            break
        time.sleep(1)
    return samples


def bench_pacing(args: argparse.Namespace, work: Path) -> Row:
    """N entries due together under 30 writes per window: RSS flat, none lost or doubled."""
    entries = args.pacing_entries
    accounts = [f"acct{number:05}" for number in range(entries)]
    window = args.pacing_window
    with FakeXquik(accounts=accounts, rate_limit=(30, window)) as server:
        root = work / f"pacing-{entries}"
        if not (root / "done").exists():
            for number in range(entries):
                make_image(root / "folders" / f"e{number:05}" / "0.png", seed=number)
            (root / "done").touch()
        rows = [
            {"account": account, "folder": f"folders/e{n:05}", "schedule": "every 24h"}
            for n, account in enumerate(accounts)
        ]
        config = write_config(
            root / "rotator.toml",
            base_url=server.base_url,
            entries=rows,
            sections={"rate_limit": {"writes": 30, "window": f"{window}s", "concurrency": 4}},
        )
        shutil.rmtree(root / "state", ignore_errors=True)
        stagger_due_times(config, root / "state", span=3600 * window / 60)
        process = subprocess.Popen(
            [sys.executable, "-m", "rotator", "run", "--config", str(config)],
            env=cli_env(server.api_key),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            expected = (entries / 30) * window * 1.5 + 120
            samples = sample_while(
                process,
                lambda: len([w for w in server.writes() if w.status == 200]),
                entries,
                expected,
            )
        finally:
            process.terminate()
            process.wait(60)
        writes = server.writes()
    return report_pacing(accounts, writes, samples, window)


def stagger_due_times(config: Path, state_dir: Path, span: float) -> None:
    """Make entry i due ``i * span / N`` seconds from now (its last success a day before).

    All N come due within ``span`` (one hour, scaled with the window), in config order.
    """
    from rotator.config import load_settings  # noqa: PLC0415 - only this bench needs it
    from rotator.state import HistoryRow, StateStore  # noqa: PLC0415

    settings = load_settings(config, {})
    start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)  # the daemon's start-up
    step = span / len(settings.accounts)
    with StateStore.open(state_dir) as state:
        for number, entry in enumerate(settings.accounts):
            state.record_success(
                HistoryRow(
                    time=start + dt.timedelta(seconds=number * step) - dt.timedelta(hours=24),
                    entry_id=entry.entry_id,
                    account=entry.account,
                    image="0.png",
                    sha256="0" * 64,
                    source_sha256="0" * 64,
                    request_id=None,
                    status=200,
                    duration_ms=0,
                    outcome="success",
                ),
                shown_in_cycle=frozenset(),
            )


def report_pacing(
    accounts: list[str], writes: list[Any], samples: list[tuple[int, float, int]], window: float
) -> Row:
    """Print and return the pacing figures."""
    ok = [w.account for w in writes if w.status == 200]
    position = {account: index for index, account in enumerate(accounts)}
    # Up to 4 writes are in flight at once: an arrival may overtake at most 3 others.
    out_of_order = sum(
        1
        for index, account in enumerate(ok)
        if any(position[other] > position[account] + 3 for other in ok[:index][-8:])
    )
    after = [rss for count, rss, _ in samples if count >= min(1000, len(accounts) // 10)]
    row: Row = {
        "entries": len(accounts),
        "window_s": window,
        "written": len(set(ok)),
        "doubled": len(ok) - len(set(ok)),
        "rejected_429": len([w for w in writes if w.status == 429]),
        "out_of_order": out_of_order,
        "rss_after_first_1000": [min(after, default=0), max(after, default=0)],
        "samples": samples[:: max(1, len(samples) // 50)],
        "load": os.getloadavg()[0],
    }
    print(
        f"| pacing {len(accounts)} entries, 30 / {window:g} s | written {row['written']} "
        f"doubled {row['doubled']} 429s {row['rejected_429']} out of order {out_of_order} "
        f"| RSS after the first 1,000 (or tenth) {min(after, default=0):.1f}-"
        f"{max(after, default=0):.1f} MiB (flat: +-5) | load {row['load']:.1f} |",
        flush=True,
    )
    return row


def bench_soak(args: argparse.Namespace, work: Path) -> Row:
    """Run N rotations of a few entries; compare RSS and fds of the first and last tenth."""
    entries = 20
    accounts = [f"acct{number:05}" for number in range(entries)]
    with FakeXquik(accounts=accounts) as server:
        root = work / "soak"
        for number in range(entries):
            for image in range(3):
                make_image(root / "folders" / f"e{number:05}" / f"{image}.png", seed=image)
        rows = [
            {"account": account, "folder": f"folders/e{n:05}", "schedule": "every 1s"}
            for n, account in enumerate(accounts)
        ]
        config = write_config(
            root / "rotator.toml",
            base_url=server.base_url,
            entries=rows,
            sections={"rate_limit": {"writes": 100000, "window": "1s", "concurrency": 4}},
        )
        shutil.rmtree(root / "state", ignore_errors=True)
        process = subprocess.Popen(
            [sys.executable, "-m", "rotator", "run", "--config", str(config)],
            env=cli_env(server.api_key),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            samples = sample_while(
                process, lambda: len(server.writes()), args.soak_rotations, args.soak_rotations
            )
        finally:
            process.terminate()
            process.wait(60)
    tenth = max(1, args.soak_rotations // 10)
    first = [s for s in samples if s[0] <= tenth]
    last = [s for s in samples if s[0] >= args.soak_rotations - tenth]
    row: Row = {
        "rotations": samples[-1][0] if samples else 0,
        "rss_first": statistics.median([s[1] for s in first]) if first else None,
        "rss_last": statistics.median([s[1] for s in last]) if last else None,
        "fds_first": [s[2] for s in first],
        "fds_last": [s[2] for s in last],
        "load": os.getloadavg()[0],
    }
    growth = row["rss_last"] - row["rss_first"] if row["rss_first"] and row["rss_last"] else None
    print(
        f"| soak {row['rotations']} rotations | RSS first tenth {row['rss_first']} MiB, last "
        f"{row['rss_last']} MiB, growth {growth if growth is None else round(growth, 1)} MiB "
        f"(<= 5) | fds {sorted(set(row['fds_first']))} -> {sorted(set(row['fds_last']))} "
        f"| load {row['load']:.1f} |",
        flush=True,
    )
    return row


# -- main ------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="scaled down: a few minutes")
    parser.add_argument(
        "--only", nargs="*", default=["daemon", "write", "pacing", "soak"], help="which benches"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (5)")
    parser.add_argument("--idle", type=float, default=60.0, help="idle window, seconds (60)")
    parser.add_argument("--work", type=Path, default=None, help="keep generated folders here")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--sizes", nargs="*", default=["1000x10", "10000x1"], help="daemon sizes")
    parser.add_argument(
        "--write-sizes", nargs="*", type=int, default=[200, 600, 2000], help="rotate sizes"
    )
    parser.add_argument(
        "--pacing-entries", type=int, default=None, help="pacing row entries (10,000)"
    )
    parser.add_argument(
        "--pacing-window",
        type=float,
        default=None,
        help="pacing row window, seconds (60; a shorter one scales the run down in time)",
    )
    args = parser.parse_args()
    args.sizes = [tuple(int(part) for part in size.split("x")) for size in args.sizes]
    args.ready_timeout = 120.0
    entries, window = 10000, 60.0
    args.soak_rotations = 10000
    if args.quick:
        args.idle = min(args.idle, 20.0)
        entries, window = 2000, 1.0
        args.soak_rotations = 2000
    args.pacing_entries = args.pacing_entries or entries
    args.pacing_window = args.pacing_window or window
    return args


def main() -> int:
    """Run the chosen benches and print their rows."""
    args = parse_args()
    work = args.work or Path(tempfile.gettempdir()) / "rotator-bench-scale"
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"Python {platform.python_version()}; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    # The daemon as installed: pip compiles the package, as it compiled the dependencies
    # the floor imports. (From a source tree under PYTHONDONTWRITEBYTECODE=1, every start
    # would compile every module again: slower, and its memory peak stays in the RSS.)
    compileall.compile_dir(REPO / "rotator", quiet=1)
    args.floor = measure_floor(min(args.idle, 20.0))
    print(
        f"| floor (runtime deps imported, idle) | RSS {args.floor['rss_mib']:.1f} MiB "
        f"| idle {args.floor['idle_ms_per_min']:.0f} ms/min |",
        flush=True,
    )
    report: dict[str, Any] = {"floor": args.floor, "quick": args.quick}
    with FakeXquik(accounts=[f"acct{number:05}" for number in range(10000)]) as server:
        if "daemon" in args.only:
            report["daemon"] = bench_daemon(args, work, server)
        if "write" in args.only:
            report["write"] = bench_write(args, work, server)
    if "pacing" in args.only:
        report["pacing"] = bench_pacing(args, work)
    if "soak" in args.only:
        report["soak"] = bench_soak(args, work)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
