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
    metrics = Metrics(credits_per_call=7)
    for event in events:
        metrics.observe(event)
    assert _credits(metrics) == expected
