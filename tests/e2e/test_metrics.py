"""Prometheus metrics and /healthz served by the running daemon."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import DaemonFactory
from fake_xquik import FakeXquik
from harness import make_image, write_config


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - loopback test URL
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_count_uploads_credits_images_and_pauses(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """/metrics counts uploads, and credits as the write's record charged them (not the
    configured credits_per_call); gauges show images and pauses."""
    fake_xquik.credits_per_call = 12  # what the server charges: billing.chargedCredits
    make_image(tmp_path / "a" / "1.png", seed=1)
    make_image(tmp_path / "a" / "2.png", seed=2)
    (tmp_path / "a" / "notes.png").write_text("not an image")
    port = _free_port()
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "a", "schedule": "every 1h"}],
        sections={"metrics": {"listen": f"127.0.0.1:{port}"}, "api": {"credits_per_call": 7}},
    )
    daemon = start_daemon(config)
    daemon.wait_for("metrics.listening")
    daemon.wait_for("avatar.uploaded")
    # The gauges are refreshed right after the rotation ends (its next time scheduled).
    deadline = time.monotonic() + 10
    status, text = _get(f"http://127.0.0.1:{port}/metrics")
    while "rotator_next_rotation_timestamp_seconds{" not in text and time.monotonic() < deadline:
        time.sleep(0.05)
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert 'rotator_uploads_total{account="alice",outcome="success"} 1.0' in text
    assert "rotator_credits_spent_total 12.0" in text
    assert 'state="usable"} 2.0' in text
    assert 'state="rejected"} 1.0' in text
    assert 'rotator_pauses_active{scope="key"} 0.0' in text
    assert "rotator_next_rotation_timestamp_seconds{" in text
    assert fake_xquik.api_key not in text
    assert 'entry="alice:a"' in text  # the folder relative to the config, no host path
    assert str(tmp_path) not in text
    assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    assert _get(f"http://127.0.0.1:{port}/nope")[0] == 404
    assert daemon.stop() == 0
    with pytest.raises(urllib.error.URLError):
        _get(f"http://127.0.0.1:{port}/healthz")
