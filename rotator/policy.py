"""The fault policy: a pure ``Outcome -> Decision`` table.

Each answer the API can give is handled at one scope: the attempt (retry the same
image), the image (skip it), the account (pause it), the whole key (pause every
write) or the rotation (give it up). ``decide`` is a pure function of the outcome,
the settings, the pause level so far and a random source, so every row of the
table is tested on its own (tests/test_policy.py).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Literal

from rotator.outcomes import UNCERTAIN_CODES, Outcome

Action = Literal[
    "done",  # the avatar changed (or X says it already had): move the position on
    "retry",  # same image, same rotation, after ``delay`` (a new Idempotency-Key)
    "replay",  # same image and the SAME Idempotency-Key (the write may have happened)
    "new_key",  # same image now, with a new Idempotency-Key
    "next_image",  # this image is refused: remember it, try the next one in this rotation
    "as_file",  # the URL could not be fetched: send the same image as a file now
    "pause",  # pause ``scope`` for ``delay``; the waiting rotation goes on afterwards
    "uncertain",  # the write may or may not have happened: never resend blindly
    "give_up",  # end this rotation, position unchanged
]
Scope = Literal["attempt", "image", "account", "key", "rotation"]
PauseKind = Literal["rate_limit", "x_rate_limited", "daily", "account", "credits", "auth", "manual"]

DAY = 86400.0

RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded"})
TRANSIENT_CODES = frozenset(
    {"x_transient_error", "x_write_failed", "internal_error", "write_tracking_unavailable"}
)
IMAGE_CODES = frozenset({"invalid_input", "x_content_too_long", "x_rejected"})
ACCOUNT_CODES = frozenset(
    {
        "account_needs_reauth",
        "account_restricted",
        "account_not_found",
        "x_account_suspended",
        "x_account_protected",
        "x_account_feature_required",
        "x_target_not_found",
    }
)
BILLING_CODES = frozenset(
    {
        "insufficient_credits",
        "no_subscription",
        "no_credits",
        "subscription_inactive",
        "payment_failed",
        "usage_limit_reached",
    }
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicySettings:
    """The numbers the policy needs, in seconds (from ``[retry]`` and ``[pause]``)."""

    retry_initial: float = 5.0
    retry_max: float = 300.0
    attempts: int = 4
    pause_credits: float = 900.0
    pause_account: float = 3600.0
    pause_auth: float = 900.0
    pause_max: float = 43200.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attempt:
    """What the rotation knows when an answer comes in."""

    tries: int  # tries of this rotation so far, the one just answered included (1-based)
    pause_level: int = 0  # how many pauses of the same kind and scope came right before
    url_mode: bool = False  # the write sent a URL rather than the file


@dataclasses.dataclass(frozen=True, kw_only=True)
class Decision:
    """What to do about one answer."""

    action: Action
    scope: Scope
    reason: str  # the error code, or "http 502", "no answer", ...
    delay: float = 0.0  # seconds: the retry backoff, or how long a pause lasts
    pause: PauseKind | None = None
    counts_as_try: bool = False
    detail: str = ""  # why a rotation is given up, for the log


def backoff(settings: PolicySettings, retry_index: int, rng: random.Random) -> float:
    """Return a full-jitter delay: ``random(0, min(max, initial * 2**n))``."""
    ceiling = min(settings.retry_max, settings.retry_initial * 2.0 ** min(retry_index, 62))
    return float(rng.uniform(0, ceiling))


def doubling(base: float, level: int, cap: float) -> float:
    """Return ``base`` doubled ``level`` times, capped (pauses that persist grow)."""
    return min(cap, base * 2.0 ** min(level, 62))


def decide(
    outcome: Outcome, attempt: Attempt, settings: PolicySettings, rng: random.Random
) -> Decision:
    """Return what the daemon does about ``outcome``."""
    code = outcome.code
    reason = code or _status_reason(outcome)
    if outcome.kind == "success" or code == "x_duplicate_action":
        return Decision(action="done", scope="rotation", reason=reason or "success")

    action = outcome.write_action
    if action is not None and action.terminal and code not in RATE_LIMIT_CODES | BILLING_CODES:
        failed = _decide_code(outcome, attempt, settings, rng)
        if failed.action in {"retry", "replay", "new_key"}:
            if not action.safe_to_retry:
                return _give_up(reason, "the failed write is not safe to retry")
            if action.requires_new_key:
                return dataclasses.replace(failed, action="retry")
        return failed
    return _decide_code(outcome, attempt, settings, rng)


def _decide_code(
    outcome: Outcome, attempt: Attempt, settings: PolicySettings, rng: random.Random
) -> Decision:
    code = outcome.code
    reason = code or _status_reason(outcome)
    status = outcome.status
    retry_after = outcome.retry_after

    if outcome.kind == "uncertain" or code in UNCERTAIN_CODES:
        return Decision(action="uncertain", scope="attempt", reason=reason)
    if outcome.kind == "no_answer":
        # The same key again: if the write did happen, the server answers with it.
        return _retry(attempt, settings, rng, reason, action="replay")
    if outcome.kind == "not_sent":
        return _retry(attempt, settings, rng, reason)

    target = pause_of(outcome)
    if target is not None:
        scope, kind = target
        return Decision(
            action="pause",
            scope=scope,
            reason=reason,
            delay=_pause_seconds(kind, retry_after, attempt.pause_level, settings),
            pause=kind,
        )
    if code == "media_download_failed":
        if attempt.url_mode:
            return Decision(action="as_file", scope="image", reason=reason)
        return _give_up(reason, "media download failed on a file upload")
    if code in IMAGE_CODES:
        return Decision(action="next_image", scope="image", reason=reason, counts_as_try=True)
    if code == "idempotency_conflict":
        if attempt.tries >= settings.attempts:
            return _give_up(reason, "out of tries")
        return Decision(action="new_key", scope="attempt", reason=reason, counts_as_try=True)
    if code in TRANSIENT_CODES or (status is not None and status >= 500):
        return _retry(attempt, settings, rng, reason, retry_after=retry_after)
    return _give_up(reason, "not retryable")


def pause_of(outcome: Outcome) -> tuple[Literal["key", "account"], PauseKind] | None:
    """Return the scope and kind of pause an answer calls for, or None.

    The error code decides first; a 429 with no code of its own pauses the whole key.
    """
    code, status = outcome.code, outcome.status
    if code in RATE_LIMIT_CODES:
        return "key", "rate_limit"
    if code == "x_rate_limited":
        return "account", "x_rate_limited"
    if code == "x_daily_limit":
        return "account", "daily"
    if code in BILLING_CODES or (code is None and status == 402):
        return "key", "credits"
    if code == "unauthenticated" or (code is None and status == 401):
        return "key", "auth"
    if code in ACCOUNT_CODES:
        return "account", "account"
    if status == 429:
        return "key", "rate_limit"
    return None


def _pause_seconds(
    kind: PauseKind, retry_after: float | None, level: int, settings: PolicySettings
) -> float:
    """Return how long a pause of ``kind`` lasts, the server's Retry-After first."""
    if kind in {"rate_limit", "x_rate_limited"}:
        if retry_after is not None:
            return retry_after
        return doubling(settings.retry_initial, level, settings.retry_max)
    if kind == "daily":
        return retry_after if retry_after is not None else DAY
    if kind == "credits":
        return settings.pause_credits
    if kind == "auth":
        return doubling(settings.pause_auth, level, settings.pause_max)
    return doubling(settings.pause_account, level, settings.pause_max)


def _retry(
    attempt: Attempt,
    settings: PolicySettings,
    rng: random.Random,
    reason: str,
    *,
    action: Action = "retry",
    retry_after: float | None = None,
) -> Decision:
    if attempt.tries >= settings.attempts:
        if action == "replay":
            # Out of tries, but the write may have happened: keep it pending, so the
            # next rotation replays it under the same key instead of forgetting it.
            return Decision(action="replay", scope="attempt", reason=reason, counts_as_try=True)
        return _give_up(reason, "out of tries")
    delay = backoff(settings, attempt.tries - 1, rng)
    if retry_after is not None:
        delay = max(delay, retry_after)  # the server's Retry-After is always respected
    return Decision(action=action, scope="attempt", reason=reason, delay=delay, counts_as_try=True)


def _give_up(reason: str, detail: str) -> Decision:
    return Decision(action="give_up", scope="rotation", reason=reason, detail=detail)


def _status_reason(outcome: Outcome) -> str:
    if outcome.kind == "no_answer":
        return "no answer"
    if outcome.kind == "not_sent":
        return "not sent"
    if outcome.status is not None:
        return f"http {outcome.status}"
    return outcome.kind
