"""Tests for rotator.policy: one test per row of the error table, plus properties."""

from __future__ import annotations

import dataclasses
import math
import random
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rotator.outcomes import Outcome, OutcomeKind, WriteAction
from rotator.policy import (
    ACCOUNT_CODES,
    BILLING_CODES,
    DAY,
    IMAGE_CODES,
    TRANSIENT_CODES,
    UNCERTAIN_CODES,
    Action,
    Attempt,
    Decision,
    PolicySettings,
    Scope,
    backoff,
    decide,
)

SETTINGS = PolicySettings(
    retry_initial=5.0,
    retry_max=300.0,
    attempts=4,
    pause_credits=900.0,
    pause_account=3600.0,
    pause_auth=900.0,
    pause_max=43200.0,
)
FIRST = Attempt(tries=1)
LEVELS = [0, 1, 2, 3, 5, 6, 40, 1000]

KNOWN_CODES = sorted(
    {
        "rate_limit_exceeded",
        "x_rate_limited",
        "x_daily_limit",
        "x_duplicate_action",
        "media_download_failed",
        "idempotency_conflict",
        "unauthenticated",
    }
    | TRANSIENT_CODES
    | IMAGE_CODES
    | ACCOUNT_CODES
    | BILLING_CODES
    | UNCERTAIN_CODES
)
KINDS: tuple[OutcomeKind, ...] = typing.get_args(OutcomeKind)
ACTIONS: tuple[Action, ...] = typing.get_args(Action)
SCOPES: tuple[Scope, ...] = typing.get_args(Scope)


def error(code: str | None, status: int | None, *, retry_after: float | None = None) -> Outcome:
    """Return an HTTP error answer."""
    return Outcome(kind="error", status=status, code=code, retry_after=retry_after)


def run(outcome: Outcome, attempt: Attempt = FIRST, seed: int = 7) -> Decision:
    """Decide with the test settings and a seeded random source."""
    return decide(outcome, attempt, SETTINGS, random.Random(seed))


def jitter_ceiling(tries: int, settings: PolicySettings = SETTINGS) -> float:
    """Return the full-jitter upper bound after ``tries`` tries."""
    return min(settings.retry_max, settings.retry_initial * 2.0 ** (tries - 1))


def failed_action(
    *, safe: bool, retryable: bool = False, new_key: bool = False, code: str | None = None
) -> WriteAction:
    """Return a terminal failed durable write action."""
    return WriteAction(
        id="xwa_1",
        status="failed",
        terminal=True,
        safe_to_retry=safe,
        retryable=retryable,
        requires_new_key=new_key,
        error_code=code,
    )


# -- 429 ---------------------------------------------------------------------------------


RATE_LIMIT_429 = [
    pytest.param("rate_limit_exceeded", id="rate_limit_exceeded"),
    pytest.param(None, id="text-plain-429"),
    pytest.param("some_future_429_code", id="unknown-429-code"),
]


@pytest.mark.parametrize("code", RATE_LIMIT_429)
def test_key_rate_limit_pauses_the_key_for_retry_after(code: str | None) -> None:
    """A 429 that is not X's own pauses the whole key for exactly Retry-After."""
    decision = run(error(code, 429, retry_after=37.5))
    assert (decision.action, decision.scope, decision.pause) == ("pause", "key", "rate_limit")
    assert decision.delay == 37.5


@pytest.mark.parametrize("code", RATE_LIMIT_429)
@pytest.mark.parametrize("level", LEVELS)
def test_key_rate_limit_without_retry_after_doubles_by_level(code: str | None, level: int) -> None:
    """Without Retry-After a key rate limit pauses retry.initial doubled per level, capped."""
    decision = run(error(code, 429), Attempt(tries=1, pause_level=level))
    assert (decision.action, decision.scope, decision.pause) == ("pause", "key", "rate_limit")
    assert decision.delay == min(300.0, 5.0 * 2**level)


@pytest.mark.parametrize("retry_after", [12.0, None])
@pytest.mark.parametrize("level", LEVELS)
def test_x_rate_limited_pauses_the_account(retry_after: float | None, level: int) -> None:
    """x_rate_limited pauses that account only: Retry-After, else the capped doubling backoff."""
    decision = run(
        error("x_rate_limited", 429, retry_after=retry_after), Attempt(tries=2, pause_level=level)
    )
    assert (decision.action, decision.scope, decision.pause) == (
        "pause",
        "account",
        "x_rate_limited",
    )
    expected = retry_after if retry_after is not None else min(300.0, 5.0 * 2**level)
    assert decision.delay == expected


@pytest.mark.parametrize(("retry_after", "expected"), [(None, DAY), (5400.0, 5400.0)])
def test_x_daily_limit_pauses_the_account_for_a_day(
    retry_after: float | None, expected: float
) -> None:
    """x_daily_limit pauses the account for 24 h, or for Retry-After when the server gives one."""
    decision = run(error("x_daily_limit", 429, retry_after=retry_after))
    assert (decision.action, decision.scope, decision.pause) == ("pause", "account", "daily")
    assert decision.delay == expected


CODE_BEFORE_STATUS = [
    ("usage_limit_reached", "key", "credits"),
    ("insufficient_credits", "key", "credits"),
    ("unauthenticated", "key", "auth"),
    ("account_restricted", "account", "account"),
    ("account_needs_reauth", "account", "account"),
]


@pytest.mark.parametrize(("code", "scope", "kind"), CODE_BEFORE_STATUS)
def test_a_known_code_on_a_429_keeps_its_own_row(code: str, scope: str, kind: str) -> None:
    """The error code decides before the status: usage_limit_reached on a 429 is billing."""
    decision = run(error(code, 429, retry_after=60.0))
    assert (decision.action, decision.scope, decision.pause) == ("pause", scope, kind)


# -- transient: retry the same image with full jitter ------------------------------------


TRANSIENT = [
    *(pytest.param(error(code, 503), id=code) for code in sorted(TRANSIENT_CODES)),
    pytest.param(error(None, 502), id="html-502"),
    pytest.param(error(None, 500), id="bare-500"),
    pytest.param(error(None, 504), id="bare-504"),
    pytest.param(error("some_new_5xx_code", 503), id="unknown-5xx-code"),
    pytest.param(Outcome(kind="not_sent", message="connect refused"), id="not-sent"),
]


@pytest.mark.parametrize("outcome", TRANSIENT)
@pytest.mark.parametrize("tries", [1, 2, 3])
def test_transient_errors_replay_the_same_key_with_full_jitter(
    outcome: Outcome, tries: int
) -> None:
    """A 5xx replays under the SAME key (the SDK's rule); only a request that never left may
    take a new one. Delays are random(0, min(max, initial*2^n))."""
    decision = run(outcome, Attempt(tries=tries))
    if outcome.kind == "not_sent":
        # Nothing left the machine: a new key and the same key are both safe.
        assert decision.action in {"retry", "replay"}
    else:
        assert decision.action == "replay"
    assert decision.scope == "attempt"
    assert decision.counts_as_try
    assert 0.0 <= decision.delay <= jitter_ceiling(tries)


@pytest.mark.parametrize("outcome", TRANSIENT)
@pytest.mark.parametrize("tries", [4, 5, 9])
def test_transient_errors_out_of_tries_keep_the_write_for_the_next_rotation(
    outcome: Outcome, tries: int
) -> None:
    """Out of tries, a 5xx write is kept for a same-key replay; a never-sent one is given up."""
    decision = run(outcome, Attempt(tries=tries))
    if outcome.kind == "not_sent":
        assert (decision.action, decision.scope) == ("give_up", "rotation")
        assert decision.detail
    else:
        assert (decision.action, decision.delay) == ("replay", 0.0)


@pytest.mark.parametrize("status", [500, 502, 503, 408, 409])
def test_x_should_retry_false_stops_the_replay(status: int) -> None:
    """x-should-retry: false is obeyed over the status: no resend at all; a 5xx is uncertain."""
    outcome = Outcome(kind="error", status=status, should_retry=False)
    decision = run(outcome)
    assert decision.action == ("uncertain" if status >= 500 else "give_up")


def test_in_progress_with_x_should_retry_false_keeps_the_write_for_later() -> None:
    """The first write under the key still runs: not resent now, never forgotten either."""
    outcome = Outcome(kind="error", status=409, code="idempotency_in_progress", should_retry=False)
    assert run(outcome).action == "resume_later"


@pytest.mark.parametrize(("code", "status"), [(None, 400), ("some_new_code", 403)])
def test_x_should_retry_true_replays_a_4xx_under_the_same_key(
    code: str | None, status: int
) -> None:
    """x-should-retry: true is obeyed over the status: the same key goes out again."""
    decision = run(Outcome(kind="error", status=status, code=code, should_retry=True))
    assert decision.action == "replay"


@pytest.mark.parametrize(("retry_after", "floor"), [(30.0, 30.0), (0.5, 0.0), (None, 0.0)])
def test_a_replay_waits_at_least_what_the_server_asked(
    retry_after: float | None, floor: float
) -> None:
    """The largest server wait (already merged by answers) is a floor under the backoff."""
    decision = run(Outcome(kind="error", status=503, retry_after=retry_after))
    assert decision.action == "replay"
    assert decision.delay >= floor
    assert decision.delay <= max(floor, jitter_ceiling(1))


@pytest.mark.parametrize("tries", [1, 3, 4, 9])
def test_idempotency_in_progress_waits_and_replays_the_same_key(tries: int) -> None:
    """409 idempotency_in_progress: wait what is asked, then the same key, never a new one."""
    outcome = error("idempotency_in_progress", 409, retry_after=12.0)
    decision = run(outcome, Attempt(tries=tries))
    assert decision.action == "replay"
    if tries < 4:
        assert decision.delay >= 12.0


def test_transient_backoff_is_jittered_across_the_whole_range() -> None:
    """The retry delay is random over [0, ceiling], not a fixed or clustered value."""
    rng = random.Random(1)
    delays = [decide(error(None, 502), Attempt(tries=3), SETTINGS, rng).delay for _ in range(200)]
    ceiling = jitter_ceiling(3)
    assert len(set(delays)) > 150
    assert min(delays) < ceiling * 0.1
    assert max(delays) > ceiling * 0.9
    assert all(0.0 <= delay <= ceiling for delay in delays)


# -- no answer after sending: replay, never lose the write -------------------------------


@pytest.mark.parametrize("tries", [1, 2, 3])
def test_no_answer_replays_with_the_same_key(tries: int) -> None:
    """A request that was sent but got no answer is replayed under its Idempotency-Key."""
    decision = run(Outcome(kind="no_answer", message="read timeout"), Attempt(tries=tries))
    assert (decision.action, decision.scope) == ("replay", "attempt")
    assert decision.counts_as_try
    assert 0.0 <= decision.delay <= jitter_ceiling(tries)


@pytest.mark.parametrize("tries", [4, 5])
def test_no_answer_on_the_last_try_is_not_given_up_as_a_failure(tries: int) -> None:
    """A write that may have happened is never dropped: out of tries it stays replay/uncertain.

    ``give_up`` makes the rotation clear the pending write (only ``replay`` keeps it), so
    the next rotation could no longer ask the server what became of it.
    """
    decision = run(Outcome(kind="no_answer", message="read timeout"), Attempt(tries=tries))
    assert decision.action in {"replay", "uncertain"}


# -- image scope -------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(IMAGE_CODES))
@pytest.mark.parametrize("url_mode", [False, True])
def test_refused_image_moves_to_the_next_image(code: str, url_mode: bool) -> None:
    """An image the server refuses is skipped for the next one, and that counts as a try."""
    decision = run(
        error(code, 422 if code != "invalid_input" else 400), Attempt(tries=1, url_mode=url_mode)
    )
    assert (decision.action, decision.scope) == ("next_image", "image")
    assert decision.counts_as_try


def test_media_download_failed_in_url_mode_sends_the_file() -> None:
    """media_download_failed on a URL write sends the same image as a file."""
    decision = run(error("media_download_failed", 422), Attempt(tries=1, url_mode=True))
    assert (decision.action, decision.scope) == ("as_file", "image")


def test_media_download_failed_on_a_file_upload_does_not_loop() -> None:
    """media_download_failed on a file upload cannot be fixed by sending the file again."""
    decision = run(error("media_download_failed", 422), Attempt(tries=1, url_mode=False))
    assert decision.action == "give_up"


@pytest.mark.parametrize("status", [422, 409, 200])
def test_duplicate_action_counts_as_done(status: int) -> None:
    """x_duplicate_action means the avatar is already that image: done."""
    assert run(error("x_duplicate_action", status)).action == "done"


def test_success_is_done() -> None:
    """A successful write is done."""
    assert run(Outcome(kind="success", status=200)).action == "done"


# -- account scope -----------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(ACCOUNT_CODES))
@pytest.mark.parametrize("level", LEVELS)
def test_account_problems_pause_the_account_with_doubling(code: str, level: int) -> None:
    """Account trouble pauses that account: pause.account doubled per level, up to pause.max."""
    decision = run(error(code, 403), Attempt(tries=1, pause_level=level))
    assert (decision.action, decision.scope, decision.pause) == ("pause", "account", "account")
    assert decision.delay == min(43200.0, 3600.0 * 2**level)


# -- key scope ---------------------------------------------------------------------------


BILLING = [
    *(pytest.param(code, 402, id=code) for code in sorted(BILLING_CODES)),
    pytest.param(None, 402, id="bare-402"),
]


@pytest.mark.parametrize(("code", "status"), BILLING)
@pytest.mark.parametrize("level", [0, 3])
def test_billing_problems_pause_the_key(code: str | None, status: int, level: int) -> None:
    """Billing trouble pauses the whole key for pause.credits."""
    decision = run(error(code, status), Attempt(tries=1, pause_level=level))
    assert (decision.action, decision.scope, decision.pause) == ("pause", "key", "credits")
    assert decision.delay == 900.0


@pytest.mark.parametrize("code", ["unauthenticated", None])
@pytest.mark.parametrize("level", LEVELS)
def test_unauthenticated_pauses_the_key_with_doubling(code: str | None, level: int) -> None:
    """A refused key pauses every write: pause.auth doubled per level, up to pause.max."""
    decision = run(error(code, 401), Attempt(tries=1, pause_level=level))
    assert (decision.action, decision.scope, decision.pause) == ("pause", "key", "auth")
    assert decision.delay == min(43200.0, 900.0 * 2**level)


# -- attempt scope: keys and uncertainty -------------------------------------------------


@pytest.mark.parametrize("tries", [1, 2, 3])
def test_idempotency_conflict_takes_a_new_key(tries: int) -> None:
    """idempotency_conflict resends the same image under a new key, now."""
    decision = run(error("idempotency_conflict", 409), Attempt(tries=tries))
    assert (decision.action, decision.scope) == ("new_key", "attempt")
    assert decision.counts_as_try
    assert decision.delay == 0.0


def test_idempotency_conflict_gives_up_when_out_of_tries() -> None:
    """idempotency_conflict does not loop for ever."""
    assert run(error("idempotency_conflict", 409), Attempt(tries=4)).action == "give_up"


UNCERTAIN = [
    pytest.param(error("x_write_ambiguous", 500), id="x_write_ambiguous"),
    pytest.param(error("x_write_unconfirmed", 202), id="x_write_unconfirmed"),
    pytest.param(Outcome(kind="uncertain", status=202), id="kind-uncertain"),
]


@pytest.mark.parametrize("outcome", UNCERTAIN)
@pytest.mark.parametrize("tries", [1, 4, 9])
def test_uncertain_writes_are_never_resent_blindly(outcome: Outcome, tries: int) -> None:
    """A write that may have happened is reported uncertain, whatever the try count."""
    decision = run(outcome, Attempt(tries=tries))
    assert (decision.action, decision.scope) == ("uncertain", "attempt")


# -- durable writes: a terminal failed action --------------------------------------------


def durable(code: str, status: int, action: WriteAction) -> Outcome:
    """Return an answer carrying a terminal failed write action."""
    return Outcome(kind="error", status=status, code=code, write_action=action)


@pytest.mark.parametrize("code", ["x_transient_error", "x_write_failed", "internal_error", None])
@pytest.mark.parametrize("status", ["failed", "expired"])
def test_failed_write_safe_to_retry_is_retried_under_a_new_key(
    code: str | None, status: str
) -> None:
    """failed/expired + safeToRetry (retryable not false) retries now, under a new key."""
    action = dataclasses.replace(failed_action(safe=True, retryable=True, code=code), status=status)
    decision = run(durable(code or "", 200, action), Attempt(tries=1))
    assert (decision.action, decision.scope) == ("retry", "attempt")
    assert 0.0 <= decision.delay <= jitter_ceiling(1)


@pytest.mark.parametrize(
    "code", ["x_transient_error", "write_tracking_unavailable", None, "x_rate_limited"]
)
@pytest.mark.parametrize("retryable", [True, False, None])
def test_failed_write_not_safe_to_retry_is_uncertain(
    code: str | None, retryable: bool | None
) -> None:
    """failed/expired without safeToRetry: X may have it; uncertain, never a new key."""
    action = dataclasses.replace(failed_action(safe=False, code=code), retryable=retryable)
    decision = run(durable(code or "", 503, action), Attempt(tries=1))
    assert (decision.action, decision.scope) == ("uncertain", "attempt")


@pytest.mark.parametrize(
    ("code", "scope", "kind"),
    [
        ("x_rate_limited", "account", "x_rate_limited"),
        ("account_needs_reauth", "account", "account"),
        ("rate_limit_exceeded", "key", "rate_limit"),
        ("insufficient_credits", "key", "credits"),
    ],
)
def test_failed_write_not_safe_to_retry_with_a_pausing_code_is_uncertain_and_pauses(
    code: str, scope: str, kind: str
) -> None:
    """A pausing code on an unsafe failed record pauses AND leaves the write uncertain."""
    decision = run(durable(code, 200, failed_action(safe=False, code=code)), Attempt(tries=1))
    assert decision.action == "uncertain"
    assert (decision.pause_scope, decision.pause) == (scope, kind)


@pytest.mark.parametrize("code", ["x_image_invalid", "x_media_rejected", "x_rejected"])
def test_failed_write_not_safe_with_an_image_code_is_uncertain_and_refuses_the_image(
    code: str,
) -> None:
    """An unsafe failed record about the image: uncertain, and the image is refused."""
    decision = run(durable(code, 200, failed_action(safe=False, code=code)), Attempt(tries=1))
    assert decision.action == "uncertain"
    assert decision.refuse_image


@pytest.mark.parametrize(
    ("retryable", "next_action"), [(False, None), (None, "fix_request"), (True, "fix_request")]
)
def test_failed_write_that_cannot_succeed_is_not_resent(
    retryable: bool | None, next_action: str | None
) -> None:
    """retryable false or nextAction fix_request: the same input is never resent."""
    action = dataclasses.replace(
        failed_action(safe=True, code="x_write_failed"),
        retryable=retryable,
        next_action=next_action,
    )
    decision = run(durable("x_write_failed", 200, action), Attempt(tries=1))
    assert (decision.action, decision.scope) == ("give_up", "rotation")
    assert decision.move_on  # the position moves past that input


@pytest.mark.parametrize("code", ["x_image_invalid", "media_too_large", "unsupported_media_type"])
def test_failed_safe_write_about_the_image_refuses_it(code: str) -> None:
    """A safe failed record with an image code (retryable false) refuses the image."""
    action = failed_action(safe=True, retryable=False, code=code)
    decision = run(durable(code, 200, action), Attempt(tries=1))
    assert (decision.action, decision.scope) == ("next_image", "image")
    assert decision.refuse_image


@pytest.mark.parametrize("code", ["x_transient_error", "idempotency_conflict"])
def test_failed_write_requiring_a_new_key_retries_under_a_new_key(code: str) -> None:
    """nextAction.requiresNewIdempotencyKey on a safe record: a retry under a new key."""
    action = failed_action(safe=True, retryable=True, new_key=True, code=code)
    decision = run(durable(code, 200, action), Attempt(tries=1))
    assert decision.action in {"retry", "new_key"}


@pytest.mark.parametrize(
    ("code", "scope", "kind"),
    [
        ("account_needs_reauth", "account", "account"),
        ("rate_limit_exceeded", "key", "rate_limit"),
        ("insufficient_credits", "key", "credits"),
    ],
)
def test_failed_safe_write_with_a_pausing_code_pauses_then_takes_a_new_key(
    code: str, scope: str, kind: str
) -> None:
    """A safe failed record with a pausing code pauses; afterwards a new key is allowed."""
    action = failed_action(safe=True, retryable=True, code=code)
    decision = run(durable(code, 200, action), Attempt(tries=1))
    assert (decision.action, decision.scope, decision.pause) == ("pause", scope, kind)
    assert decision.new_key


def test_plain_pause_answers_keep_the_same_key() -> None:
    """A pausing answer without a record does not prove X lacks the write: same key after."""
    decision = run(error("x_rate_limited", 429, retry_after=5.0))
    assert decision.action == "pause"
    assert not decision.new_key


def test_unresolved_write_is_resumed_later() -> None:
    """A write still running when polling stops is kept for the next rotation to resume."""
    action = WriteAction(id="xwa_1", status="pending_confirmation", terminal=False)
    decision = run(Outcome(kind="unresolved", write_action=action))
    assert (decision.action, decision.scope) == ("resume_later", "rotation")


# -- everything else ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("bad_request", 400),
        (None, 400),
        (None, 403),
        ("not_found", 404),
        (None, 405),
        ("gone", 410),
        ("x_some_new_refusal", 422),
        (None, 418),
        ("invalid_params", 400),
        ("missing_idempotency_key", 400),
    ],
)
def test_other_client_errors_give_the_rotation_up(code: str | None, status: int) -> None:
    """Any other 4xx (known request bugs and unknown codes) ends the rotation, no resend."""
    decision = run(error(code, status), Attempt(tries=1))
    assert (decision.action, decision.scope) == ("give_up", "rotation")
    assert decision.delay == 0.0


# -- properties --------------------------------------------------------------------------


write_actions = st.builds(
    WriteAction,
    id=st.text(max_size=8),
    status=st.sampled_from(
        ["accepted", "dispatching", "pending_confirmation", "success", "failed", "expired"]
    ),
    terminal=st.booleans(),
    safe_to_retry=st.booleans(),
    retryable=st.booleans(),
    requires_new_key=st.booleans(),
    error_code=st.none() | st.sampled_from(KNOWN_CODES),
)
KNOWN_STATUSES = [200, 202, 400, 401, 402, 403, 404, 409, 422, 429, 500, 502, 503]
outcomes = st.builds(
    Outcome,
    kind=st.sampled_from(KINDS),
    status=st.none() | st.sampled_from(KNOWN_STATUSES) | st.integers(100, 599),
    code=st.none() | st.sampled_from(KNOWN_CODES) | st.text(max_size=20),
    message=st.text(max_size=20),
    retry_after=st.none() | st.floats(0.0, 86400.0),
    write_action=st.none() | write_actions,
)
settings_strategy = st.builds(
    PolicySettings,
    retry_initial=st.floats(0.001, 1e6),
    retry_max=st.floats(0.001, 1e7),
    attempts=st.integers(1, 20),
    pause_credits=st.floats(0.0, 1e7),
    pause_account=st.floats(0.0, 1e7),
    pause_auth=st.floats(0.0, 1e7),
    pause_max=st.floats(0.0, 1e7),
)
attempts_strategy = st.builds(
    Attempt, tries=st.integers(1, 100), pause_level=st.integers(0, 10_000), url_mode=st.booleans()
)


@given(outcomes, attempts_strategy, settings_strategy, st.integers(0, 2**32))
def test_every_outcome_gets_a_decision(
    outcome: Outcome, attempt: Attempt, settings: PolicySettings, seed: int
) -> None:
    """Any answer, known or not, gets a well-formed decision with a finite delay >= 0."""
    decision = decide(outcome, attempt, settings, random.Random(seed))
    assert decision.action in ACTIONS
    assert decision.scope in SCOPES
    assert math.isfinite(decision.delay)
    assert decision.delay >= 0.0
    assert decision.action != "pause" or decision.pause is not None
    assert decision.reason


@pytest.mark.parametrize("code", KNOWN_CODES)
@pytest.mark.parametrize("status", [None, 200, 400, 422, 429, 500])
def test_every_known_code_maps_to_a_decision(code: str, status: int | None) -> None:
    """Every documented error code is decided without raising, naming the code as reason."""
    decision = run(error(code, status))
    assert decision.action in ACTIONS
    assert decision.reason == code


@given(
    tries=st.integers(1, 200),
    initial=st.floats(0.001, 1e4),
    cap=st.floats(0.001, 1e5),
    seed=st.integers(0, 2**32),
)
def test_full_jitter_stays_within_the_capped_exponential(
    tries: int, initial: float, cap: float, seed: int
) -> None:
    """Retry delays lie in [0, min(max, initial * 2^(tries-1))] for any settings."""
    settings = PolicySettings(retry_initial=initial, retry_max=cap, attempts=1000)
    rng = random.Random(seed)
    ceiling = min(cap, initial * 2.0 ** min(tries - 1, 1000))
    decision = decide(error("x_transient_error", 503), Attempt(tries=tries), settings, rng)
    assert decision.action == "replay"
    assert 0.0 <= decision.delay <= ceiling
    assert 0.0 <= backoff(settings, tries - 1, random.Random(seed)) <= ceiling
