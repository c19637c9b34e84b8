"""Tests for rotator.metrics: a real /metrics endpoint on 127.0.0.1, read by Prometheus's parser."""

from __future__ import annotations

import platform
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import rotator
from rotator.metrics import Metrics, entry_label


@pytest.fixture
def served() -> Iterator[tuple[Metrics, str]]:
    """Serve a fresh Metrics on a free loopback port; yield it with its /metrics URL."""
    metrics = Metrics(credits_per_call=lambda: 10)
    host, port = metrics.serve("127.0.0.1", 0)
    yield metrics, f"http://{host}:{port}/metrics"
    metrics.close()


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Return each sample name's (labels, value) pairs, parsed as Prometheus parses them."""
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - loopback test URL
        text = answer.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_build_info_names_the_version_and_python(served: tuple[Metrics, str]) -> None:
    """rotator_build_info is 1, labelled with the package version and the Python version."""
    _, url = served
    [(labels, value)] = scrape(url)["rotator_build_info"]
    assert value == 1.0
    assert labels == {"version": rotator.__version__, "python": platform.python_version()}


def test_process_metrics_are_exported(served: tuple[Metrics, str]) -> None:
    """Memory, CPU time, open file descriptors and start time of the daemon's own process."""
    _, url = served
    samples = scrape(url)
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ):
        assert name in samples, name
    [(_, rss)] = samples["process_resident_memory_bytes"]
    assert rss > 1_000_000


def test_reloads_are_counted_by_result(served: tuple[Metrics, str]) -> None:
    """daemon.reloaded and daemon.reload_failed events count as success and failure."""
    metrics, url = served
    metrics.observe({"event": "daemon.reloaded", "entries": 2})
    metrics.observe({"event": "daemon.reloaded", "entries": 3})
    metrics.observe({"event": "daemon.reload_failed", "problems": ["x"]})
    counted = {labels["result"]: value for labels, value in scrape(url)["rotator_reloads_total"]}
    assert counted == {"success": 2.0, "failure": 1.0}


def test_entry_labels_carry_no_absolute_host_path() -> None:
    """A folder under the config's directory is named relative to it; others by name and hash."""
    config_dir = Path("/etc/rotator")
    assert entry_label("alice", Path("/etc/rotator/avatars/day"), config_dir) == "alice:avatars/day"
    outside = entry_label("alice", Path("/srv/customer-a/day"), config_dir)
    other = entry_label("alice", Path("/srv/customer-b/day"), config_dir)
    assert outside.startswith("alice:day~")
    assert other.startswith("alice:day~")
    assert outside != other
    assert "/srv" not in outside
