"""Credits in the metrics come from what each write's record says it cost."""

from __future__ import annotations

import pytest

from rotator.metrics import Metrics


def _credits(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("rotator_credits_spent_total")
    return 0.0 if value is None else value


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param([{"event": "avatar.uploaded", "credits": 10}], 10.0, id="charged-10"),
        pytest.param([{"event": "avatar.uploaded", "credits": 0}], 0.0, id="charged-false"),
        pytest.param([{"event": "avatar.uploaded"}], 7.0, id="no-billing-per-call"),
        pytest.param([{"event": "avatar.uncertain", "credits": 10}], 10.0, id="uncertain-charged"),
        pytest.param([{"event": "avatar.uncertain", "credits": 0}], 0.0, id="uncertain-free"),
        pytest.param([{"event": "avatar.failed", "error": "x"}], 0.0, id="failed-free"),
    ],
)
def test_credits_spent_follow_the_billing_of_each_write(
    events: list[dict[str, object]], expected: float
) -> None:
    """billing.chargedCredits when the event carries it, else credits_per_call per upload."""
    metrics = Metrics(credits_per_call=lambda: 7)
    for event in events:
        metrics.observe(event)
    assert _credits(metrics) == expected


def test_an_upload_without_billing_counts_the_credits_per_call_in_force() -> None:
    """credits_per_call is read at each upload: a value changed by a reload counts from then."""
    in_force = [10]
    metrics = Metrics(credits_per_call=lambda: in_force[-1])
    metrics.observe({"event": "avatar.uploaded"})
    in_force.append(3)
    metrics.observe({"event": "avatar.uploaded"})
    assert _credits(metrics) == 13.0
