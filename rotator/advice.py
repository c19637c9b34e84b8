"""Pure: what a person should do about a pause, in one line (``status``, ``health``, logs).

A pause that ends by itself says so; one that needs a person names the step and the
command that follows it, so nobody has to look up what ``account_needs_reauth`` means.
"""

from __future__ import annotations

from rotator.policy import CODE_FAMILY

# Pause kinds (rotator.policy.PauseKind) that only time ends; the others need a person.
SELF_ENDING_KINDS = frozenset({"rate_limit", "x_rate_limited", "daily"})
# Of those, the ones that last minutes, not a day.
SHORT_KINDS = frozenset({"rate_limit", "x_rate_limited"})
# A pause someone asked for (`rotator pause`) is intended, never a fault.
INTENDED_KINDS = frozenset({"manual"})


def next_step(kind: str, account: str | None) -> str:
    """Return what to do about a pause of ``kind`` (of ``account``, or of the whole key)."""
    who = f"@{account}" if account else "the account"
    resume = f"rotator resume --account {account}" if account else "rotator resume"
    if kind == "credits":
        return (
            "top up credits or renew the plan in the Xquik dashboard; rotator reads the free "
            "balance and resumes by itself"
        )
    if kind == "auth":
        return (
            "the API key was refused: put a valid key where rotator reads it (check with "
            f"rotator check --online), then run: {resume}"
        )
    if kind == "account":
        return (
            f"reconnect or unlock {who} in the Xquik dashboard (check with rotator check "
            f"--online), then run: {resume}"
        )
    if kind == "daily":
        return f"X's daily limit for {who}: nothing to do, it resumes by itself"
    if kind == "x_rate_limited":
        return f"X is throttling {who}: nothing to do, it resumes by itself"
    if kind == "manual":
        return f"paused by hand; to go on, run: {resume}"
    if kind == "rate_limit":
        return "Xquik's rate limit: nothing to do, it resumes by itself"
    return f"see the log; {resume} ends the pause by hand"


def next_step_for_error(code: str, account: str) -> str | None:
    """Return what to do about the last error of an entry, if a person can do anything."""
    family = CODE_FAMILY.get(code)
    if family == "account":
        return next_step("account", account)
    if family == "billing":
        return next_step("credits", None)
    if family == "key":
        return next_step("auth", None)
    if family == "image":
        return "the server refused that image: fix or replace the file (it is not sent again as is)"
    if family == "uncertain":
        return (
            f"look at @{account}'s avatar on X: the write may have happened, so rotator does "
            "not send that image again blindly"
        )
    return None
