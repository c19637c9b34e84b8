"""The fault policy: a pure ``Outcome -> Decision`` table.

Each answer the API can give is handled at one scope: the attempt (send the same
image again, under the same Idempotency-Key or a new one), the image (skip it), the
account (pause it), the whole key (pause every write) or the rotation (give it up).
``decide`` is a pure function of the outcome, the settings, the pause level so far and
a random source, so every row of the table is tested on its own (tests/test_policy.py).

The contract is the one of Xquik's official SDK: a new Idempotency-Key for the same
image only when the server said ``safeToRetry: true`` or the request never left; the
same key after a timeout, a dropped connection, a 5xx, a 408 or a 409 (unless the
answer says ``x-should-retry: false``); a terminal ``failed``/``expired`` record that
is not safe to retry is uncertain and never sent again under a new key.

Why one module at this size: its one job is the table. Most of its length is every
error code the SDK lists, each in one family; split, one decision would be read in
several places.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from typing import Literal

from rotator.outcomes import Outcome, WriteAction

Action = Literal[
    "done",  # the avatar changed (or X says it already had): move the position on
    "retry",  # same image, same rotation, after ``delay``, under a NEW Idempotency-Key
    "replay",  # same image and the SAME Idempotency-Key (the write may have happened)
    "new_key",  # same image now, with a new Idempotency-Key (the key was refused)
    "next_image",  # this image is refused: remember it, try the next one in this rotation
    "as_file",  # the URL could not be fetched: send the same image as a file now
    "pause",  # pause ``scope`` for ``delay``; the waiting rotation goes on afterwards
    "uncertain",  # the write may or may not have happened: never resend blindly
    "resume_later",  # the write is still running: the next rotation resumes it first
    "give_up",  # end this rotation, position unchanged
]
Scope = Literal["attempt", "image", "account", "key", "rotation"]
PauseKind = Literal["rate_limit", "x_rate_limited", "daily", "account", "credits", "auth", "manual"]
Family = Literal[
    "done",  # X already has it
    "image",  # the image itself is refused: refuse it until its file changes
    "url_fetch",  # Xquik could not fetch the URL: send the file instead
    "account",  # the connected X account needs attention: pause that account
    "billing",  # out of credits or no plan: pause every write
    "key",  # the API key is not accepted: pause every write
    "rate_limit",  # Xquik's own limit for the whole Xquik account: pause the key
    "x_throttle",  # X throttles this X account: pause the account
    "x_daily",  # X's daily cap for this X account: pause it a day
    "transient",  # the server failed: replay the same key with backoff
    "uncertain",  # the write may have happened: verify, never resend blindly
    "idempotency_conflict",  # the key was used with other input: nothing was done
    "idempotency_in_progress",  # the first write under this key still runs: wait, replay
    "request",  # a request bug or a code of another endpoint: never resend as is
]

DAY = 86400.0

# Every code of the SDK's ``types/shared/error.py`` (and a few only the docs name), by
# family. Codes of other endpoints are "request": seen on an avatar write, they mean
# rotator sent something the server cannot act on, and sending it again will not help.
_FAMILY_CODES: Mapping[Family, frozenset[str]] = {
    "done": frozenset({"x_duplicate_action"}),
    "image": frozenset(
        {
            "invalid_input",
            "invalid_media_url",
            "media_too_large",
            "no_media",
            "body_too_large",
            "unsupported_media_type",
            "unsupported_media_combination",
            "x_image_invalid",
            "x_media_rejected",
            "x_video_too_large",
            "x_content_too_long",
            "x_rejected",
            "draw_too_large",
        }
    ),
    "url_fetch": frozenset({"media_download_failed"}),
    "account": frozenset(
        {
            "account_needs_reauth",
            "account_restricted",
            "account_not_found",
            "x_account_suspended",
            "x_account_protected",
            "x_account_feature_required",
            "x_target_not_found",
            "x_auth_failure",
            "x_api_unauthorized",
            "x_automation_refused",
            "x_login_auth_failed",
            "x_login_challenge",
            "x_login_denied",
            "x_login_failed",
            "x_login_suspended",
            "login_failed",
            "login_cooldown",
            "session_required",
            "passkey_required",
            "cursor_account_unavailable",
            "forbidden",
        }
    ),
    "billing": frozenset(
        {
            "insufficient_credits",
            "no_subscription",
            "no_credits",
            "subscription_inactive",
            "payment_failed",
            "usage_limit_reached",
            "topup_in_progress",
        }
    ),
    "key": frozenset({"unauthenticated"}),
    "rate_limit": frozenset(
        {
            "rate_limit_exceeded",
            "rate_limited",
            "support_media_rate_limit",
            "support_request_rate_limit",
        }
    ),
    "x_throttle": frozenset(
        {"x_rate_limited", "x_api_rate_limited", "x_login_rate_limited", "login_rate_limited"}
    ),
    "x_daily": frozenset({"x_daily_limit"}),
    "transient": frozenset(
        {
            "internal_error",
            "service_unavailable",
            "x_transient_error",
            "x_write_failed",
            "write_tracking_unavailable",
            "x_api_unavailable",
            "login_service_unavailable",
            "x_login_service_unavailable",
            "read_request_timeout",
            "replay_unavailable",
            "search_unavailable",
            "telegram_unavailable",
            "bookmark_folders_unavailable",
            "favoriters_unavailable",
            "likes_unavailable",
            "monitor_profile_unavailable",
            "coverage_cursor_unavailable",
            "guest_wallet_unavailable",
            "guest_wallets_unavailable",
            "checkout_unavailable",
            "pagination_stalled",
            "x_post_not_sent",
            "x_dm_not_sent",
            "x_user_lookup_failed",
        }
    ),
    "uncertain": frozenset({"x_write_ambiguous", "x_write_unconfirmed"}),
    "idempotency_conflict": frozenset({"idempotency_conflict", "idempotency_key_conflict"}),
    "idempotency_in_progress": frozenset({"idempotency_in_progress"}),
    "request": frozenset(
        {
            "account_already_connected",
            "account_required",
            "api_key_limit_reached",
            "article_not_found",
            "closed",
            "dm_not_permitted",
            "invalid_format",
            "invalid_id",
            "invalid_message_id",
            "invalid_params",
            "invalid_tool_type",
            "invalid_tweet_id",
            "invalid_tweet_url",
            "invalid_user_id",
            "invalid_user_ids",
            "invalid_username",
            "invalid_json",
            "job_not_found",
            "missing_params",
            "missing_query",
            "monitor_already_exists",
            "not_found",
            "style_not_found",
            "tweet_not_found",
            "unsupported_field",
            "user_not_found",
            "broadcast_not_found",
            "connection_challenge_expired",
            "connection_challenge_inactive",
            "contributor_not_found",
            "coverage_cursor_gone",
            "draft_not_found",
            "expired",
            "guest_wallets_disabled",
            "invalid_broadcast_id",
            "invalid_community_id",
            "invalid_community_topic",
            "invalid_complete_replies_request",
            "invalid_contributor_alias",
            "invalid_coverage_cursor",
            "invalid_coverage_request",
            "invalid_cursor",
            "invalid_idempotency_key",
            "invalid_job_filter",
            "invalid_job_id",
            "invalid_list_id",
            "invalid_news_id",
            "invalid_output_options",
            "invalid_payment_amount",
            "invalid_range",
            "invalid_reply_options",
            "invalid_space_id",
            "list_not_found",
            "missing_idempotency_key",
            "missing_ids",
            "missing_url",
            "news_not_found",
            "no_cached_style",
            "replies_incomplete",
            "retweeters_incomplete",
            "space_canceled",
            "space_not_ended",
            "too_many_ids",
            "too_many_streams",
            "too_many_tweets",
            "unknown_field",
            "webhook_inactive",
            "x_community_not_joined",
            "x_community_not_selectable",
            "x_community_post_public",
            "x_community_post_removed",
            "x_dm_not_allowed",
            "x_dm_not_deleted",
            "x_reply_not_allowed",
            "x_reply_target_unavailable",
        }
    ),
}
CODE_FAMILY: Mapping[str, Family] = {
    code: family for family, codes in _FAMILY_CODES.items() for code in codes
}
# Kept for callers that ask about one family.
RATE_LIMIT_CODES = _FAMILY_CODES["rate_limit"]
TRANSIENT_CODES = _FAMILY_CODES["transient"]
IMAGE_CODES = _FAMILY_CODES["image"]
ACCOUNT_CODES = _FAMILY_CODES["account"]
BILLING_CODES = _FAMILY_CODES["billing"]
UNCERTAIN_CODES = _FAMILY_CODES["uncertain"]
_PAUSES: Mapping[Family, tuple[Literal["key", "account"], PauseKind]] = {
    "rate_limit": ("key", "rate_limit"),
    "x_throttle": ("account", "x_rate_limited"),
    "x_daily": ("account", "daily"),
    "billing": ("key", "credits"),
    "key": ("key", "auth"),
    "account": ("account", "account"),
}
_MEDIA_WORDS = ("media", "image", "file", "avatar", "picture", "photo")


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
    reason: str  # the error code, or "http 502", "dns failure", ...
    delay: float = 0.0  # seconds: the wait before a retry or replay, or how long a pause lasts
    pause: PauseKind | None = None  # set: also pause (with ``pause_scope``) for ``pause_for``
    pause_scope: Literal["key", "account"] | None = None
    pause_for: float = 0.0
    new_key: bool = False  # after a pause: the write did not happen, a new key is allowed
    refuse_image: bool = False  # remember the image as refused (its file must change)
    move_on: bool = False  # give up AND move the position past the image (never resent as is)
    counts_as_try: bool = False
    detail: str = ""  # why a rotation is given up, for the log


def backoff(settings: PolicySettings, retry_index: int, rng: random.Random) -> float:
    """Return a full-jitter delay: ``random(0, min(max, initial * 2**n))``."""
    ceiling = min(settings.retry_max, settings.retry_initial * 2.0 ** min(retry_index, 62))
    return float(rng.uniform(0, ceiling))


def doubling(base: float, level: int, cap: float) -> float:
    """Return ``base`` doubled ``level`` times, capped (pauses that persist grow)."""
    return min(cap, base * 2.0 ** min(level, 62))


def family_of(code: str | None, status: int | None, message: str = "") -> Family:
    """Return the family of an error code, or of its HTTP status when the code is unknown.

    An unknown code gets the safest reading of its status: a 5xx, 408 or 409 is
    transient (replayed under the same key, never a new one), a 4xx about the media
    refuses the image, any other 4xx is a request the server will not take as is.
    """
    if code is not None and code in CODE_FAMILY:
        return CODE_FAMILY[code]
    if status is None:
        return "request"
    if status == 401:
        return "key"
    if status == 402:
        return "billing"
    if status == 429:
        return "rate_limit"
    if status >= 500 or status in {408, 409}:
        return "transient"
    text = f"{code or ''} {message}".lower()
    if status in {413, 415} or (400 <= status < 500 and any(w in text for w in _MEDIA_WORDS)):
        return "image"
    return "request"


def decide(
    outcome: Outcome, attempt: Attempt, settings: PolicySettings, rng: random.Random
) -> Decision:
    """Return what the daemon does about ``outcome``."""
    reason = outcome.code or _status_reason(outcome)
    if outcome.kind == "success":
        return Decision(action="done", scope="rotation", reason=reason or "success")
    if outcome.kind == "unresolved":
        return Decision(action="resume_later", scope="rotation", reason=reason)
    action = outcome.write_action
    if action is not None and action.terminal and action.status != "success":
        return _decide_failed_record(outcome, action, attempt, settings, rng)
    return _decide_answer(outcome, attempt, settings, rng)


def _decide_failed_record(
    outcome: Outcome,
    action: WriteAction,
    attempt: Attempt,
    settings: PolicySettings,
    rng: random.Random,
) -> Decision:
    """Decide about a terminal ``failed``/``expired`` write record."""
    code = action.error_code or outcome.code or None
    reason = code or f"write {action.status or 'failed'}"
    # The record's flags decide; its code only says what else to do (pause, refuse, done).
    family = family_of(code, None) if code else "transient"
    if family == "done":
        return Decision(action="done", scope="rotation", reason=reason)
    pause = _pause_part(family, outcome, attempt, settings)
    if not action.safe_to_retry:
        # X may have the write: sending the image again under a new key could double it.
        return dataclasses.replace(
            pause,
            action="uncertain",
            scope="attempt",
            reason=reason,
            refuse_image=family == "image",
            detail="the failed write is not safe to retry",
        )
    # X did not get the write: a new key for the same input is allowed.
    fix = action.retryable is False or action.next_action == "fix_request"
    if family == "image":
        return _refuse(reason)
    if family == "url_fetch" and attempt.url_mode:
        return Decision(action="as_file", scope="image", reason=reason, new_key=True)
    if fix or family == "url_fetch":
        return dataclasses.replace(
            pause,
            action="give_up",
            scope="rotation",
            reason=reason,
            move_on=True,
            detail="the server says the same request cannot succeed",
        )
    if pause.pause is not None:
        return dataclasses.replace(pause, action="pause", reason=reason, new_key=True)
    return _retry(attempt, settings, rng, reason, action="retry", wait=outcome.retry_after)


def _decide_answer(
    outcome: Outcome, attempt: Attempt, settings: PolicySettings, rng: random.Random
) -> Decision:
    """Decide about an answer without a terminal record (or about no answer at all)."""
    code = outcome.code
    reason = code or _status_reason(outcome)
    wait = outcome.retry_after
    if outcome.kind == "uncertain":
        return Decision(action="uncertain", scope="attempt", reason=reason)
    if outcome.kind == "no_answer":
        # The same key again: if the write did happen, the server answers with it.
        return _retry(attempt, settings, rng, reason, action="replay", wait=wait)
    if outcome.kind == "not_sent":
        # Not a byte left: a new key is as safe as the old one.
        return _retry(attempt, settings, rng, reason, action="retry", wait=wait)

    family = family_of(code, outcome.status, outcome.message)
    status = outcome.status or 0
    if family == "done":
        return Decision(action="done", scope="rotation", reason=reason)
    if family == "uncertain":
        return Decision(action="uncertain", scope="attempt", reason=reason)
    if family in _PAUSES:
        # Refused before anything happened, but only the SDK's same key is provably safe.
        pause = _pause_part(family, outcome, attempt, settings)
        return dataclasses.replace(pause, action="pause", reason=reason)
    if family == "image":
        return _refuse(reason)
    if family == "url_fetch":
        if attempt.url_mode:
            return Decision(action="as_file", scope="image", reason=reason, new_key=True)
        return _give_up(reason, "media download failed on a file upload")
    if family == "idempotency_conflict":
        # The key was used with other input: this request was not acted on.
        if attempt.tries >= settings.attempts:
            return _give_up(reason, "out of tries")
        return Decision(action="new_key", scope="attempt", reason=reason, counts_as_try=True)
    replayable = family in {"transient", "idempotency_in_progress"}
    if replayable and outcome.should_retry is False:
        if status >= 500:
            # The server may have the write and says not to ask again: never resend.
            return Decision(
                action="uncertain",
                scope="attempt",
                reason=reason,
                detail="the server said not to retry (x-should-retry: false)",
            )
        if family == "idempotency_in_progress":
            # The first write under this key still runs: keep it, the next rotation asks.
            return Decision(
                action="resume_later",
                scope="rotation",
                reason=reason,
                detail="the server said not to retry (x-should-retry: false)",
            )
        return _give_up(reason, "the server said not to retry (x-should-retry: false)")
    if replayable or outcome.should_retry is True:
        return _retry(attempt, settings, rng, reason, action="replay", wait=wait)
    return _give_up(reason, "not retryable")


def pause_of(outcome: Outcome) -> tuple[Literal["key", "account"], PauseKind] | None:
    """Return the scope and kind of pause an answer calls for, or None.

    The error code decides first (a failed record's own code before the answer's); a
    code the table does not know is read by its HTTP status.
    """
    action = outcome.write_action
    code = outcome.code
    if action is not None and action.terminal and action.error_code:
        code = action.error_code
    return _PAUSES.get(family_of(code, outcome.status, outcome.message))


def _pause_part(
    family: Family, outcome: Outcome, attempt: Attempt, settings: PolicySettings
) -> Decision:
    """Return a decision carrying the pause ``family`` calls for (no pause: none set)."""
    target = _PAUSES.get(family)
    reason = outcome.code or _status_reason(outcome)
    if target is None:
        return Decision(action="give_up", scope="rotation", reason=reason)
    scope, kind = target
    seconds = _pause_seconds(kind, outcome.retry_after, attempt.pause_level, settings)
    return Decision(
        action="pause",
        scope=scope,
        reason=reason,
        delay=seconds,
        pause=kind,
        pause_scope=scope,
        pause_for=seconds,
    )


def _pause_seconds(
    kind: PauseKind, retry_after: float | None, level: int, settings: PolicySettings
) -> float:
    """Return how long a pause of ``kind`` lasts, never shorter than the server's wait."""
    if kind in {"rate_limit", "x_rate_limited"}:
        if retry_after is not None:
            return retry_after
        return doubling(settings.retry_initial, level, settings.retry_max)
    if kind == "daily":
        return retry_after if retry_after is not None else DAY
    if kind == "credits":
        return max(settings.pause_credits, retry_after or 0.0)
    if kind == "auth":
        return max(doubling(settings.pause_auth, level, settings.pause_max), retry_after or 0.0)
    return max(doubling(settings.pause_account, level, settings.pause_max), retry_after or 0.0)


def _refuse(reason: str) -> Decision:
    return Decision(
        action="next_image", scope="image", reason=reason, refuse_image=True, counts_as_try=True
    )


def _retry(
    attempt: Attempt,
    settings: PolicySettings,
    rng: random.Random,
    reason: str,
    *,
    action: Action,
    wait: float | None,
) -> Decision:
    if attempt.tries >= settings.attempts:
        if action == "replay":
            # Out of tries, but the write may have happened: keep it pending, so the
            # next rotation replays it under the same key instead of forgetting it.
            return Decision(action="replay", scope="attempt", reason=reason, counts_as_try=True)
        return _give_up(reason, "out of tries")
    delay = backoff(settings, attempt.tries - 1, rng)
    if wait is not None:
        delay = max(delay, wait)  # the server's wait is always respected
    return Decision(action=action, scope="attempt", reason=reason, delay=delay, counts_as_try=True)


def _give_up(reason: str, detail: str) -> Decision:
    return Decision(action="give_up", scope="rotation", reason=reason, detail=detail)


def _status_reason(outcome: Outcome) -> str:
    if outcome.failure is not None:
        return outcome.failure.replace("_", " ")
    if outcome.kind == "no_answer":
        return "no answer"
    if outcome.kind == "not_sent":
        return "not sent"
    if outcome.status is not None:
        return f"http {outcome.status}"
    return outcome.kind
