"""Every error code of the official SDK, classified by family, one test per code.

The table below is written out by hand from ``x_twitter_scraper/types/shared/error.py``
(the SDK's ``ErrorCode`` list) and the Xquik docs; it is the oracle, not the policy's
own table. A test checks that it covers the SDK's list exactly, so a new SDK release
with new codes fails here until each one is given a row.
"""

from __future__ import annotations

import random
import typing

import pytest
from x_twitter_scraper.types.shared.error import ErrorCode

from rotator.outcomes import Outcome
from rotator.policy import Attempt, Decision, PolicySettings, decide

# family -> (a status the docs give it, the codes of the family)
FAMILIES: dict[str, tuple[int, list[str]]] = {
    "done": (422, ["x_duplicate_action"]),
    "image": (
        422,
        [
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
        ],
    ),
    "url_fetch": (422, ["media_download_failed"]),
    "account": (
        403,
        [
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
        ],
    ),
    "billing": (
        402,
        [
            "insufficient_credits",
            "no_subscription",
            "no_credits",
            "subscription_inactive",
            "payment_failed",
            "topup_in_progress",
        ],
    ),
    "key": (401, ["unauthenticated"]),
    "rate_limit": (
        429,
        [
            "rate_limit_exceeded",
            "rate_limited",
            "support_media_rate_limit",
            "support_request_rate_limit",
        ],
    ),
    "x_throttle": (
        429,
        ["x_rate_limited", "x_api_rate_limited", "x_login_rate_limited", "login_rate_limited"],
    ),
    "x_daily": (429, ["x_daily_limit"]),
    "transient": (
        503,
        [
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
        ],
    ),
    "uncertain": (500, ["x_write_ambiguous", "x_write_unconfirmed"]),
    "idempotency_conflict": (409, ["idempotency_conflict", "idempotency_key_conflict"]),
    "idempotency_in_progress": (409, ["idempotency_in_progress"]),
    "request": (
        400,
        [
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
        ],
    ),
}
# What a plain error answer (no write record) of each family leads to:
# (action, scope, pause kind, the image is refused)
EXPECTED: dict[str, tuple[str, str, str | None, bool]] = {
    "done": ("done", "rotation", None, False),
    "image": ("next_image", "image", None, True),
    "url_fetch": ("as_file", "image", None, False),  # sent in URL mode
    "account": ("pause", "account", "account", False),
    "billing": ("pause", "key", "credits", False),
    "key": ("pause", "key", "auth", False),
    "rate_limit": ("pause", "key", "rate_limit", False),
    "x_throttle": ("pause", "account", "x_rate_limited", False),
    "x_daily": ("pause", "account", "daily", False),
    "transient": ("replay", "attempt", None, False),
    "uncertain": ("uncertain", "attempt", None, False),
    "idempotency_conflict": ("new_key", "attempt", None, False),
    "idempotency_in_progress": ("replay", "attempt", None, False),
    "request": ("give_up", "rotation", None, False),
}
ROWS = [
    pytest.param(code, status, family, id=code)
    for family, (status, codes) in FAMILIES.items()
    for code in codes
]


def _decide(code: str, status: int) -> Decision:
    outcome = Outcome(kind="error", status=status, code=code, message="")
    return decide(outcome, Attempt(tries=1, url_mode=True), PolicySettings(), random.Random(3))


def test_the_table_covers_the_sdk_code_list_exactly() -> None:
    """Every code the SDK lists has exactly one row here, and no row is made up."""
    listed = [code for _, codes in FAMILIES.values() for code in codes]
    assert len(listed) == len(set(listed))
    assert set(listed) == set(typing.get_args(ErrorCode))


@pytest.mark.parametrize(("code", "status", "family"), ROWS)
def test_each_sdk_code_is_decided_by_its_family(code: str, status: int, family: str) -> None:
    """A plain error answer with this code gets its family's decision, named by the code."""
    decision = _decide(code, status)
    action, scope, pause, refused = EXPECTED[family]
    assert (decision.action, decision.scope, decision.pause) == (action, scope, pause)
    assert decision.refuse_image == refused
    assert decision.reason == code
    if action == "pause":
        assert not decision.new_key  # no record said safeToRetry: the same key after the pause


@pytest.mark.parametrize(("code", "status", "family"), ROWS)
def test_each_sdk_code_on_a_5xx_never_earns_a_new_key(code: str, status: int, family: str) -> None:
    """A 5xx without a safe record never sends the same input under a new key (a conflict
    proves the key unused; the file after a failed URL fetch is another input)."""
    decision = _decide(code, 500)
    if family not in {"idempotency_conflict", "url_fetch"}:
        assert decision.action not in {"retry", "new_key"}
        assert not decision.new_key


UNKNOWN = [
    pytest.param(None, 500, "replay", id="bare-500"),
    pytest.param("some_future_code", 502, "replay", id="unknown-502"),
    pytest.param("some_future_code", 408, "replay", id="unknown-408"),
    pytest.param("some_future_code", 409, "replay", id="unknown-409"),
    pytest.param("some_future_code", 429, "pause", id="unknown-429"),
    pytest.param("some_future_code", 402, "pause", id="unknown-402"),
    pytest.param("some_future_code", 401, "pause", id="unknown-401"),
    pytest.param("x_picture_unreadable", 422, "next_image", id="unknown-media-422"),
    pytest.param(None, 413, "next_image", id="bare-413"),
    pytest.param(None, 415, "next_image", id="bare-415"),
    pytest.param("some_future_code", 422, "give_up", id="unknown-422"),
    pytest.param("some_future_code", 403, "give_up", id="unknown-403"),
    pytest.param(None, 404, "give_up", id="bare-404"),
]


@pytest.mark.parametrize(("code", "status", "action"), UNKNOWN)
def test_unknown_codes_fall_back_to_the_status_with_the_safest_reading(
    code: str | None, status: int, action: str
) -> None:
    """An unknown code reads as its status: 5xx/408/409 same key, media 4xx refuses, else stop."""
    outcome = Outcome(kind="error", status=status, code=code, message="")
    decision = decide(outcome, Attempt(tries=1), PolicySettings(), random.Random(3))
    assert decision.action == action
    assert not decision.new_key
