"""30 x kill -9 at random moments, mid-poll of a 202 included: nothing lost, nothing doubled."""

from __future__ import annotations

import hashlib
import itertools
import random
import signal
import time
from pathlib import Path

from fake_xquik import FakeXquik, RecordedRequest, Reply
from harness import DaemonProcess, cli_env, make_image, write_config

from rotator.state import StateStore

ROUNDS = 30
IMAGES = ("1.png", "2.png", "3.png")


def _count(requests: list[RecordedRequest], kind: str) -> int:
    return sum(1 for r in requests if (r.is_poll if kind == "poll" else r.is_write))


def test_kill_9_loop_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """Applied avatars follow the folder's order with no repeat and no gap; state agrees."""
    rng = random.Random(9)
    with FakeXquik(accounts=["alice"], durable=True) as server:
        shas = {
            hashlib.sha256(make_image(tmp_path / "img" / name, seed=n)).hexdigest(): name
            for n, name in enumerate(IMAGES)
        }
        # Every write is a 202 that needs one poll a second later: a wide mid-poll window.
        server.script(*[Reply(durable_pending=True, polls_until_terminal=1)] * 400)
        config = write_config(
            tmp_path / "rotator.toml",
            base_url=server.base_url,
            entries=[{"account": "alice", "folder": "img", "schedule": "every 1s"}],
        )
        env = cli_env(server.api_key)
        moments = []
        for round_number in range(ROUNDS):
            kind = ("poll", "write", "random")[round_number % 3]
            before = _count(server.requests(), kind)
            daemon = DaemonProcess(config, env)
            if kind == "random":
                time.sleep(rng.uniform(0.3, 1.5))
            else:
                server.wait_for(
                    lambda requests, k=kind, b=before: _count(requests, k) > b,
                    timeout=20,
                    what=f"a {kind} in round {round_number}",
                )
                time.sleep(rng.uniform(0, 0.05))
            daemon.kill()
            assert server.api_key not in daemon.output()
            moments.append(kind)
        final = DaemonProcess(config, env)
        final.wait_for("avatar.uploaded", timeout=30)
        final.signal(signal.SIGTERM)
        assert final.stop() == 0
        applied = [shas[r.file.sha256] for r in server.applied_writes("alice") if r.file]
        current = shas.get(server.current_avatar("alice") or "")
        polls = len(server.polls())
    assert moments.count("poll") == ROUNDS // 3
    assert polls >= ROUNDS // 3
    assert len(applied) > len(IMAGES), applied  # at least one full cycle and a step
    for previous, following in itertools.pairwise(applied):
        expected = IMAGES[(IMAGES.index(previous) + 1) % len(IMAGES)]
        assert following == expected, f"after {previous} came {following}: {applied}"
    with StateStore.open(tmp_path / "state", readonly=True) as state:
        (entry,) = state.entries()
    assert entry.last_image == current == applied[-1]
