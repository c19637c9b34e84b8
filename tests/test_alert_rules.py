"""The example alert rules in docs/: the metrics they name exist, and promtool accepts them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rotator.metrics import EntryFigures, Metrics, Snapshot

DOCS = Path(__file__).resolve().parent.parent / "docs"
RULES = DOCS / "alerts.yml"


def _exported_samples() -> set[str]:
    """Return every sample name a daemon's registry exports, each gauge and counter filled."""
    metrics = Metrics(credits_per_call=lambda: 10)
    metrics.update(
        Snapshot(
            entries=(
                EntryFigures(
                    account="alice",
                    entry="alice:/srv/a",
                    next_rotation=1.0,
                    last_success=1.0,
                    usable_images=1,
                    rejected_images=0,
                ),
            ),
            pauses_by_scope={"key": 1},
        )
    )
    for event in ("avatar.uploaded", "avatar.failed", "daemon.reloaded", "daemon.reload_failed"):
        metrics.observe({"event": event, "account": "alice"})
    text = generate_latest(metrics.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_rules_name_only_metrics_the_daemon_exports() -> None:
    """Every rotator_* name in an expression is a sample the daemon exports (no typos)."""
    exprs = re.findall(r"expr: (\|\n(?:\s{10}.*\n)+|.*)", RULES.read_text(encoding="utf-8"))
    assert len(exprs) == 8
    used = {name for expr in exprs for name in re.findall(r"\brotator_\w+", expr)}
    assert used == {
        "rotator_pauses_active",
        "rotator_next_rotation_timestamp_seconds",
        "rotator_last_success_timestamp_seconds",
        "rotator_uploads_total",
        "rotator_reloads_total",
        "rotator_images",
    }
    assert used <= _exported_samples()


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/deploy-checks should have installed it")
        pytest.skip("promtool is not installed (Debian package: prometheus)")
    return found


@pytest.mark.parametrize(
    "args", [("check", "rules", "alerts.yml"), ("test", "rules", "alerts.test.yml")]
)
def test_promtool_accepts_and_unit_tests_the_rules(args: tuple[str, ...]) -> None:
    """promtool finds the rules valid, and their unit tests (docs/alerts.test.yml) pass."""
    done = subprocess.run(
        [_promtool(), *args], cwd=DOCS, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
